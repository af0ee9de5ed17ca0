"""Estimate latency: the torch-free estimator against building the model and asking PEFT.

For every catalog model, with a realistic LoRA config (r=16, lora_alpha=16, dropout 0, the model's
"attention-mlp" preset: every attention and MLP projection, e.g. the 7 Llama projections or GPT-2's
c_attn / attn.c_proj / c_fc / mlp.c_proj), one run measures:

1. server side: `get_inventory()` (warm cache) + `estimate()` in this process, p50 / p99 over
   300 calls, with the number and length of full (generation 2) garbage collections that fell
   inside the timed calls. The request object is built once outside the timer; parsing it and
   serialising the response are part of the HTTP figure instead. Measured before torch is
   imported here, as in the web app, which never imports it.
2. HTTP: the real app under uvicorn in a subprocess (free port, TUNEBOARD_DATA_DIR = a temp dir,
   log level warning as `tuneboard up` runs it), `POST /v1/fine_tuning/estimate` through one
   keep-alive httpx client, p50 / p99 over 200 requests. Client time: includes authentication
   (when the API wants sign-in, an admin and an API token are created in the temporary database
   and every request carries the token), request validation, response-model validation, JSON and
   the loopback round trip.
3. the PEFT route: the committed config loaded and the model built on the meta device (as
   `workers.inventory` does), `peft.get_peft_model(model, LoraConfig(...))` and
   `get_nb_trainable_parameters()`, p50 (and min) over 5 repeats (3 for models above 20B
   parameters). Its trainable / all counts must equal the estimator's (and the HTTP response's):
   a mismatch is printed loudly and the run exits with status 1.

It then prints one table (server p50/p99, HTTP p50/p99, PEFT p50 and min, speed-up = PEFT p50 /
server p50) and PASS / MISS for the targets: server-side p99 < 5 ms for every model, 70B
included, and a speed-up of at least 100x for every model. A MISS is reported, not an error
(timings on a shared machine are noisy); the exit status is 0 unless counts disagree or a
request fails.

Run from the repository root (needs the worker extra: torch, transformers, peft):

    .venv/bin/python -m bench.estimate                  # full run, about 1.5 minutes on 2 CPU cores
    .venv/bin/python -m bench.estimate --quick          # fewer iterations, for a smoke test
    .venv/bin/python -m bench.estimate --json out.json  # also write every figure as JSON
    .venv/bin/python -m bench.estimate --model gpt2 --model 70B   # only ids containing these

Results are recorded in docs/benchmarks.md, "Estimate latency (bench/estimate.py)".
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

RANK = 16
SERVER_P99_TARGET_MS = 5.0
SPEEDUP_TARGET = 100.0
LARGE_MODEL_PARAMS = 20_000_000_000  # above this the PEFT route gets fewer repeats
ESTIMATE_PATH = "/v1/fine_tuning/estimate"


@dataclass
class Case:
    """One catalog model and the LoRA config it is benchmarked with."""

    model_id: str
    targets: list[str]
    base_params: int
    payload: dict[str, Any]
    request: Any = None  # EstimateRequest
    trainable: int = 0  # the estimator's counts
    all: int = 0
    server_ms: list[float] = field(default_factory=list)
    server_full_gcs: list[float] = field(default_factory=list)  # gen-2 GC pauses during the timed calls, ms
    http_ms: list[float] = field(default_factory=list)
    http_counts: tuple[int, int] | None = None
    peft_ms: list[float] = field(default_factory=list)
    peft_parts_ms: dict[str, list[float]] = field(default_factory=lambda: {"build": [], "wrap": [], "count": []})
    peft_counts: tuple[int, int] | None = None

    @property
    def short(self) -> str:
        return self.model_id.split("/")[-1]

    @property
    def speedup(self) -> float:
        return percentile(self.peft_ms, 50) / percentile(self.server_ms, 50)

    @property
    def counts_match(self) -> bool:
        return self.peft_counts == (self.trainable, self.all) and self.http_counts in (None, self.peft_counts)


def percentile(samples: list[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest sample with at least pct% of the samples at or below it."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def _ms(start_ns: int) -> float:
    return (time.perf_counter_ns() - start_ns) / 1e6


def _progress(phase: str, index: int, total: int, case: Case, text: str) -> None:
    print(f"[{phase} {index:>2}/{total}] {case.model_id:<38} {text}", flush=True)


# --- cases ----------------------------------------------------------------------------------------


def build_cases(filters: list[str]) -> list[Case]:
    """Every catalog model (or those whose id contains one of `filters`) with its attention+MLP config."""
    from app.base_models.inventories import get_inventory
    from app.estimator import catalog
    from app.estimator.block_diagram import block_diagram
    from app.estimator.estimate import EstimateRequest, estimate
    from app.estimator.presets import presets_for
    from app.settings import get_settings

    settings = get_settings()
    cases = []
    for entry in catalog.entries():
        if filters and not any(f.lower() in entry.id.lower() for f in filters):
            continue
        inventory = get_inventory(entry.id, settings)
        preset = next(p for p in presets_for(block_diagram(inventory)) if p.key == "attention-mlp")
        lora = {"r": RANK, "lora_alpha": RANK, "lora_dropout": 0.0, "target_modules": list(preset.targets)}
        payload = {"model": entry.id, "lora": lora}
        request = EstimateRequest.model_validate(payload)
        result = estimate(inventory, request)
        cases.append(Case(entry.id, list(preset.targets), inventory.base_params, payload, request,
                          result.trainable_params, result.all_params))
    if not cases:
        raise SystemExit(f"no catalog model id contains any of {filters}")
    return cases


# --- 1. server side -------------------------------------------------------------------------------


def measure_server(cases: list[Case], iterations: int, warmup: int) -> None:
    """Time get_inventory + estimate in this process, the way the route handler calls them."""
    from app.base_models.inventories import get_inventory
    from app.estimator.estimate import estimate
    from app.settings import get_settings

    settings = get_settings()
    full_collections: list[float] = []  # pause of each gen-2 (full) garbage collection, ms
    collection_start = [0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collection_start[0] = time.perf_counter_ns()
        elif info["generation"] == 2:
            full_collections.append(_ms(collection_start[0]))

    gc.callbacks.append(on_gc)
    try:
        for index, case in enumerate(cases, 1):
            request = case.request
            for _ in range(warmup):
                estimate(get_inventory(case.model_id, settings), request)
            full_collections.clear()
            samples = []
            for _ in range(iterations):
                start = time.perf_counter_ns()
                estimate(get_inventory(case.model_id, settings), request)
                samples.append(_ms(start))
            case.server_ms = samples
            case.server_full_gcs = list(full_collections)
            gcs = f"{len(full_collections)} full GCs" + (
                f", longest {max(full_collections):.1f} ms" if full_collections else "")
            _progress("server", index, len(cases), case,
                      f"p50 {percentile(samples, 50):7.3f} ms  p99 {percentile(samples, 99):7.3f} ms  "
                      f"(n={iterations}; {gcs})")
    finally:
        gc.callbacks.remove(on_gc)


# --- 2. HTTP --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """The real app under uvicorn in a subprocess on a free port."""

    def __init__(self, data_dir: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / "uvicorn.log"
        self.env = {**os.environ, "TUNEBOARD_DATA_DIR": str(data_dir)}
        self.process: subprocess.Popen | None = None

    def start(self) -> Server:
        """Start uvicorn as `tuneboard up` does and wait for /healthz; RuntimeError with its log if it fails."""
        import httpx

        with self.log_path.open("w") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(self.port),
                 "--log-level", "warning"],
                cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1, trust_env=False).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"uvicorn did not answer /healthz within 60 s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        """Terminate the server (kill it if it does not exit within 10 s)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def measure_http(cases: list[Case], iterations: int, warmup: int, data_dir: Path) -> tuple[list[str], bool]:
    """Time POST /v1/fine_tuning/estimate against a real uvicorn; returns failures and whether a token was sent."""
    import httpx

    failures: list[str] = []
    server = Server(data_dir)
    try:
        server.start()
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1]
        print(f"[http] could not start the app, skipping HTTP: {reason}", flush=True)
        return [f"the app did not start under uvicorn: {reason}"], False
    try:
        with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as client:  # keep-alive
            try:
                authorised = _authorise(client, cases[0])
                if authorised:
                    print("[http] the API wants sign-in: every request carries a bearer token minted in the "
                          "temporary database", flush=True)
            except Exception as exc:  # report it and keep the other measurements
                reason = f"the API wants sign-in and no token could be minted: {exc!r}"
                print(f"[http] {reason}; skipping HTTP", flush=True)
                return [reason], False
            for index, case in enumerate(cases, 1):
                failure = _measure_one_http(client, case, iterations, warmup)
                if failure:
                    failures.append(f"{case.model_id}: {failure}")
                    _progress("http", index, len(cases), case, f"FAILED: {failure}")
                else:
                    _progress("http", index, len(cases), case,
                              f"p50 {percentile(case.http_ms, 50):7.3f} ms  "
                              f"p99 {percentile(case.http_ms, 99):7.3f} ms  (n={iterations})")
    finally:
        server.stop()
    return failures, authorised


