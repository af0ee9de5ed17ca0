"""The bridge from the Hugging Face Trainer to Tuneboard: metrics, checkpoints, cancellation, token counts.

`ReporterCallback` turns Trainer events into `Reporter` calls (DPO's reward curves included); `CountedTraining`
only pops the per-batch token count the collator attaches. Nothing here does per-step I/O or device syncs: the
Trainer already syncs once per logging step (to read the loss), and throughput is measured there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from workers.training.contract import Reporter
from workers.training.step_sync import StepSync, sum_over_ranks

NUM_TOKENS_KEY = "num_tokens"  # batch entry with the batch's non-padding token count, as a plain int

# Trainer log keys forwarded to the reporter as they are.
_TRAIN_KEYS = ("loss", "learning_rate", "grad_norm")
# TRL's DPO log keys, and the names Tuneboard stores them under.
_PREFERENCE_KEYS = {"rewards/chosen": "rewards_chosen", "rewards/rejected": "rewards_rejected",
                    "rewards/margins": "reward_margin", "rewards/accuracies": "reward_accuracy",
                    "eval_rewards/margins": "eval_reward_margin", "eval_rewards/accuracies": "eval_reward_accuracy"}


class CountedTraining:
    """Mixed into TRL's trainers (SFTTrainer, DPOTrainer): a running count of the real (non-padding) tokens it trains
    on, and of the padded tokens it computes on (training and evaluation), from which a finished run's FLOPs are
    worked out. The collator attaches each batch's real-token count under NUM_TOKENS_KEY."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.compute = ComputeCounts()
        # One StepSync, the callback's: the tokens counted here are the ones it adds up at each step's end.
        # (A trainer built without one, to look at its batches, counts into a StepSync nobody reads.)
        reporters = [cb for cb in self.callback_handler.callbacks if isinstance(cb, ReporterCallback)]
        if len(reporters) > 1:
            raise TypeError(f"{type(self).__name__} takes one ReporterCallback, got {len(reporters)}")
        self.step_sync = reporters[0].step_sync if reporters else StepSync()

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        # The collator counted the batch on the CPU; Trainer's own counting would sync the GPU per batch. The count
        # joins num_input_tokens_seen at the step's end, summed over the ranks (ReporterCallback.on_step_end); that
        # state is saved in every checkpoint's trainer_state.json, so the count survives resumes.
        self.step_sync.pending_tokens += int(inputs.pop(NUM_TOKENS_KEY, 0))
        self.compute.add_training(inputs["input_ids"].shape)
        return super().training_step(model, inputs, num_items_in_batch)

    def prediction_step(self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None) -> Any:
        inputs.pop(NUM_TOKENS_KEY, None)
        self.compute.add_evaluation(inputs["input_ids"].shape)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)


class ComputeCounts:
    """Padded tokens this attempt computed on, and the sum over them of their sequence's length (attention's
    cost grows with it). Shapes only: reading them needs no device sync."""

    def __init__(self) -> None:
        self.training_tokens = self.training_length_sum = 0
        self.evaluation_tokens = self.evaluation_length_sum = 0

    def add_training(self, shape: Any) -> None:
        """Count one training micro-batch of shape (batch, length)."""
        batch, length = int(shape[0]), int(shape[-1])
        self.training_tokens += batch * length
        self.training_length_sum += batch * length * length

    def add_evaluation(self, shape: Any) -> None:
        """Count one evaluation batch of shape (batch, length)."""
        batch, length = int(shape[0]), int(shape[-1])
        self.evaluation_tokens += batch * length
        self.evaluation_length_sum += batch * length * length

    def as_metrics(self) -> dict[str, float]:
        """The counts as final metrics (`compute_*`), beside this attempt's train_runtime: summed over the ranks of
        a multi-GPU run (a collective there: every rank calls this)."""
        names = ("compute_training_tokens", "compute_training_length_sum", "compute_evaluation_tokens",
                 "compute_evaluation_length_sum")
        counts = sum_over_ranks([float(self.training_tokens), float(self.training_length_sum),
                                 float(self.evaluation_tokens), float(self.evaluation_length_sum)])
        return dict(zip(names, counts, strict=True))


def _number(value: Any) -> float:
    return float(value.item() if hasattr(value, "item") else value)


class RunAlreadyComplete(Exception):  # a signal, not an error
    """Resumed from a checkpoint at the run's last step: there is nothing left to train.

    Raised from on_train_begin, after the Trainer has restored the checkpoint's weights, because the Trainer
    itself would take one more optimizer step before noticing that max_steps was reached."""


