"""Multi-GPU jobs: tokens per second of one job on two training processes against the same job on one, and
Tuneboard's two-process path against a bare torchrun script with the same TRL arguments.

- Tuneboard, 1 process: a queued job run by `workers.job_runner.run_job`, as bench/training.py runs it.
- Tuneboard, 2 processes: the same job with `training.gpus=2, strategy=ddp` and half the micro-batch (the same
  global batch), run by `run_job`, which starts `torchrun --nproc-per-node=2 -m workers.training.rank`; rank 0
  reports to the job, and every optimizer step all-reduces the token count and the stop vote.
- bare, 2 processes: `torchrun --nproc-per-node=2 -m bench._bare_ddp`: a plain SFTTrainer + PEFT script with the
  same config values (`bench.training.bare_arguments`, plus DDP's find_unused_parameters=False, as Tuneboard
  sets), TRL's collator, the same tokenized data.

Figure: real tokens trained / the Trainer's train_runtime (rank 0's), model load and process start-up left out on
every side. Target: Tuneboard 2-process / bare 2-process >= 0.97 (median over rounds, alternating order).

On a machine without GPUs the processes train on the CPU with the gloo backend and a stand-in `nvidia-smi` (on
PATH for this benchmark only) announces two GPUs, so the worker takes the two-process job. Two processes then
share the cores one process had (torch threads are split between them), so "2 against 1" measures the cost of
data parallelism on a CPU, not a GPU's speed-up; the Tuneboard-against-bare ratio is the figure that carries over.

    .venv/bin/python -m bench.multi_gpu                  # 3 rounds of 40 steps
    .venv/bin/python -m bench.multi_gpu --quick          # 1 round of 10 steps, a smoke test

Results are recorded in docs/benchmarks.md, "Multi-GPU jobs (bench/multi_gpu.py)".
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from bench import _harness as h

TARGET_RATIO = 0.97
# A 40-step run takes well under a minute on 2 quiet cores; ten times that is a hang.
BARE_TIMEOUT_S = 600


def _stand_in_gpus(folder: Path, count: int) -> None:
    """Put an nvidia-smi that reports `count` GPUs first on PATH (before the worker reads it)."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + "echo 'stand-in GPU, 81559'\n" * count)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    os.environ["PATH"] = f"{folder}:{os.environ['PATH']}"


def run_job(setup, steps: int, batch: int, gpus: int) -> tuple[int, float]:
    """One Tuneboard job of `steps` steps on `gpus` processes: (real tokens, train_runtime seconds)."""
    from app.db import new_session
    from app.tables import Job
    from workers.job_runner import run_job as run

    training = {"max_steps": steps, "save_steps": steps, "batch_size": batch, "gpus": gpus,
                "strategy": "ddp" if gpus > 1 else "auto"}
    config = setup.config.model_copy(update={"training": setup.config.training.model_copy(update=training)})
    job_id = h.queued_job(config, file_id=setup.file_id, account=setup.account, queue="bench-multi-gpu")
    setup.job_ids.append(job_id)
    status = run(job_id, worker=f"bench@{socket.gethostname()}")
    with new_session() as session:
        job = session.get(Job, job_id)
        if status != "succeeded":
            sys.exit(f"the Tuneboard job ended {status}: {job.error_message}")
        return job.trained_tokens, job.final_metrics["train_runtime"]