def _authorise(client: Any, case: Case) -> bool:
    """If the API answers 401, create an admin and an API token in the server's (temporary) database."""
    if client.post(ESTIMATE_PATH, json=case.payload).status_code != 401:
        return False
    from app.accounts import users
    from app.db import new_session

    with new_session() as session:
        created = users.ensure_first_admin(session, "bench@localhost")
        if created is None:
            raise RuntimeError("the temporary database already has users")
        _, token = users.create_api_token(session, *created, "bench/estimate.py")
    client.headers["Authorization"] = f"Bearer {token}"
    return True


def _measure_one_http(client: Any, case: Case, iterations: int, warmup: int) -> str | None:
    """Fill case.http_ms and case.http_counts; the failure, if a request did not answer 200."""
    samples = []
    for i in range(warmup + iterations):
        start = time.perf_counter_ns()
        response = client.post(ESTIMATE_PATH, json=case.payload)
        elapsed = _ms(start)
        if response.status_code != 200:
            return f"HTTP {response.status_code}: {response.text[:300]}"
        if i >= warmup:
            samples.append(elapsed)
    body = response.json()
    case.http_counts = (body["trainable_params"], body["all_params"])
    case.http_ms = samples
    return None


# --- 3. the PEFT route ----------------------------------------------------------------------------