class ReporterCallback(TrainerCallback):
    """Forwards Trainer progress to a Reporter and stops training when it asks."""

    def __init__(self, reporter: Reporter, *, trainable_params: int, all_params: int, device: str,
                 on_checkpoint_model: Callable[[Any, int], None] | None = None):
        self.reporter = reporter
        self.step_sync = StepSync()  # the trainer takes it (CountedTraining) and collects the tokens added up here
        self.on_checkpoint_model = on_checkpoint_model  # called with the model at each checkpoint (held-out answers)
        self.sampled_step: int | None = None
        self.trainable_params = trainable_params
        self.all_params = all_params
        self.device = device
        self.stop_requested = False
        self.resumed_from_step = 0
        self.start_tokens = 0  # tokens already trained when this session began (a resumed checkpoint's count)
        self.last_metrics: dict[str, float] = {}  # latest value of every forwarded metric
        self.last_eval_step: int | None = None
        self.diverged: tuple[int, float] | None = None  # (step, loss) where the training loss stopped being finite
        self.summary: dict[str, float] = {}  # Trainer's end-of-train log: train_runtime, train_loss, ...
        self._mark_tokens = 0
        self._mark_time = 0.0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # Called after the Trainer has restored a resumed checkpoint's state, so global_step is the resume point.
        self.resumed_from_step = state.global_step
        self.start_tokens = state.num_input_tokens_seen
        self._mark_tokens = state.num_input_tokens_seen
        self._mark_time = time.perf_counter()
        self.reporter.on_start(
            total_steps=state.max_steps, trainable_params=self.trainable_params, all_params=self.all_params,
            device=self.device, resumed_from_step=state.global_step,
        )
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            raise RunAlreadyComplete()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # Every rank calls this at every step (the sync is a collective); only rank 0's reporter ever says stop.
        tokens, stop = self.step_sync.step_end(not self.stop_requested and self.reporter.should_stop())
        state.num_input_tokens_seen += tokens
        if stop and not self.stop_requested:
            self.stop_requested = True
            # The Trainer logs and saves this step, then leaves its loop; an evaluation due now would
            # only delay the stop. An attempt that lost its job to a newer one keeps nothing: it stops at once.
            keep = not getattr(self.reporter, "attempt_lost", False)
            control.should_training_stop = True
            control.should_save = keep
            control.should_log = keep
            control.should_evaluate = False

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        logs = logs or {}
        if "train_runtime" in logs:
            self.summary = {key: _number(value) for key, value in logs.items() if isinstance(value, (int, float))}
            return
        metrics: dict[str, float] = {}
        if "loss" in logs:
            for key in _TRAIN_KEYS:
                if logs.get(key) is not None:
                    metrics[key] = _number(logs[key])
            # The loss was just read off the device, so the GPU has caught up: wall time is honest here.
            now = time.perf_counter()
            tokens = state.num_input_tokens_seen
            elapsed = now - self._mark_time
            if elapsed > 0:
                metrics["tokens_per_second"] = (tokens - self._mark_tokens) / elapsed
            metrics["trained_tokens"] = float(tokens)
            self._mark_tokens, self._mark_time = tokens, now
        if logs.get("eval_loss") is not None:
            metrics["eval_loss"] = _number(logs["eval_loss"])
            self.last_eval_step = state.global_step
        for key, name in _PREFERENCE_KEYS.items():
            if logs.get(key) is not None:
                metrics[name] = _number(logs[key])
        if not metrics:
            return
        loss = metrics.get("loss")
        if loss is not None and not math.isfinite(loss) and self.diverged is None:
            # Nothing after a NaN or infinite loss can recover: stop now rather than burn the GPU for the rest,
            # and keep no checkpoint of the broken weights.
            self.diverged = (state.global_step, loss)
            control.should_training_stop = True
            control.should_save = False
        # NaN is not JSON, and a null point leaves a gap in the chart, which is what happened.
        finite = {k: v for k, v in metrics.items() if math.isfinite(v)}
        self.last_metrics.update(finite)
        self.reporter.on_log(step=state.global_step, epoch=float(state.epoch or 0.0), metrics=finite)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        path = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        self.reporter.on_checkpoint(step=state.global_step, path=path)
        if self.on_checkpoint_model is not None and kwargs.get("model") is not None and not self.stop_requested:
            self.on_checkpoint_model(kwargs["model"], state.global_step)
            self.sampled_step = state.global_step
