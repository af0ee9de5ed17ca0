"""How long the test suite takes: the same tests run one at a time (`-n 0`, the baseline) and in two processes
side by side (`-n 2 --dist worksteal`, what `make test` runs), in one run of this script.

Each run is `python -m pytest <paths> -q -p no:cacheprovider --durations=10` in a subprocess with this
environment (set CI=true to make missing services fail, as CI does). Printed per run: wall time, the outcome
line, the load average at its end, and the slowest tests; then the speed-up. A whole-suite run takes most of an
hour on two cores, so the default is a sample of the suite's kinds of test (API, worker, browser, database);
pass `--paths tests` for the whole of it.

Run from the repository root:

    .venv/bin/python -m bench.test_suite                          # the default sample, both ways
    .venv/bin/python -m bench.test_suite --paths tests/jobs       # another selection
    .venv/bin/python -m bench.test_suite --only parallel          # one way only (or: serial)

Results are recorded in docs/benchmarks.md, "Test suite (bench/test_suite.py)".
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

SAMPLE = ["tests/jobs/test_worker_jobs.py", "tests/jobs/test_sse.py", "tests/accounts", "tests/datasets",
          "tests/configure/test_browser.py"]
WAYS = {"serial": ["-n", "0"], "parallel": ["-n", "2", "--dist", "worksteal"]}


def run_pytest(paths: list[str], way: list[str]) -> dict:
    """One pytest run in a subprocess: its wall time, outcome line and slowest tests."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pytest", *paths, *way, "-q", "-p", "no:cacheprovider",
                             "--durations=10"], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    lines = result.stdout.splitlines()
    outcome = next((line.strip("= ") for line in reversed(lines) if re.search(r"\d+ (passed|failed)", line)), "")
    slowest = [line for line in lines if re.match(r"^\d+\.\d+s (call|setup|teardown)", line)]
    return {"seconds": seconds, "outcome": outcome, "returncode": result.returncode, "slowest": slowest,
            "load": os.getloadavg()}


def main() -> int:
    """Run the selection each way and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", nargs="+", default=SAMPLE)
    parser.add_argument("--only", choices=sorted(WAYS))
    args = parser.parse_args()
    print(f"paths: {' '.join(args.paths)}\ncores: {os.cpu_count()}, CI={os.environ.get('CI', '')}")
    figures = {}
    for name, way in WAYS.items():
        if args.only and name != args.only:
            continue
        print(f"\n{name} ({' '.join(way)}) ...", flush=True)
        figures[name] = run = run_pytest(args.paths, way)
        print(f"  {run['seconds']:.0f} s wall, {run['outcome']} (exit {run['returncode']}), "
              f"load average at the end {run['load'][0]:.1f}")
        for line in run["slowest"][:5]:
            print(f"    {line}")
    if len(figures) == 2:
        speedup = figures["serial"]["seconds"] / figures["parallel"]["seconds"]
        print(f"\nparallel vs serial: {speedup:.2f}x faster")
    return 0 if all(run["returncode"] == 0 for run in figures.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