def _peft_route(case: Case) -> tuple[tuple[int, int], dict[str, float]]:
    from peft import LoraConfig, get_peft_model

    from workers.inventory import _build_on_meta, _load_catalog_config

    start = time.perf_counter_ns()
    model = _build_on_meta(_load_catalog_config(case.model_id))
    built = time.perf_counter_ns()
    config = LoraConfig(**{**case.request.lora.model_dump(), "task_type": "CAUSAL_LM"})
    peft_model = get_peft_model(model, config)
    wrapped = time.perf_counter_ns()
    counts = peft_model.get_nb_trainable_parameters()
    done = time.perf_counter_ns()
    parts = {"build": (built - start) / 1e6, "wrap": (wrapped - built) / 1e6, "count": (done - wrapped) / 1e6}
    return (int(counts[0]), int(counts[1])), parts


def measure_peft(cases: list[Case], repeats: int, large_repeats: int) -> None:
    """Time config -> meta model -> get_peft_model -> get_nb_trainable_parameters for each model."""
    start = time.perf_counter_ns()
    import peft  # noqa: F401  (imported up front so no repeat pays for it)
    import torch  # noqa: F401
    import transformers
    from transformers import AutoModelForCausalLM

    from workers.inventory import _load_catalog_config

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")  # e.g. GPT-2's fan_in_fan_out notice
    # Import each architecture's modeling module and warm PEFT's lazy paths outside the timed repeats.
    for case in cases:
        AutoModelForCausalLM._model_mapping[type(_load_catalog_config(case.model_id))]
    smallest = min(cases, key=lambda c: c.base_params)
    _peft_route(smallest)
    gc.collect()
    print(f"[peft] torch/transformers/peft imported and warmed up in {_ms(start) / 1000:.1f} s", flush=True)

    for index, case in enumerate(cases, 1):
        n = large_repeats if case.base_params > LARGE_MODEL_PARAMS else repeats
        for _ in range(n):
            counts, parts = _peft_route(case)
            case.peft_ms.append(sum(parts.values()))
            for key, value in parts.items():
                case.peft_parts_ms[key].append(value)
            case.peft_counts = counts
            gc.collect()  # drop the meta model before the next repeat, outside the timer
        mark = "counts match" if case.counts_match else (
            f"COUNT MISMATCH: PEFT {counts[0]:,} / {counts[1]:,} vs estimator {case.trainable:,} / {case.all:,}"
            + (f" vs HTTP {case.http_counts[0]:,} / {case.http_counts[1]:,}" if case.http_counts else "")
        )
        _progress("peft", index, len(cases), case,
                  f"p50 {percentile(case.peft_ms, 50):9.1f} ms  (n={n})  trainable {counts[0]:,}  {mark}")


