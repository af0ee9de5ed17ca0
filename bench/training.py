"""Training overhead: tokens per second through Tuneboard's worker path vs a bare TRL + PEFT script, for supervised
runs (SFTTrainer) and for DPO (DPOTrainer).

Both sides train the same base model on the same data for the same steps with the same TRL config values
(`SFTConfig` or `DPOConfig`), in the same process, alternating (round 1: Tuneboard then bare, round 2:
bare then Tuneboard, ...), after one short warm-up run of each that is not counted.

- Tuneboard: a queued job row (its training file stored with `app.datasets.files.store_upload`) run by
  `workers.job_runner.run_job(job_id, worker)`: claim with lease + LeaseKeeper thread, dataset read
  from the artifact store, `workers.training.train(TrainingRun(...), JobReporter)`, so every logging
  step is XADDed to the job's Redis stream and metric rows are batched into SQLite (flush every
  `metrics_flush_seconds`, 2 s by default), the cancel flag is polled, and the final checkpoint is
  recorded. Real SQLite file in a temp data dir, real Redis.
- bare: `AutoModelForCausalLM.from_pretrained` + `peft.get_peft_model(LoraConfig(...))` + TRL's trainer with
  its own collator (PrinterCallback removed, as Tuneboard does). Supervised: `SFTTrainer` on the chat examples
  tokenized by `workers.training.supervised.prepare_examples` (TRL cannot mask the assistant turns of this
  template itself, see `workers/training/chat_masks.py`); DPO: `DPOTrainer` on the pairs as a `datasets.Dataset`,
  which it tokenizes.

Timed: the `trainer.train()` call on both sides (on the Tuneboard side by wrapping the trainer's `train` from
here; model load, tokenisation and adapter save are outside it). tokens/s = non-padding tokens trained (both
sequences of a pair for DPO) / that wall time. Tuneboard's token count is the job's `trained_tokens`; the bare
side counts the same batches around TRL's collator (the two must agree). The Trainer's own `train_runtime` and
the median interval between logged steps are reported beside it. Target: Tuneboard / bare >= 0.97 (median
over rounds). The time spent inside JobReporter methods is measured by wrapping them, and `--profile` adds one
cProfile'd Tuneboard run and prints where its app/ and workers/ time goes.

Default model: a random Llama, hidden 256, 4 layers, intermediate 1024, 8 heads (4 KV), with the
tests' tiny BPE tokenizer; LoRA r=16, alpha 32 on all 7 projections; batch 8 (examples or pairs), sequence
length 128, fp32, 60 steps (one epoch), logging every step, one checkpoint (at the end).

Run from the repository root (needs the worker extra and a Redis server):

    .venv/bin/python -m bench.training                   # supervised, 5 rounds, about 2 minutes on 2 quiet cores
    .venv/bin/python -m bench.training --method dpo      # DPO (pairs of two sequences: about twice as long)
    .venv/bin/python -m bench.training --quick           # 1 round of 15 steps, a smoke test
    .venv/bin/python -m bench.training --json out.json   # also write every figure as JSON
    .venv/bin/python -m bench.training --profile         # plus one cProfile'd Tuneboard run

Results are recorded in docs/benchmarks.md, "Training overhead (bench/training.py)".
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import gc
import io
import os
import pstats
import socket
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import _harness as h

TARGET_RATIO = 0.97
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class Run:
    side: str  # "tuneboard" or "bare"
    round: int
    steps: int
    tokens: int
    wall_s: float  # around trainer.train()
    train_runtime_s: float  # the Trainer's own figure
    step_intervals_s: list[float] = field(default_factory=list)  # between consecutive logged steps
    reporter_s: dict[str, float] = field(default_factory=dict)  # time inside JobReporter methods
    reporter_calls: dict[str, int] = field(default_factory=dict)
    gc: dict[str, float] = field(default_factory=dict)  # collector pauses during trainer.train()
    load_1m: float = float("nan")  # the machine's 1-minute load average when the run ended (noise indicator)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    @property
    def median_step_s(self) -> float:
        return h.median(self.step_intervals_s)


# ------------------------------------------------------------------------------------------ instrumentation
class Clock:
    """Wall time of Tuneboard's trainers' train() and of JobReporter methods, measured by wrapping them from here,
    and the garbage collector's pauses while a trainer.train() runs (on either side)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.gc_pauses: list[tuple[int, float]] = []  # (generation, seconds) during trainer.train()
        self.in_train = False
        self._gc_started = 0.0
        self._originals: list[tuple[type, str, Any]] = []
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self.in_train:
            self.gc_pauses.append((info["generation"], time.perf_counter() - self._gc_started))

    def wrap(self, cls: type, name: str, label: str) -> None:
        original = getattr(cls, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            self.in_train = self.in_train or label == "trainer.train"
            try:
                return original(*args, **kwargs)
            finally:
                if label == "trainer.train":
                    self.in_train = False
                self.seconds[label] += time.perf_counter() - started
                self.calls[label] += 1

        self._originals.append((cls, name, original))
        setattr(cls, name, timed)

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()
        self.gc_pauses = []

    def gc_summary(self) -> dict[str, float]:
        full = [seconds for generation, seconds in self.gc_pauses if generation == 2]
        return {"collections": len(self.gc_pauses), "full_collections": len(full), "full_s": sum(full),
                "all_s": sum(seconds for _, seconds in self.gc_pauses)}

    def restore(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        for cls, name, original in reversed(self._originals):
            setattr(cls, name, original)
        self._originals.clear()


def instrument() -> Clock:
    from workers.job_reporter import JobReporter
    from workers.training.preference import TuneboardDPOTrainer
    from workers.training.supervised import TuneboardSFTTrainer

    clock = Clock()
    clock.wrap(TuneboardSFTTrainer, "train", "trainer.train")
    clock.wrap(TuneboardDPOTrainer, "train", "trainer.train")
    for method in ("on_start", "on_log", "on_checkpoint", "on_event", "should_stop", "flush"):
        clock.wrap(JobReporter, method, method)
    return clock


# ------------------------------------------------------------------------------------------------ the setup
@dataclass
class Setup:
    model_dir: Path
    file_id: str
    examples: list[Any]  # app.datasets.format_common.Example, read back from the stored file as the runner reads it
    config: Any  # JobConfig
    work: Path
    account: h.Account
    job_ids: list[str] = field(default_factory=list)


def job_config(model_dir: Path, steps: int, batch: int, seq: int, method: str, lr: float = 2e-4) -> Any:
    from app.estimator.job_config import JobConfig

    return JobConfig.model_validate({
        "model": str(model_dir), "method": {"type": method},
        "lora": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": TARGET_MODULES},
        "training": {"max_steps": steps, "batch_size": batch, "sequence_length": seq, "precision": "fp32",
                     "learning_rate": lr, "logging_steps": 1, "save_steps": steps, "warmup_ratio": 0.0,
                     "lr_scheduler": "linear", "seed": 42, "loss_on": "assistant"},
    })


def prepare(work: Path, args: argparse.Namespace) -> Setup:
    from app.datasets.validator import load_examples
    from app.db import new_session
    from app.settings import get_settings
    from app.storage import artifacts
    from app.tables import DataFile

    h.progress(f"building the model (hidden {args.hidden}, {args.layers} layers) in {work / 'model'}")
    model_dir = h.build_model(work / "model", hidden=args.hidden, layers=args.layers, intermediate=args.hidden * 4)
    settings = get_settings()
    account = h.bench_account()
    records = h.chat_records(args.steps * args.batch, words=(5, 30), seed=1)  # ~65-160 tokens
    if args.method == "dpo":
        records = preference_records(records)
    with new_session() as session:
        record = h.store_file(session, settings, account, filename="bench.jsonl", data=h.jsonl(records))
        file_id = record.id
        key = session.get(DataFile, file_id).storage_key
    examples = list(load_examples(artifacts.local_file(settings, key)).examples)
    return Setup(model_dir, file_id, examples, job_config(model_dir, args.steps, args.batch, args.seq, args.method),
                 work, account)


def preference_records(chats: list[dict]) -> list[dict]:
    """Each chat as a pair: its own answer chosen, the next chat's answer rejected."""
    answers = [c["messages"][-1] for c in chats]
    return [{"prompt": c["messages"][:-1], "chosen": [answers[i]], "rejected": [answers[(i + 1) % len(answers)]]}
            for i, c in enumerate(chats)]


def _config_for(setup: Setup, steps: int) -> Any:
    return setup.config.model_copy(update={"training": setup.config.training.model_copy(
        update={"max_steps": steps, "save_steps": steps})})


# -------------------------------------------------------------------------------------------- tuneboard side
def run_tuneboard(setup: Setup, clock: Clock, round_: int, steps: int, profile: cProfile.Profile | None = None) -> Run:
    import redis

    from app.db import new_session
    from app.jobs import streams
    from app.settings import get_settings
    from app.tables import Job
    from workers.job_runner import run_job

    job_id = h.queued_job(_config_for(setup, steps), file_id=setup.file_id, account=setup.account,
                          queue="bench-training")
    setup.job_ids.append(job_id)
    clock.reset()
    gc.collect()
    if profile is not None:
        profile.enable()
    status = run_job(job_id, worker=f"bench@{socket.gethostname()}")
    if profile is not None:
        profile.disable()
    with new_session() as session:
        job = session.get(Job, job_id)
        if status != "succeeded":
            sys.exit(f"the Tuneboard job ended {status}: {job.error_message}\n{job.error_traceback}")
        tokens, runtime, step = job.trained_tokens, job.final_metrics["train_runtime"], job.step
    # The stream ids of the metric entries are the XADD times (ms): the interval between logged steps.
    client = redis.Redis.from_url(get_settings().effective_redis_url, decode_responses=True)
    stamps = [int(entry.id.split("-")[0]) / 1000 for entry in streams.read_since(client, job_id, count=100_000)
              if entry.type == "metric" and "loss" in entry.data]
    seconds = dict(clock.seconds)
    return Run("tuneboard", round_, step, tokens, seconds.pop("trainer.train"), runtime,
               [b - a for a, b in zip(stamps, stamps[1:], strict=False)], seconds,
               {k: v for k, v in clock.calls.items() if k != "trainer.train"}, clock.gc_summary())


# ------------------------------------------------------------------------------------------------- bare side
def _config_class(method: str) -> Any:
    from trl import DPOConfig, SFTConfig

    return DPOConfig if method == "dpo" else SFTConfig


def bare_arguments(output_dir: Path, *, method: str, steps: int, batch: int, seq: int, lr: float) -> Any:
    """The TRL config a plain script would write, with the values Tuneboard uses for this job."""
    values = dict(
        output_dir=str(output_dir), per_device_train_batch_size=batch, per_device_eval_batch_size=batch,
        gradient_accumulation_steps=1, learning_rate=lr, weight_decay=0.0, lr_scheduler_type="linear",
        num_train_epochs=3.0, max_steps=steps, seed=42, logging_strategy="steps", logging_steps=1,
        logging_first_step=True, logging_nan_inf_filter=False, save_strategy="steps", save_steps=steps,
        eval_strategy="no", prediction_loss_only=True, report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        dataloader_pin_memory=False, remove_unused_columns=False, label_names=["labels"], bf16=False, fp16=False,
        use_cpu=True, warmup_steps=0.0, gradient_checkpointing=False, max_length=seq,
    )
    if method == "dpo":
        values |= dict(beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=False, label_names=None)
    else:
        values |= dict(truncation_mode="keep_start", packing=False, dataset_num_proc=None)
    return _config_class(method)(**values)


def compare_arguments(setup: Setup, steps: int) -> list[str]:
    """Differences between the bare script's config and the one Tuneboard builds (should be none)."""
    from workers.training.arguments import training_arguments
    from workers.training.preference import dpo_settings
    from workers.training.supervised import sft_settings

    config = _config_for(setup, steps)
    method = config.method.type
    extra = dpo_settings(config.method.dpo, config.training) if method == "dpo" else sft_settings(config.training)
    ours = training_arguments(config.training, checkpoints_dir=setup.work / "x", mixed_precision=None, device="cpu",
                              has_eval=False, arguments_class=_config_class(method), **extra).to_dict()
    bare = bare_arguments(setup.work / "x", method=method, steps=steps, batch=config.training.batch_size,
                          seq=config.training.sequence_length, lr=config.training.learning_rate).to_dict()
    return [f"{k}: tuneboard={ours.get(k)!r} bare={bare.get(k)!r}" for k in sorted(set(ours) | set(bare))
            if ours.get(k) != bare.get(k) and k not in ("logging_dir",)]


class CountingCollator:
    """TRL's own collator, with the non-padding tokens of every batch it makes counted here."""

    def __init__(self, inner: Any, count: Any):
        self.inner, self.count, self.tokens = inner, count, 0

    def __call__(self, features):
        self.tokens += self.count(features)
        return self.inner(features)


def _bare_trainer(setup: Setup, model: Any, tokenizer: Any, args: Any) -> tuple[Any, CountingCollator]:
    """A script's TRL trainer: SFTTrainer or DPOTrainer, with the collator it would build itself, counted."""
    from trl import DPOTrainer, SFTTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from workers.training.preference import preference_dataset
    from workers.training.supervised import prepare_examples

    training = setup.config.training
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if setup.config.method.type == "dpo":
        cap = training.sequence_length
        collator = CountingCollator(
            DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id, max_length=cap,
                                      truncation_mode=args.truncation_mode),
            lambda pairs: sum(min(len(p["prompt_ids"]) + len(p[a]), cap) for p in pairs
                              for a in ("chosen_ids", "rejected_ids")))
        trainer = DPOTrainer(model=model, ref_model=None, args=args, data_collator=collator,
                             train_dataset=preference_dataset(setup.examples), processing_class=tokenizer)
    else:
        collator = CountingCollator(DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id),
                                    lambda rows: sum(len(r["input_ids"]) for r in rows))
        data = prepare_examples(setup.examples, tokenizer, sequence_length=None, loss_on=training.loss_on)
        trainer = SFTTrainer(model=model, args=args, data_collator=collator, train_dataset=data.dataset,
                             processing_class=tokenizer)
    return trainer, collator


