"""DPO on preference pairs through TRL's DPOTrainer: the pairs as TRL's dataset, its config from the run's
settings, and the trainer with Tuneboard's token and compute counts.

TRL tokenizes and collates the pairs itself (the prompt rendered with the generation prompt, each answer after
it, loss on the answers only). The reference is the policy with its adapter swapped for TRL's frozen "ref" copy
of it, taken before the first step: a fresh adapter leaves the base's outputs unchanged, and an adapter continued
from a supervised run is its own reference, so no second copy of the base weights is loaded.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import datasets
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from app.datasets.format_common import Example
from app.estimator.job_config import DpoSettings, TrainingSettings
from workers.training.callbacks import NUM_TOKENS_KEY, CountedTraining

# The worker's log is for the job's events, not for a progress bar per dataset pass.
datasets.disable_progress_bars()


def preference_rows(examples: list[Example], *, lines: bool = False) -> list[dict[str, Any]]:
    """The pairs in TRL's layout: conversational (lists of messages) or plain strings (and each one's file line)."""
    rows = []
    for example in examples:
        if example.messages is not None:
            row = {"prompt": [dict(m) for m in example.messages], "chosen": [dict(m) for m in example.chosen],
                   "rejected": [dict(m) for m in example.rejected]}
        else:
            row = {"prompt": example.prompt, "chosen": example.chosen, "rejected": example.rejected}
        rows.append(row | ({"line": example.line} if lines else {}))
    return rows


def preference_dataset(examples: list[Example], *, lines: bool = False) -> Any:
    """The pairs as a `datasets.Dataset`, which DPOTrainer tokenizes."""
    from datasets import Dataset

    return Dataset.from_list(preference_rows(examples, lines=lines))


def tokenize_pairs(examples: list[Example], tokenizer: Any, *, max_length: int | None = None) -> Any:
    """The pairs tokenized by DPOTrainer's own preparation (its `_prepare_dataset`, which reads nothing of the
    trainer but its tokenizer): prompt_ids, chosen_ids and rejected_ids, and each pair's line. The data card shows
    these, so the preview is what the trainer trains on (tests/workers/test_dpo_training.py compares them)."""
    options = SimpleNamespace(dataset_num_proc=None, max_length=max_length, truncation_mode="keep_start")
    return DPOTrainer._prepare_dataset(SimpleNamespace(_tokenizer=tokenizer), preference_dataset(examples, lines=True),
                                       tokenizer, options, "preview")


def dpo_settings(method: DpoSettings, training: TrainingSettings) -> dict[str, Any]:
    """DPOConfig's own fields for this run (the rest are the TrainingArguments every run gets)."""
    # A pair has no labels column: TRL computes its loss from the completion mask.
    return {"beta": method.beta, "loss_type": [method.loss_type], "max_length": training.sequence_length,
            "precompute_ref_log_probs": False, "label_names": None}


class CountingPreferenceCollator(DataCollatorForPreference):
    """TRL's preference collator, plus the batch's real (non-padding) token count, counted on the CPU."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        cap = self.max_length or 1 << 62
        batch[NUM_TOKENS_KEY] = sum(min(len(e["prompt_ids"]) + len(e[answer]), cap)
                                    for e in examples for answer in ("chosen_ids", "rejected_ids"))
        return batch


class TuneboardDPOTrainer(CountedTraining, DPOTrainer):
    """TRL's DPOTrainer with Tuneboard's token and compute counts (a batch of B pairs is 2B sequences)."""


def dpo_trainer(model: Any, tokenizer: Any, args: DPOConfig, train: list[Example], evaluation: list[Example] | None,
                callbacks: list[Any], *, pad_to_multiple_of: int | None) -> TuneboardDPOTrainer:
    """The DPOTrainer of a run, its datasets tokenized by TRL."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    collator = CountingPreferenceCollator(pad_token_id=tokenizer.pad_token_id, max_length=args.max_length,
                                          truncation_mode=args.truncation_mode, pad_to_multiple_of=pad_to_multiple_of)
    return TuneboardDPOTrainer(model=model, ref_model=None, args=args, data_collator=collator,
                               train_dataset=preference_dataset(train),
                               eval_dataset=preference_dataset(evaluation) if evaluation else None,
                               processing_class=tokenizer, callbacks=callbacks)