# --- report ---------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(cases: list[Case]) -> str:
    """The result table as GitHub Markdown (readable in a terminal too)."""
    header = ("| model | targets | trainable | server p50 ms | server p99 ms | HTTP p50 ms | HTTP p99 ms "
              "| PEFT p50 ms | PEFT min ms | speed-up |")
    lines = [header, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for case in cases:
        http = case.http_ms or None
        lines.append(
            f"| {case.short} | {len(case.targets)} | {case.trainable:,} "
            f"| {_fmt(percentile(case.server_ms, 50))} | {_fmt(percentile(case.server_ms, 99))} "
            f"| {_fmt(http and percentile(http, 50))} | {_fmt(http and percentile(http, 99))} "
            f"| {_fmt(percentile(case.peft_ms, 50), 0)} | {_fmt(min(case.peft_ms), 0)} | {case.speedup:,.0f}x |"
        )
    return "\n".join(lines)


def targets(cases: list[Case]) -> list[dict[str, Any]]:
    """Each target with PASS / MISS and the models that miss it."""
    slow = [c for c in cases if percentile(c.server_ms, 99) >= SERVER_P99_TARGET_MS]
    low = [c for c in cases if c.speedup < SPEEDUP_TARGET]
    worst_p99 = max(cases, key=lambda c: percentile(c.server_ms, 99))
    least = min(cases, key=lambda c: c.speedup)
    return [
        {"target": f"server-side p99 < {SERVER_P99_TARGET_MS:g} ms for every model", "pass": not slow,
         "misses": [c.model_id for c in slow],
         "worst": f"{worst_p99.short} {percentile(worst_p99.server_ms, 99):.2f} ms"},
        {"target": f"speed-up (PEFT p50 / server p50) >= {SPEEDUP_TARGET:g}x for every model", "pass": not low,
         "misses": [c.model_id for c in low], "worst": f"{least.short} {least.speedup:,.0f}x"},
    ]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import fastapi
    import peft
    import pydantic
    import torch
    import transformers
    import uvicorn

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "peft": peft.__version__, "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__,
        "pydantic": pydantic.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the three measurements, print the table and targets, optionally write JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.estimate", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke test, not a result)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every figure and sample to this file")
    parser.add_argument("--model", action="append", default=[], metavar="SUBSTR",
                        help="only catalog ids containing SUBSTR (repeatable)")
    parser.add_argument("--server-iters", type=int, help="estimate() calls per model (default 300, quick 50)")
    parser.add_argument("--http-iters", type=int, help="HTTP requests per model (default 200, quick 30)")
    parser.add_argument("--peft-repeats", type=int, help="PEFT builds per model (default 5, quick 1)")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP measurement")
    args = parser.parse_args(argv)
    server_iters = args.server_iters or (50 if args.quick else 300)
    http_iters = args.http_iters or (30 if args.quick else 200)
    peft_repeats = args.peft_repeats or (1 if args.quick else 5)
    large_repeats = min(peft_repeats, 3)

    started = datetime.datetime.now(datetime.UTC)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tuneboard-bench-") as tmp:
        data_dir = Path(tmp)
        os.environ["TUNEBOARD_DATA_DIR"] = str(data_dir)  # before get_settings() is first called
        cases = build_cases(args.model)
        print(f"Estimate latency: {len(cases)} models, r={RANK}, attention+MLP targets; server x{server_iters}, "
              f"HTTP x{0 if args.no_http else http_iters}, PEFT x{peft_repeats} (x{large_repeats} above 20B); "
              f"load average {load_before[0]:.2f}", flush=True)
        torch_before_server = "torch" in sys.modules
        measure_server(cases, server_iters, warmup=max(5, server_iters // 10))
        load_phases = {"before": load_before[0], "after_server": os.getloadavg()[0]}
        failures, authorised = ([], False) if args.no_http else measure_http(
            cases, http_iters, max(5, http_iters // 10), data_dir)
        load_phases["after_http"] = os.getloadavg()[0]
        measure_peft(cases, peft_repeats, large_repeats)
    load_after = os.getloadavg()
    load_phases["after_peft"] = load_after[0]
    elapsed = (datetime.datetime.now(datetime.UTC) - started).total_seconds()

    info = machine()
    print()
    print(f"{info['cpu']}, {info['cpu_count']} CPUs, Python {info['python']}, torch {info['torch']}, "
          f"transformers {info['transformers']}, peft {info['peft']}; {elapsed:.0f} s"
          f"{' (QUICK: fewer iterations)' if args.quick else ''}")
    print("1-minute load average: " + ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in load_phases.items())
          + f" (the machine has {info['cpu_count']} CPUs; other work on it makes the figures noisy)")
    print()
    print(table(cases))
    print()
    verdicts = targets(cases)
    for verdict in verdicts:
        detail = f"worst: {verdict['worst']}"
        if verdict["misses"]:
            detail += f"; missed by {', '.join(verdict['misses'])}"
        print(f"{'PASS' if verdict['pass'] else 'MISS'}  {verdict['target']}  ({detail})")

    mismatched = [c for c in cases if not c.counts_match]
    sys.stdout.flush()
    for case in mismatched:
        print(f"\n!!! COUNT MISMATCH for {case.model_id}: estimator {case.trainable:,} / {case.all:,}, "
              f"PEFT {case.peft_counts}, HTTP {case.http_counts} (trainable / all) !!!", file=sys.stderr)
    for failure in failures:
        print(f"\n!!! HTTP FAILURE {failure} !!!", file=sys.stderr)

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "bench/estimate.py",
            "started": started.isoformat(timespec="seconds"),
            "elapsed_s": round(elapsed, 1),
            "quick": args.quick,
            "iterations": {"server": server_iters, "http": 0 if args.no_http else http_iters,
                           "peft": peft_repeats, "peft_above_20b": large_repeats},
            "machine": info,
            "load_average_1min": load_phases,
            "torch_imported_during_server_phase": torch_before_server,
            "http_bearer_token": authorised,
            "lora": {"r": RANK, "lora_alpha": RANK, "lora_dropout": 0.0, "preset": "attention-mlp"},
            "models": [
                {
                    "model": c.model_id, "target_modules": c.targets, "trainable_params": c.trainable,
                    "all_params": c.all, "peft_counts": c.peft_counts, "http_counts": c.http_counts,
                    "counts_match": c.counts_match,
                    "server_ms": {"p50": percentile(c.server_ms, 50), "p99": percentile(c.server_ms, 99),
                                  "min": min(c.server_ms), "max": max(c.server_ms), "samples": c.server_ms,
                                  "full_gc_pauses": c.server_full_gcs},
                    "http_ms": {"p50": percentile(c.http_ms, 50), "p99": percentile(c.http_ms, 99),
                                "min": min(c.http_ms), "max": max(c.http_ms), "samples": c.http_ms}
                    if c.http_ms else None,
                    "peft_ms": {"p50": percentile(c.peft_ms, 50), "min": min(c.peft_ms), "samples": c.peft_ms,
                                "parts_p50": {k: percentile(v, 50) for k, v in c.peft_parts_ms.items()}},
                    "speedup": c.speedup,
                }
                for c in cases
            ],
            "targets": verdicts,
        }, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 1 if mismatched or failures else 0


if __name__ == "__main__":
    sys.exit(main())