def run_bare(setup, work: Path, steps: int, batch: int, examples_path: Path) -> tuple[int, float]:
    """The bare torchrun script on 2 processes: (real tokens, train_runtime seconds)."""
    training = setup.config.training
    spec = {"model_dir": str(setup.model_dir), "examples_path": str(examples_path), "steps": steps, "batch": batch,
            "seq": training.sequence_length, "lr": training.learning_rate,
            "output_dir": str(work / f"bare-{len(setup.job_ids)}-{os.getpid()}")}
    spec_path = work / "bare.json"
    spec_path.write_text(json.dumps(spec))
    # Its own session, so that a hang (a rank stuck in a collective) is ended with every rank, not only torchrun.
    process = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                                "-m", "bench._bare_ddp", str(spec_path)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=h.REPO_ROOT, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=BARE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        sys.exit(f"the bare script did not finish within {BARE_TIMEOUT_S} s:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if process.returncode or not lines:
        sys.exit(f"the bare script failed ({process.returncode}):\n{stdout[-3000:]}\n{stderr[-3000:]}")
    figures = json.loads(lines[-1])
    return figures["tokens"], figures["train_runtime"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.multi_gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 10 steps (a smoke test, not a result)")
    parser.add_argument("--rounds", type=int, help="measured runs of each side (default 3, quick 1)")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default 40, quick 10)")
    parser.add_argument("--batch", type=int, default=8, help="global batch: each of 2 processes takes half")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every figure to this file")
    parser.add_argument("--redis-url", default=h.DEFAULT_REDIS_URL)
    args = parser.parse_args(argv)
    h.exit_cleanly_on_sigterm()
    rounds, steps = args.rounds or (1 if args.quick else 3), args.steps or (10 if args.quick else 40)
    warnings.filterwarnings("ignore")
    h.check_redis(args.redis_url)
    from bench.training import prepare

    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="tuneboard-bench-multi-gpu-") as tmp:
        work = Path(tmp)
        _stand_in_gpus(work / "smi", 2)
        h.configure(work / "data", args.redis_url)
        h.quiet_transformers()
        setup = prepare(work, argparse.Namespace(hidden=256, layers=4, steps=steps, batch=args.batch, seq=128,
                                                 method="supervised"))
        from app.db import new_session
        from app.settings import get_settings
        from app.storage import artifacts
        from app.tables import DataFile

        with new_session() as session:
            examples_path = artifacts.local_file(get_settings(), session.get(DataFile, setup.file_id).storage_key)
        sides = {"tuneboard-1": lambda: run_job(setup, steps, args.batch, 1),
                 "tuneboard-2": lambda: run_job(setup, steps, args.batch // 2, 2),
                 "bare-2": lambda: run_bare(setup, work, steps, args.batch // 2, examples_path)}
        try:
            h.progress("warm-up: a short run of each side (not counted)")
            run_job(setup, 3, args.batch, 1)
            run_job(setup, 3, args.batch // 2, 2)
            run_bare(setup, work, 3, args.batch // 2, examples_path)
            for round_ in range(1, rounds + 1):
                order = list(sides) if round_ % 2 else list(reversed(sides))
                for name in order:
                    tokens, runtime = sides[name]()
                    runs.append({"round": round_, "side": name, "tokens": tokens, "train_runtime_s": runtime,
                                 "tokens_per_s": tokens / runtime, "load_1m": os.getloadavg()[0]})
                    h.progress(f"round {round_}: {name}: {tokens:,} tokens in {runtime:.2f} s = "
                               f"{tokens / runtime:,.0f} tokens/s")
        finally:
            h.delete_job_keys(args.redis_url, setup.job_ids)

    print()
    print(h.markdown_table(["round", "side", "tokens", "train_runtime s", "tokens/s", "load 1m"],
                           [[r["round"], r["side"], f"{r['tokens']:,}", f"{r['train_runtime_s']:.2f}",
                             f"{r['tokens_per_s']:,.0f}", f"{r['load_1m']:.2f}"] for r in runs]))
    median = {side: h.median([r["tokens_per_s"] for r in runs if r["side"] == side]) for side in sides}
    per_round = [next(r["tokens_per_s"] for r in runs if r["round"] == n and r["side"] == "tuneboard-2")
                 / next(r["tokens_per_s"] for r in runs if r["round"] == n and r["side"] == "bare-2")
                 for n in range(1, rounds + 1)]
    ratio = median["tuneboard-2"] / median["bare-2"]
    scaling = median["tuneboard-2"] / median["tuneboard-1"]
    print()
    print(f"tokens/s, median: Tuneboard 1 process {median['tuneboard-1']:,.0f}; Tuneboard 2 processes "
          f"{median['tuneboard-2']:,.0f}; bare 2 processes {median['bare-2']:,.0f}")
    print(f"2 processes / 1 process (Tuneboard): {scaling:.3f}")
    tokens = {r["tokens"] for r in runs}
    print(f"real tokens per run: {sorted(tokens)} ({'the same on every side' if len(tokens) == 1 else 'DIFFER'})")
    verdict = "PASS" if ratio >= TARGET_RATIO else "MISS"
    print(f"ratio Tuneboard/bare (2 processes) tokens/s = {ratio:.3f} (per round: "
          f"{', '.join(f'{x:.3f}' for x in per_round)}); target >= {TARGET_RATIO}: {verdict}")
    if args.json:
        h.write_json(args.json, {"benchmark": "multi_gpu", "machine": h.machine(), "versions": h.versions(),
                                 "runs": runs, "median": median, "ratio": ratio, "scaling": scaling})
    return 0


if __name__ == "__main__":
    sys.exit(main())
