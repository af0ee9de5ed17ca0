"""Training-time prediction: predicted vs actual training time of real CPU runs of varied shapes.

Each run is a real job: a training file stored as the API stores it, its token preview computed (as the
data card does), `app.jobs.launch.launch` taking the estimate at launch (the run's FLOPs from the
dataset's token lengths), then `workers.job_runner.run_job` training it on this machine's CPU, in this
process, with real SQLite and Redis. The shapes vary the model (hidden 128-384, 2-4 layers), the
sequence length, the batch, the rank, the target set, gradient checkpointing and evaluation; each dataset's
examples fit its sequence length (an example truncated to nothing to learn is skipped by the worker, which
the prediction, made from the file's token lengths, does not foresee: the chat template alone is about 60
tokens with the tests' tokenizer, so 64-token shapes trained 2 steps of their 20).

A queue calibrates itself from its own finished runs, so run i is predicted from runs 0..i-1 only, as
`app.fleet.throughput` would on a live queue: the median FLOP/s those runs achieved (re-costed from the
padded tokens each really computed on). The first runs, with nothing to calibrate from, are predicted
with the stated CPU default. Baseline in the same run: the old rule (tokens ÷ the tokens/s of earlier
runs), which ignores how much compute a token costs. Target: within 25 % on every calibrated run.

    .venv/bin/python -m bench.time_prediction            # 12 runs, about 10 minutes on 2 CPU cores
    .venv/bin/python -m bench.time_prediction --quick    # 4 small runs, a smoke test

Results are recorded in docs/benchmarks.md, "Training-time prediction (bench/time_prediction.py)".
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import _harness as h

QUEUE = "bench-cpu"


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    seq: int
    batch: int
    rank: int
    targets: str  # "attention" or "all"
    checkpointing: bool
    examples: int
    words: tuple[int, int]
    validation: bool = False

    @property
    def label(self) -> str:
        return (f"h{self.hidden} L{self.layers} seq{self.seq} b{self.batch} r{self.rank} {self.targets}"
                f"{' ckpt' if self.checkpointing else ''}{' eval' if self.validation else ''}")


SHAPES = [
    Shape(256, 4, 128, 8, 16, "all", False, 160, (5, 30)),
    Shape(128, 2, 128, 4, 8, "attention", False, 200, (10, 40)),
    Shape(384, 4, 256, 4, 16, "all", False, 96, (40, 120)),
    Shape(256, 2, 128, 8, 8, "attention", False, 240, (2, 12)),
    Shape(256, 4, 256, 4, 32, "all", True, 96, (40, 120)),
    Shape(128, 4, 128, 8, 8, "all", False, 200, (5, 40)),
    Shape(384, 2, 128, 8, 16, "attention", False, 160, (10, 40), validation=True),
    Shape(256, 4, 128, 2, 64, "all", False, 160, (10, 50)),
    Shape(384, 4, 128, 4, 8, "all", True, 120, (20, 50)),
    Shape(256, 3, 256, 8, 16, "attention", False, 80, (60, 130)),
    Shape(128, 2, 128, 16, 8, "all", False, 320, (2, 12)),
    Shape(384, 3, 128, 8, 32, "all", False, 120, (10, 50), validation=True),
]
QUICK = [Shape(128, 2, 64, 4, 8, "attention", False, 48, (2, 12)), Shape(128, 2, 64, 4, 8, "all", False, 48, (2, 12)),
         Shape(192, 2, 64, 4, 8, "all", False, 48, (2, 12)), Shape(128, 2, 128, 4, 8, "all", True, 48, (10, 40))]


@dataclass
class Result:
    shape: Shape
    predicted_flops: float
    achieved_flops_per_s: float
    actual_s: float
    tokens: int
    tokens_per_s: float
    predicted_padded: int
    computed_padded: int
    steps: int
    tokens_source: str
    predicted_steps: int = 0
    predicted_values: float = 0.0
    measured: Any = None  # app.fleet.throughput.Measurement
    predicted_s: float | None = None
    source: str = ""
    baseline_s: float | None = None
    two_term_s: float | None = None
    rate: Any = None  # app.fleet.throughput.Rate it was predicted with


def _config(model_dir: Path, shape: Shape) -> Any:
    from app.estimator.job_config import JobConfig

    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    if shape.targets == "all":
        targets += ["gate_proj", "up_proj", "down_proj"]
    return JobConfig.model_validate({
        "model": str(model_dir),
        "lora": {"r": shape.rank, "lora_alpha": 2 * shape.rank, "target_modules": targets},
        "training": {"num_epochs": 1, "batch_size": shape.batch, "sequence_length": shape.seq, "precision": "fp32",
                     "gradient_checkpointing": shape.checkpointing, "logging_steps": 5, "save_steps": 10_000,
                     "validation_split": 10 if shape.validation else 0, "held_out_samples": 0, "seed": 42},
    })


def _wait(what: str, attempt, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = attempt()
        if result is not None:
            return result
        time.sleep(0.5)
    sys.exit(f"timed out waiting for {what}")


def _ready(settings, model: str, data_file) -> bool:
    """Inventory and token preview computed (both in child processes, as the web app does)."""
    from app.base_models.inventories import InventoryUnavailable, get_inventory
    from app.datasets.previews import get_preview
    from app.fleet import offloaded

    try:
        get_inventory(model, settings)
        get_preview(settings, data_file, model)
    except (InventoryUnavailable, offloaded.Pending):
        return False
    return True


def run_one(work: Path, account: h.Account, index: int, shape: Shape) -> Result:
    from app.db import new_session
    from app.fleet import throughput
    from app.settings import get_settings
    from app.tables import DataFile, Job
    from workers.job_runner import run_job

    settings = get_settings()
    model_dir = h.build_model(settings.data_dir / "models" / f"m{shape.hidden}x{shape.layers}", hidden=shape.hidden,
                              layers=shape.layers, intermediate=shape.hidden * 4 - shape.hidden // 2,
                              heads=max(2, shape.hidden // 64), kv_heads=max(1, shape.hidden // 128))
    records = h.chat_records(shape.examples, words=shape.words, seed=index)
    with new_session() as session:
        file_id = h.store_file(session, settings, account, filename=f"run{index}.jsonl", data=h.jsonl(records)).id
    with new_session() as session:
        data_file = session.get(DataFile, file_id)
        _wait("the inventory and the token preview", lambda: True if _ready(settings, str(model_dir), data_file)
              else None)
    with new_session() as session:
        job = h.launch_job(session, settings, account, _config(model_dir, shape), training_file=file_id, queue=QUEUE)
        job_id = job.id
    status = run_job(job_id, worker=f"bench@{socket.gethostname()}")
    with new_session() as session:
        job = session.get(Job, job_id)
        if status != "succeeded":
            sys.exit(f"run {index} ended {status}: {job.error_message}")
        predicted = job.estimate["training_time"]
        runtime = job.final_metrics["train_runtime"]
        measured = throughput.measurement(job)
        return Result(shape, predicted["flops"], measured.flops_per_second, runtime,
                      job.trained_tokens, job.trained_tokens / runtime, predicted["padded_tokens"],
                      int(job.final_metrics["compute_training_tokens"]), job.step, predicted["tokens_source"],
                      predicted["steps"], predicted["elementwise_values"], measured)


def _two_term_seconds(earlier: list[Result], result: Result) -> float:
    """The previous model, for comparison: `steps × a + FLOPs / R` by relative least squares from three runs,
    the median FLOP/s below that, no per-value term and no default to start from."""
    rate = statistics.median(r.achieved_flops_per_s for r in earlier)
    if len(earlier) >= 3:
        xs = [r.measured.steps / r.actual_s for r in earlier]
        ys = [r.measured.flops / r.actual_s for r in earlier]
        sxx, syy, sxy = sum(x * x for x in xs), sum(y * y for y in ys), sum(x * y for x, y in zip(xs, ys, strict=True))
        sx, sy, det = sum(xs), sum(ys), sum(x * x for x in xs) * sum(y * y for y in ys) - sxy * sxy
        if det > 0 and (a := (sx * syy - sy * sxy) / det) >= 0 and (b := (sy * sxx - sx * sxy) / det) > 0:
            return result.predicted_steps * a + result.predicted_flops * b
        return result.predicted_flops * syy / sy
    return result.predicted_flops / rate


def predict(results: list[Result]) -> None:
    """Each run from the runs before it, as a queue calibrating itself would (`app.fleet.throughput.fit`)."""
    from app.fleet.throughput import MIN_RUNS_FOR_FIT, RECENT_RUNS, default_rate, fit

    prior = default_rate("cpu")
    for i, result in enumerate(results):
        earlier = results[:i][-RECENT_RUNS:]
        rate = fit([r.measured for r in reversed(earlier)], prior)
        if earlier:
            result.source = f"{'fit' if len(earlier) >= MIN_RUNS_FOR_FIT else 'scaled default'} of {len(earlier)}"
            tokens_rate = statistics.median(r.tokens_per_s for r in earlier)
            result.baseline_s = result.tokens / tokens_rate
            result.two_term_s = _two_term_seconds(earlier, result)
        else:
            result.source = "default"
        result.predicted_s = rate.seconds(result.predicted_flops, result.predicted_steps, result.predicted_values)
        result.rate = rate


def report(results: list[Result]) -> dict:
    rows, calibrated, baseline, two_term = [], [], [], []
    for i, r in enumerate(results):
        error = (r.predicted_s - r.actual_s) / r.actual_s
        base_error = (r.baseline_s - r.actual_s) / r.actual_s if r.baseline_s else None
        two_term_error = (r.two_term_s - r.actual_s) / r.actual_s if r.two_term_s else None
        if r.source != "default":
            calibrated.append(abs(error))
            baseline.append(abs(base_error))
            two_term.append(abs(two_term_error))
        rows.append([i, r.shape.label, r.steps, f"{r.predicted_padded:,} / {r.computed_padded:,}",
                     f"{r.predicted_flops / 1e12:.2f}", f"{r.achieved_flops_per_s / 1e9:.1f}",
                     f"{r.actual_s:.1f}", f"{r.predicted_s:.1f}", f"{100 * error:+.0f} %", r.source,
                     f"{100 * two_term_error:+.0f} %" if two_term_error is not None else "—",
                     f"{100 * base_error:+.0f} %" if base_error is not None else "—"])
    print(h.markdown_table(["#", "shape", "steps", "padded tokens predicted / computed", "TFLOP",
                            "achieved GFLOP/s", "actual s", "predicted s", "error",
                            "rate", "steps + FLOPs model", "tokens/s rule"], rows))
    summary = {
        "calibrated_runs": len(calibrated),
        "median_abs_error": statistics.median(calibrated) if calibrated else None,
        "worst_abs_error": max(calibrated) if calibrated else None,
        "within_25_percent": sum(1 for e in calibrated if e <= 0.25),
        "baseline_median_abs_error": statistics.median(baseline) if baseline else None,
        "two_term_median_abs_error": statistics.median(two_term) if two_term else None,
        "two_term_worst_abs_error": max(two_term) if two_term else None,
        "baseline_worst_abs_error": max(baseline) if baseline else None,
        "achieved_gflops": [round(r.achieved_flops_per_s / 1e9, 2) for r in results],
    }
    if calibrated:
        print(f"\ncalibrated runs: {len(calibrated)}; |error| median {100 * summary['median_abs_error']:.1f} %, worst "
              f"{100 * summary['worst_abs_error']:.1f} %, within 25 %: {summary['within_25_percent']}/{len(calibrated)}"
              f" (target: all). steps + FLOPs model: median {100 * summary['two_term_median_abs_error']:.1f} %, worst "
              f"{100 * summary['two_term_worst_abs_error']:.1f} %. tokens/s rule: median "
              f"{100 * summary['baseline_median_abs_error']:.1f} %, worst "
              f"{100 * summary['baseline_worst_abs_error']:.1f} %")
    return summary


def main(argv: list[str] | None = None) -> int:
    """Run the shapes, predict each from the ones before, print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.time_prediction", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 small runs")
    parser.add_argument("--redis-url", default=h.DEFAULT_REDIS_URL)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    h.exit_cleanly_on_sigterm()
    h.check_redis(args.redis_url)
    h.quiet_transformers()
    shapes = QUICK if args.quick else SHAPES
    print("machine:", h.machine(), "\nversions:", h.versions())
    with tempfile.TemporaryDirectory(prefix="tuneboard-bench-time-") as tmp:
        work = Path(tmp)
        h.configure(work / "data", args.redis_url, TUNEBOARD_QUEUES=QUEUE)
        account = h.bench_account()
        results = []
        for index, shape in enumerate(shapes):
            h.progress(f"run {index + 1}/{len(shapes)}: {shape.label}")
            results.append(run_one(work, account, index, shape))
            h.progress(f"  took {results[-1].actual_s:.1f} s, {results[-1].achieved_flops_per_s / 1e9:.1f} GFLOP/s")
    predict(results)
    summary = report(results)
    if args.json:
        runs = [{"label": r.shape.label, "steps": r.measured.steps, "flops": r.measured.flops,
                 "elementwise": r.measured.elementwise, "seconds": r.measured.seconds,
                 "predicted": {"steps": r.predicted_steps, "flops": r.predicted_flops,
                               "elementwise": r.predicted_values}}
                for r in results]
        h.write_json(args.json, {"summary": summary, "runs": runs, "machine": h.machine(), "versions": h.versions()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
