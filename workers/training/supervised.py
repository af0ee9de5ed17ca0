"""Supervised fine-tuning through TRL's SFTTrainer: the examples in TRL's dataset layouts, TRL's preparation, and
the trainer with Tuneboard's token and compute counts.

TRL tokenizes plain text (EOS appended) and prompt/completion pairs (loss on the completion), builds the labels
from its masks, truncates to the sequence length, drops what is left with no token to learn from, and pads the
batches. Conversations with loss on the assistant turns come to it tokenized, with an assistant mask, by
`chat_masks` (TRL needs `{% generation %}` markers in the template for that; see there). The data card's preview
calls `prepare_examples` too, so it shows what the trainer trains on (tests/workers/test_supervised_data.py
compares them).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import datasets
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from app.datasets.format_common import Example
from app.estimator.job_config import TrainingSettings
from workers.training.callbacks import NUM_TOKENS_KEY, CountedTraining
from workers.training.chat_masks import require_chat_template, tokenize_with_assistant_mask
from workers.training.contract import TrainingFailure

IGNORE_INDEX = -100  # the label the loss skips (transformers' and TRL's convention)

# The worker's log is for the job's events, not for a progress bar per dataset pass.
datasets.disable_progress_bars()


def example_kind(example: Example) -> str:
    """Classify an example as "chat", "prompt_completion" or "text"."""
    if example.messages:
        return "chat"
    if example.prompt is not None and example.completion is not None:
        return "prompt_completion"
    if example.text is not None:
        return "text"
    raise TrainingFailure("dataset_problem", "an example has neither messages, prompt + completion, nor text")


def _row(example: Example, kind: str, tokenizer: Any, loss_on: str) -> dict[str, Any]:
    """One example in the layout TRL prepares: raw text or pair, or (assistant-only chat) already tokenized."""
    if kind == "chat":
        require_chat_template(tokenizer)
        if loss_on == "assistant":
            return tokenize_with_assistant_mask(tokenizer, example.messages)
        return {"messages": [dict(m) for m in example.messages]}
    if kind == "prompt_completion":
        return {"prompt": example.prompt, "completion": example.completion}
    return {"text": example.text}


def _trl_prepared(rows: list[dict[str, Any]], tokenizer: Any, *, completion_only_loss: bool) -> Any:
    """`rows` through SFTTrainer's own dataset preparation, untruncated: input_ids and labels. That method reads
    nothing of the trainer but its tokenizer and two settings, given here."""
    trainer = SimpleNamespace(_tokenizer=tokenizer, completion_only_loss=completion_only_loss, chat_template=None)
    options = SimpleNamespace(dataset_num_proc=None, dataset_text_field="text", assistant_only_loss=False,
                              max_length=None, truncation_mode="keep_start", shuffle_dataset=False)
    prepared = SFTTrainer._prepare_dataset(trainer, datasets.Dataset.from_list(rows), tokenizer, options, False,
                                           None, "examples")
    return prepared.select_columns(["order", "input_ids", "labels"])


@dataclass
class SupervisedData:
    """Examples tokenized by TRL (untruncated: the trainer cuts them to the sequence length), and what the cut
    will do to them."""

    dataset: Any  # datasets.Dataset of input_ids and labels, in the examples' order
    examples: int
    truncated: int  # longer than the sequence length
    dropped: int  # left with no token to learn from once cut
    tokens: int  # tokens trained on, once cut
    kinds: dict[str, int] = field(default_factory=dict)

    @property
    def kept(self) -> int:
        return self.examples - self.dropped


def prepare_examples(examples: list[Example], tokenizer: Any, *, sequence_length: int | None,
                     loss_on: str) -> SupervisedData:
    """Tokenize `examples` as SFTTrainer trains on them, and count what a cut to `sequence_length` truncates and
    drops (by TRL's rule: an example whose labels are all -100 once cut is dropped)."""
    kinds = [example_kind(e) for e in examples]
    groups: dict[str, list[dict[str, Any]]] = {}
    for order, (example, kind) in enumerate(zip(examples, kinds, strict=True)):
        groups.setdefault(kind, []).append(_row(example, kind, tokenizer, loss_on) | {"order": order})
    # A file has one format, but a run's data may join two (prompt/completion and text): TRL prepares a dataset of
    # one layout, so each kind goes through it alone, and the examples keep their order.
    prepared = [_trl_prepared(rows, tokenizer, completion_only_loss=loss_on == "assistant")
                for rows in groups.values()]
    dataset = datasets.concatenate_datasets(prepared).sort("order").remove_columns("order") if prepared else \
        datasets.Dataset.from_dict({"input_ids": [], "labels": []})
    cut = sequence_length or 1 << 62
    truncated = dropped = tokens = 0
    for labels in dataset["labels"]:
        truncated += len(labels) > cut
        if all(label == IGNORE_INDEX for label in labels[:cut]):
            dropped += 1
        else:
            tokens += min(len(labels), cut)
    return SupervisedData(dataset, len(examples), truncated, dropped, tokens, dict(Counter(kinds)))


def sft_settings(training: TrainingSettings) -> dict[str, Any]:
    """SFTConfig's own fields for this run (the rest are the TrainingArguments every run gets)."""
    return {"max_length": training.sequence_length, "truncation_mode": "keep_start", "packing": False,
            "dataset_num_proc": None}


class CountingCollator(DataCollatorForLanguageModeling):
    """TRL's language-modeling collator, plus the batch's real (non-padding) token count, counted on the CPU."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        batch[NUM_TOKENS_KEY] = sum(len(e["input_ids"]) for e in examples)
        return batch


class TuneboardSFTTrainer(CountedTraining, SFTTrainer):
    """TRL's SFTTrainer with Tuneboard's token and compute counts."""


def sft_trainer(model: Any, tokenizer: Any, args: SFTConfig, train: SupervisedData, evaluation: SupervisedData | None,
                callbacks: list[Any], *, pad_to_multiple_of: int | None) -> TuneboardSFTTrainer:
    """The SFTTrainer of a run over prepared examples (TRL cuts them to the sequence length and drops the empty)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    collator = CountingCollator(pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=pad_to_multiple_of)
    return TuneboardSFTTrainer(model=model, args=args, data_collator=collator, train_dataset=train.dataset,
                               eval_dataset=evaluation.dataset if evaluation and evaluation.kept else None,
                               processing_class=tokenizer, callbacks=callbacks)
