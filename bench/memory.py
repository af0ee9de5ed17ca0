"""Memory, proven: the memory estimate, component by component, against the measured peak of real LoRA training steps.

For every grid point (an architecture from the catalog at a small size with its real vocabulary, a rank and target
set, a sequence length, a batch size, a precision, gradient checkpointing on or off), one run:

1. builds a random-weight model from the catalog model's committed config, resized (`workers.memory_probe`), and
   its module inventory the way the product does (`workers.inventory.build_inventory`);
2. asks the estimator (`app.estimator.estimate.estimate`) for the memory of that job;
3. trains two optimizer steps of the job on the worker's own path (`_wrap_with_lora`, `training_arguments`, TRL's
   SFTTrainer with Tuneboard's collator, fused AdamW, TRL's chunked LM head) on full-length random sequences, under
   `torch.profiler` with memory profiling, and puts every live tensor in the bucket of the estimate component it
   belongs to: parameters (frozen: base weights; trainable: adapter), gradients and optimizer states as the
   profiler's memory categories say, tensors shaped like the LM head's logit tiles ("logits"), and the rest
   (activations, and the gradients flowing through them);
4. compares each component with the most its bucket held at any one time, and the estimate's total (without the
   CUDA overhead, which a CPU does not have) with the most tensor bytes live at once. On a CPU the estimate is
   asked for the LM head as a CPU runs it (`device="cpu"`: TRL's tile fold in torch ops, not Triton).

The target: every point's total within 15 % of the measured peak. The exit status is 0 unless a point fails to
run; a missed target is printed as MISS.

On a CPU the weights follow the GPU worker's recipe for the precision (bf16 weights and bf16 autocast for
"bf16"), where the real worker on a CPU would fall back to fp32. With CUDA available (or `--device cuda`) the same
grid runs on the GPU, where the peak is `torch.cuda.max_memory_allocated()`, the grid adds 4-bit QLoRA points
(when bitsandbytes is installed), and each point also reports the memory the process holds beyond its tensors
(CUDA context, cuBLAS workspaces, allocator cache) against the estimate's `cuda_overhead`.

Run from the repository root (needs the worker extra: torch, transformers, peft):

    .venv/bin/python -m bench.memory                  # the 30 points, about 5-7 minutes on 2 CPU cores
    .venv/bin/python -m bench.memory --quick          # four points, a smoke test
    .venv/bin/python -m bench.memory --arch gemma2    # only architectures containing a string
    .venv/bin/python -m bench.memory --explain        # also list the biggest tensors live at each peak
    .venv/bin/python -m bench.memory --json out.json  # every figure, the live breakdown at each peak

Results are recorded in docs/benchmarks.md, "Memory (bench/memory.py)".
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import sys
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench._harness import machine, markdown_table, progress, quiet_transformers, versions, write_json
from workers.memory_probe import COMPONENTS, Shape

TARGET = 0.15  # the estimate's total must be within 15 % of the measured peak
MIB = 1024**2

# One model per architecture family of the catalog, each resized to a shape where every tensor kind shows and
# the grid runs in minutes on a laptop CPU. Vocabularies stay the real ones: they decide the logits.
ARCHITECTURES: dict[str, tuple[str, Shape]] = {
    "llama": ("HuggingFaceTB/SmolLM2-135M", Shape(hidden=384, layers=4, intermediate=1024, heads=6, kv_heads=2)),
    "qwen2": ("Qwen/Qwen2.5-0.5B", Shape(hidden=256, layers=2, intermediate=1408, heads=4, kv_heads=1)),
    "gemma2": ("google/gemma-2-2b", Shape(hidden=256, layers=2, intermediate=1024, heads=4, kv_heads=2)),
    "phi3": ("microsoft/Phi-3-mini-4k-instruct", Shape(hidden=512, layers=4, intermediate=1536, heads=8, kv_heads=8)),
    "gpt2": ("openai-community/gpt2", Shape(hidden=384, layers=4, intermediate=1536, heads=6, kv_heads=6)),
    "mistral": ("mistralai/Mistral-7B-v0.3", Shape(hidden=384, layers=4, intermediate=1024, heads=6, kv_heads=2)),
}
ATTENTION = {"gpt2": ["c_attn", "attn.c_proj"], "phi3": ["qkv_proj", "o_proj"]}  # default: q, k, v, o


@dataclass(frozen=True)
class Setting:
    """The job knobs of one grid point."""

    precision: str
    gradient_checkpointing: bool
    r: int
    targets: str  # "attention" or "all-linear"
    sequence_length: int
    batch_size: int
    layers_to_transform: tuple[int, ...] | None = None
    modules_to_save: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        only = f" layers {','.join(map(str, self.layers_to_transform))}" if self.layers_to_transform else ""
        only += f" +{','.join(self.modules_to_save)}" if self.modules_to_save else ""
        return (f"{self.precision} {'gc' if self.gradient_checkpointing else 'no-gc'} r{self.r} {self.targets}{only} "
                f"{self.sequence_length}x{self.batch_size}")


# Six settings cover both ranks, both target sets, both lengths, batch sizes 1, 2 and 4, both precisions,
# checkpointing on and off, with small and large micro-batches in each precision.
SETTINGS = (
    Setting("fp32", False, 8, "attention", 128, 1),
    Setting("fp32", False, 64, "all-linear", 512, 2),
    Setting("fp32", True, 64, "all-linear", 128, 4),
    Setting("bf16", False, 8, "attention", 512, 1),
    Setting("bf16", False, 64, "all-linear", 128, 4),
    Setting("bf16", True, 8, "attention", 512, 4),
)
# Gemma-2's 256k vocabulary makes a 2048-token micro-batch's logits 2 GiB a copy: its points stay at 512 tokens.
GEMMA_SETTINGS = (
    Setting("fp32", False, 8, "attention", 128, 1),
    Setting("fp32", True, 64, "all-linear", 512, 1),
    Setting("bf16", False, 64, "all-linear", 512, 1),
    Setting("bf16", True, 8, "attention", 128, 4),
)
# LoRA on the last two blocks only, on Mistral (a second Llama-like type, with an untied head): the blocks before
# them keep nothing for backward. And a full trainable copy of Phi-3's untied head (modules_to_save).
EXTRA = (
    ("mistral", Setting("bf16", False, 16, "all-linear", 512, 2, layers_to_transform=(2, 3))),
    ("phi3", Setting("bf16", False, 8, "attention", 512, 1, modules_to_save=("lm_head",))),
)
QUICK = (
    ("llama", Setting("fp32", False, 8, "attention", 128, 1)),
    ("llama", Setting("bf16", True, 64, "all-linear", 128, 4)),
    ("gemma2", Setting("bf16", False, 8, "attention", 128, 1)),
    ("gpt2", Setting("fp32", False, 64, "all-linear", 128, 2)),
)


def grid(quick: bool, device: str) -> list[tuple[str, Setting]]:
    """The grid points, in order; on a GPU with bitsandbytes each bf16 point also runs as 4-bit QLoRA."""
    if quick:
        points = list(QUICK)
    else:
        points = [(arch, s) for arch in ("llama", "qwen2", "phi3", "gpt2") for s in SETTINGS]
        points += [("gemma2", s) for s in GEMMA_SETTINGS] + list(EXTRA)
    if device == "cuda" and importlib.util.find_spec("bitsandbytes") is not None:
        points += [(arch, replace(s, precision="4bit")) for arch, s in points if s.precision == "bf16"]
    return points


@dataclass
class Point:
    """One grid point's estimate and measurement, in bytes."""

    arch: str
    setting: Setting
    estimate: dict[str, int] = field(default_factory=dict)
    measured: dict[str, int] = field(default_factory=dict)  # component -> its maximum
    at_peak: dict[str, int] = field(default_factory=dict)
    peak: int = 0
    cuda_overhead: int | None = None
    seconds: float = 0.0
    largest: dict[str, list[tuple[int, str, str]]] = field(default_factory=dict)
    error: str | None = None

    @property
    def estimate_total(self) -> int:
        """The estimate's total without the CUDA overhead, which is compared on its own."""
        return sum(self.estimate[name] for name in COMPONENTS)

    @property
    def total_error(self) -> float:
        return self.estimate_total / self.peak - 1