def run_bare(setup: Setup, clock: Clock, round_: int, steps: int) -> Run:
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, set_seed
    from transformers.trainer_callback import PrinterCallback

    training = setup.config.training
    tokenizer = AutoTokenizer.from_pretrained(setup.model_dir)
    model = AutoModelForCausalLM.from_pretrained(setup.model_dir, dtype=torch.float32)
    model.config.use_cache = False
    set_seed(training.seed)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=16, lora_alpha=32, lora_dropout=0.0,
                                             target_modules=TARGET_MODULES))
    stamps: list[float] = []

    class StepClock(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                stamps.append(time.time())

    output_dir = setup.work / f"bare-{round_}-{time.monotonic_ns()}"
    args = bare_arguments(output_dir, method=setup.config.method.type, steps=steps, batch=training.batch_size,
                          seq=training.sequence_length, lr=training.learning_rate)
    trainer, collator = _bare_trainer(setup, model, tokenizer, args)
    trainer.add_callback(StepClock())
    trainer.remove_callback(PrinterCallback)
    gc.collect()
    clock.reset()
    clock.in_train = True
    started = time.perf_counter()
    try:
        output = trainer.train()
    finally:
        clock.in_train = False
    wall = time.perf_counter() - started
    run = Run("bare", round_, trainer.state.global_step, collator.tokens, wall, output.metrics["train_runtime"],
              [b - a for a, b in zip(stamps, stamps[1:], strict=False)], gc=clock.gc_summary())
    del trainer, model
    gc.collect()
    return run


# --------------------------------------------------------------------------------------------------- report
def summarise(runs: list[Run]) -> dict[str, Any]:
    by_side = {side: [r for r in runs if r.side == side] for side in ("tuneboard", "bare")}
    out: dict[str, Any] = {}
    for side, rs in by_side.items():
        out[side] = {
            "tokens_per_s_median": h.median([r.tokens_per_s for r in rs]),
            "wall_s_median": h.median([r.wall_s for r in rs]),
            "train_runtime_s_median": h.median([r.train_runtime_s for r in rs]),
            "median_step_ms_median": 1000 * h.median([r.median_step_s for r in rs]),
        }
    t, b = out["tuneboard"], out["bare"]
    out["ratio_tokens_per_s"] = t["tokens_per_s_median"] / b["tokens_per_s_median"]
    out["ratio_train_runtime"] = b["train_runtime_s_median"] / t["train_runtime_s_median"]
    out["ratio_median_step"] = b["median_step_ms_median"] / t["median_step_ms_median"]
    # Paired per round: each round's Tuneboard run against the bare run next to it.
    pairs = [(tr, br) for tr in by_side["tuneboard"] for br in by_side["bare"] if tr.round == br.round]
    out["ratio_per_round"] = [tr.tokens_per_s / br.tokens_per_s for tr, br in pairs]
    out["ratio_per_round_median"] = h.median(out["ratio_per_round"])
    out["full_gcs_per_run_median"] = {side: h.median([r.gc.get("full_collections", 0) for r in rs])
                                      for side, rs in by_side.items()}
    tb = by_side["tuneboard"]
    out["reporter_ms_per_step"] = {
        name: 1000 * h.median([r.reporter_s.get(name, 0.0) / max(r.steps, 1) for r in tb])
        for name in sorted({k for r in tb for k in r.reporter_s})
    }
    out["reporter_share_of_wall"] = h.median(
        [(r.reporter_s.get("on_log", 0) + r.reporter_s.get("should_stop", 0) + r.reporter_s.get("on_start", 0)
          + r.reporter_s.get("on_checkpoint", 0)) / r.wall_s for r in tb])
    out["target_ratio"] = TARGET_RATIO
    out["target_met"] = out["ratio_tokens_per_s"] >= TARGET_RATIO
    return out


def runs_table(runs: list[Run]) -> str:
    rows = [[f"{r.round}", r.side, r.steps, f"{r.tokens:,}", h.fmt(r.wall_s, 2), h.fmt(r.train_runtime_s, 2),
             h.fmt(1000 * r.median_step_s, 0), h.fmt(r.tokens_per_s, 0),
             f"{r.gc.get('full_collections', 0)} / {h.fmt(1000 * r.gc.get('full_s', 0.0), 0)}", h.fmt(r.load_1m, 2)]
            for r in runs]
    return h.markdown_table(["round", "side", "steps", "tokens", "train() s", "train_runtime s", "median step ms",
                             "tokens/s", "full GCs / ms", "load 1m"], rows)


def summary_table(summary: dict[str, Any]) -> str:
    t, b = summary["tuneboard"], summary["bare"]
    rows = [
        ["tokens/s (median of rounds)", h.fmt(t["tokens_per_s_median"], 0), h.fmt(b["tokens_per_s_median"], 0),
         h.fmt(summary["ratio_tokens_per_s"], 3)],
        ["train() wall s", h.fmt(t["wall_s_median"], 2), h.fmt(b["wall_s_median"], 2), ""],
        ["Trainer train_runtime s", h.fmt(t["train_runtime_s_median"], 2), h.fmt(b["train_runtime_s_median"], 2),
         h.fmt(summary["ratio_train_runtime"], 3)],
        ["median step interval ms", h.fmt(t["median_step_ms_median"], 1), h.fmt(b["median_step_ms_median"], 1),
         h.fmt(summary["ratio_median_step"], 3)],
    ]
    return h.markdown_table(["figure", "Tuneboard", "bare", "ratio (Tuneboard/bare speed)"], rows)


def profile_report(profile: cProfile.Profile) -> str:
    buffer = io.StringIO()
    stats = pstats.Stats(profile, stream=buffer)
    stats.sort_stats("cumulative").print_stats(r"/(app|workers)/", 25)
    buffer.write("\n--- top by own time (all code) ---\n")
    stats.sort_stats("tottime").print_stats(15)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.training", description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=["supervised", "dpo"], default="supervised",
                        help="supervised (SFTTrainer) or dpo (DPOTrainer) on both sides")
    parser.add_argument("--quick", action="store_true", help="1 round of 15 steps (a smoke test, not a result)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every figure to this file")
    parser.add_argument("--rounds", type=int, help="measured runs of each side (default 5, quick 1)")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default 60, quick 15)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128, help="sequence length")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--profile", action="store_true", help="one more Tuneboard run under cProfile")
    parser.add_argument("--threads", type=int, help="torch threads for both sides (default: torch's, one per core)")
    parser.add_argument("--redis-url", default=h.DEFAULT_REDIS_URL)
    args = parser.parse_args(argv)
    h.exit_cleanly_on_sigterm()
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.steps = args.steps or (15 if args.quick else 60)
    warnings.filterwarnings("ignore")
    h.check_redis(args.redis_url)

    with tempfile.TemporaryDirectory(prefix="tuneboard-bench-training-") as tmp:
        work = Path(tmp)
        h.configure(work / "data", args.redis_url)
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        h.quiet_transformers()
        setup = prepare(work, args)
        differences = compare_arguments(setup, args.steps)
        if differences:
            print("TRL configs differ between the two sides:\n  " + "\n  ".join(differences))
            return 1
        h.progress(f"{args.method}: TRL configs identical on both sides; torch threads {torch.get_num_threads()}")
        clock = instrument()
        runs: list[Run] = []
        profile_text = None
        try:
            warm = min(5, args.steps)
            h.progress(f"warm-up: {warm} steps of each side (not counted)")
            run_tuneboard(setup, clock, 0, warm)
            run_bare(setup, clock, 0, warm)
            for round_ in range(1, args.rounds + 1):
                sides = ("tuneboard", "bare") if round_ % 2 else ("bare", "tuneboard")
                for side in sides:
                    h.progress(f"round {round_}/{args.rounds}: {side}, {args.steps} steps ...")
                    run = (run_tuneboard(setup, clock, round_, args.steps) if side == "tuneboard"
                           else run_bare(setup, clock, round_, args.steps))
                    run.load_1m = os.getloadavg()[0]
                    runs.append(run)
                    h.progress(f"  {side}: {run.tokens:,} tokens in {run.wall_s:.2f} s = {run.tokens_per_s:,.0f} "
                               f"tokens/s (median step {1000 * run.median_step_s:.0f} ms)")
            tokens = {r.tokens for r in runs}
            if len(tokens) != 1:
                print(f"token counts differ between runs: {sorted(tokens)}; the sides did not train the same data")
                return 1
            if args.profile:
                h.progress("profiling one more Tuneboard run under cProfile ...")
                profile = cProfile.Profile()
                run_tuneboard(setup, clock, 99, args.steps, profile=profile)
                profile_text = profile_report(profile)
        finally:
            clock.restore()
            h.delete_job_keys(args.redis_url, setup.job_ids)

    summary = summarise(runs)
    print()
    print(f"method: {args.method}; model: Llama hidden {args.hidden}, {args.layers} layers; "
          f"LoRA r=16 on {len(TARGET_MODULES)} projections; "
          f"batch {args.batch}, seq {args.seq}, fp32, {args.steps} steps, torch threads {torch.get_num_threads()}")
    print()
    print(runs_table(runs))
    print()
    print(summary_table(summary))
    print()
    print("time inside JobReporter methods, ms per step (median over rounds): "
          + ", ".join(f"{k} {v:.2f}" for k, v in summary["reporter_ms_per_step"].items()))
    print(f"reporter share of train() wall time: {100 * summary['reporter_share_of_wall']:.2f} %")
    steps = sorted(r.median_step_s for r in runs)
    if steps[-1] > 1.3 * steps[0]:
        print(f"WARNING: median step times range {1000 * steps[0]:.0f}-{1000 * steps[-1]:.0f} ms across runs: the "
              "machine was busy during some of them (see 'load 1m'); rerun on a quiet machine before trusting it")
    verdict = "PASS" if summary["target_met"] else "MISS"
    print(f"\nratio Tuneboard/bare tokens/s = {summary['ratio_tokens_per_s']:.3f} "
          f"(per round: {', '.join(f'{x:.3f}' for x in summary['ratio_per_round'])}; median of those "
          f"{summary['ratio_per_round_median']:.3f}); "
          f"target >= {TARGET_RATIO}: {verdict}")
    if profile_text:
        print("\ncProfile of one Tuneboard run (app/ and workers/ functions by cumulative time):")
        print(profile_text)
    if args.json:
        h.write_json(args.json, {
            "benchmark": "training", "machine": h.machine(), "versions": h.versions(),
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "runs": [vars(r) | {"tokens_per_s": r.tokens_per_s, "median_step_s": r.median_step_s} for r in runs],
            "summary": summary, "profile": profile_text,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