def job_config(arch: str, setting: Setting) -> Any:
    """The JobConfig of a grid point, as a user would send it."""
    from app.estimator.job_config import JobConfig

    model_id, _ = ARCHITECTURES[arch]
    targets = ATTENTION.get(arch, ["q_proj", "k_proj", "v_proj", "o_proj"]) if setting.targets == "attention" \
        else "all-linear"
    lora: dict[str, Any] = {"r": setting.r, "lora_alpha": setting.r, "lora_dropout": 0.0, "target_modules": targets}
    if setting.layers_to_transform:
        lora["target_modules"] = ATTENTION.get(arch, ["q_proj", "k_proj", "v_proj", "o_proj"]) + (
            ["gate_proj", "up_proj", "down_proj"] if arch != "gpt2" else ["c_fc", "mlp.c_proj"])
        lora["layers_to_transform"] = list(setting.layers_to_transform)
    if setting.modules_to_save:
        lora["modules_to_save"] = list(setting.modules_to_save)
    return JobConfig.model_validate({"model": model_id, "lora": lora, "training": {
        "precision": setting.precision, "gradient_checkpointing": setting.gradient_checkpointing,
        "sequence_length": setting.sequence_length, "batch_size": setting.batch_size, "learning_rate": 1e-4}})


def run_point(arch: str, setting: Setting, device: str, explain: bool) -> Point:
    """Estimate and measure one grid point."""
    from app.estimator.estimate import EstimateRequest, estimate
    from app.estimator.inventory import Inventory
    from workers.inventory import build_inventory
    from workers.memory_probe import measure_training_memory, scaled_catalog_config

    model_id, shape = ARCHITECTURES[arch]
    config = scaled_catalog_config(model_id, shape)
    job = job_config(arch, setting)
    point = Point(arch, setting)
    inventory = Inventory(build_inventory(config, model_id))
    memory = estimate(inventory, EstimateRequest.model_validate(job.model_dump()), device=device).memory
    point.estimate = {name: getattr(memory, name) for name in (*COMPONENTS, "cuda_overhead")}
    measured = measure_training_memory(config, job, device=device, explain=explain)
    point.measured, point.at_peak, point.peak = measured.components, measured.at_peak, measured.peak
    point.cuda_overhead, point.seconds, point.largest = measured.cuda_overhead, measured.seconds, measured.largest
    return point


def _mib(value: int) -> str:
    return f"{value / MIB:,.1f}"


def _pair(estimate: int, measured: int) -> str:
    """'estimate / measured (error)' in MiB; the error only where the measured value is worth a percentage."""
    text = f"{_mib(estimate)} / {_mib(measured)}"
    if measured >= MIB:
        text += f" ({100 * (estimate / measured - 1):+.0f} %)"
    return text


def table(points: list[Point]) -> str:
    """One row per grid point: total against peak, then each component's estimate against its measured maximum."""
    ok = [p for p in points if p.error is None]
    headers = ["#", "arch", "setting", "estimate MiB", "peak MiB", "error", *COMPONENTS]
    if any(p.cuda_overhead is not None for p in ok):
        headers.append("cuda_overhead")
    rows = []
    for index, p in enumerate(ok, 1):
        row = [str(index), p.arch, p.setting.label, _mib(p.estimate_total), _mib(p.peak),
               f"{100 * p.total_error:+.1f} %", *(_pair(p.estimate[c], p.measured[c]) for c in COMPONENTS)]
        if p.cuda_overhead is not None:
            row.append(_pair(p.estimate["cuda_overhead"], p.cuda_overhead))
        rows.append(row)
    return markdown_table(headers, rows)


def summary(points: list[Point]) -> list[str]:
    """The target's verdict and each component's worst error."""
    ok = [p for p in points if p.error is None]
    if not ok:
        return ["no point ran"]
    worst = max(ok, key=lambda p: abs(p.total_error))
    misses = [p for p in ok if abs(p.total_error) > TARGET]
    lines = [f"{'PASS' if not misses else 'MISS'}  total within {TARGET:.0%} of the measured peak on every point "
             f"(worst: {worst.arch} {worst.setting.label}, {100 * worst.total_error:+.1f} %"
             + (f"; missed by {len(misses)} of {len(ok)}" if misses else "") + ")"]
    for name in COMPONENTS:
        pairs = [(p.estimate[name] / p.measured[name] - 1, p) for p in ok if p.measured[name] >= MIB]
        if not pairs:
            continue
        low, high = min(pairs, key=lambda x: x[0]), max(pairs, key=lambda x: x[0])
        if high[0] - low[0] < 0.001:
            lines.append(f"      {name}: {100 * high[0]:+.1f} % on every point where it holds 1 MiB or more")
        else:
            lines.append(f"      {name}: from {100 * low[0]:+.1f} % ({low[1].arch} {low[1].setting.label}) to "
                         f"{100 * high[0]:+.1f} % ({high[1].arch} {high[1].setting.label})")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the grid, print the table and the verdict, optionally write JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="four points, a smoke test")
    parser.add_argument("--arch", action="append", default=[], metavar="SUBSTR",
                        help="only architectures containing SUBSTR (repeatable)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    parser.add_argument("--explain", action="store_true", help="list the biggest tensors live at each peak")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every figure to this file")
    args = parser.parse_args(argv)

    # The profiler warns once per point about blocks allocated before it started (the weights): expected here.
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    import torch

    quiet_transformers()
    warnings.filterwarnings("ignore")  # transformers' and the profiler's deprecation notices, once per point
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    points_to_run = [(a, s) for a, s in grid(args.quick, device) if not args.arch or any(f in a for f in args.arch)]
    started = datetime.datetime.now(datetime.UTC)
    print(f"Memory: {len(points_to_run)} grid points on {device}, two optimizer steps each, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)", flush=True)
    points = []
    for index, (arch, setting) in enumerate(points_to_run, 1):
        try:
            point = run_point(arch, setting, device, args.explain)
        except Exception as exc:  # one failing point is reported, the grid goes on
            point = Point(arch, setting, error=f"{type(exc).__name__}: {exc}")
            progress(f"[{index:>2}/{len(points_to_run)}] {arch:<7} {setting.label:<38} FAILED {point.error}")
            points.append(point)
            continue
        points.append(point)
        progress(f"[{index:>2}/{len(points_to_run)}] {arch:<7} {setting.label:<38} estimate "
                 f"{_mib(point.estimate_total):>8} MiB  peak {_mib(point.peak):>8} MiB  "
                 f"{100 * point.total_error:+6.1f} %  ({point.seconds:.0f} s)")
        if args.explain:
            for moment in ("peak", "activations"):
                print(f"      biggest tensors at the {moment} maximum:")
                for nbytes, op, component in point.largest.get(moment, []):
                    print(f"        {_mib(nbytes):>9} MiB  {component:<17} {op}")
    elapsed = (datetime.datetime.now(datetime.UTC) - started).total_seconds()

    info = machine()
    print()
    print(f"{info.get('cpu', '?')}, {info['cpu_count']} CPUs, {device}; {elapsed:.0f} s; "
          + ", ".join(f"{k} {v}" for k, v in versions().items() if k in ("python", "torch", "transformers", "peft")))
    print("Each cell: estimate / measured MiB (error); measured = the most that component's tensors held at once.")
    print()
    print(table(points))
    print()
    for line in summary(points):
        print(line)
    failed = [p for p in points if p.error is not None]
    for p in failed:
        print(f"\n!!! {p.arch} {p.setting.label} FAILED: {p.error} !!!", file=sys.stderr)
    if args.json:
        write_json(args.json, {"device": device, "machine": info, "versions": versions(), "seconds": elapsed,
                               "points": [{**asdict(p), "estimate_total": p.estimate_total} for p in points]})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
