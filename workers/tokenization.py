"""Turning dataset examples into token ids and loss labels, and padding them into batches.

Owns the three example formats (chat messages, prompt + completion, plain text), which tokens carry
loss (`loss_on="assistant"`: only what the model should learn to produce), truncation to the
sequence length, and the padding collator. Torch is imported only by the collator.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from workers.training.contract import TrainingFailure

IGNORE_INDEX = -100  # label value the loss skips (transformers / PyTorch convention)
NUM_TOKENS_KEY = "num_tokens"  # batch entry with the batch's non-padding token count, as a plain int

Span = tuple[int, int]


@dataclass
class TokenizedData:
    """Examples ready for the Trainer, and what happened on the way."""

    features: list[dict[str, list[int]]]
    examples: int  # examples given
    truncated: int  # examples cut to the sequence length
    dropped: int  # examples left with no token to learn from
    kinds: dict[str, int] = field(default_factory=dict)  # examples per format

    @property
    def tokens(self) -> int:
        return sum(len(f["input_ids"]) for f in self.features)


def example_kind(example: Any) -> str:
    """Classify an example as "chat", "prompt_completion" or "text"."""
    if getattr(example, "messages", None):
        return "chat"
    if getattr(example, "prompt", None) is not None and getattr(example, "completion", None) is not None:
        return "prompt_completion"
    if getattr(example, "text", None) is not None:
        return "text"
    raise TrainingFailure("dataset_problem", "an example has neither messages, prompt + completion, nor text")


def _render(tokenizer: Any, messages: Sequence[dict], *, generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=generation_prompt
    )


def assistant_char_spans(tokenizer: Any, messages: Sequence[dict], full: str) -> list[Span]:
    """Character spans of `full` (the rendered conversation) that the assistant turns produce.

    A turn's span runs from the end of the conversation rendered up to it with the generation prompt
    (what the model is given at inference) to the end of the conversation rendered through it (so it
    includes the end-of-turn token the model must learn to emit). This needs no generation markers
    in the template. Where a template renders earlier turns differently once later ones exist, the
    turn's content is searched for instead.
    """
    spans: list[Span] = []
    cursor = 0
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        start = end = None
        try:
            through = _render(tokenizer, messages[: index + 1])
            if full.startswith(through):
                end = len(through)
            if index > 0:
                before = _render(tokenizer, messages[:index], generation_prompt=True)
                plain = _render(tokenizer, messages[:index])
                # A template without a generation prompt renders both alike; the role header would then
                # land inside the span, so fall back to the content's position below.
                if before != plain and full.startswith(before) and len(before) >= cursor:
                    start = len(before)
        except Exception:  # templates may refuse partial conversations; search instead
            pass
        content = message.get("content") or ""
        if start is None:
            found = full.find(content, cursor) if content else -1
            if found < 0:
                continue  # cannot place this turn: train on nothing rather than on the wrong tokens
            start = found
        if end is None or end <= start:
            end = start + len(content)
            eos = getattr(tokenizer, "eos_token", None)
            if eos and full.startswith(eos, end):
                end += len(eos)
        spans.append((start, end))
        cursor = end
    return spans


def _token_spans_by_length(tokenizer: Any, messages: Sequence[dict]) -> list[Span]:
    # Slow tokenizers give no offsets: diff the token counts of rendered prefixes instead.
    def length(prefix: Sequence[dict], generation_prompt: bool) -> int:
        if not prefix:
            return 0
        text = _render(tokenizer, prefix, generation_prompt=generation_prompt)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return [
        (length(messages[:i], True), length(messages[: i + 1], False))
        for i, m in enumerate(messages)
        if m.get("role") == "assistant"
    ]


def _labels_from_char_spans(input_ids: list[int], offsets: Iterable[Span], spans: list[Span]) -> list[int]:
    labels = [IGNORE_INDEX] * len(input_ids)
    span_index = 0
    for position, (token_start, _token_end) in enumerate(offsets):
        while span_index < len(spans) and token_start >= spans[span_index][1]:
            span_index += 1
        if span_index == len(spans):
            break
        # A token belongs to the span when it starts inside it; a token merged across the span's
        # start is left out rather than teaching the prompt.
        if token_start >= spans[span_index][0]:
            labels[position] = input_ids[position]
    return labels


def tokenize_chat(tokenizer: Any, messages: Sequence[dict], *, loss_on: str):
    """Render a conversation with the chat template; return (input_ids, labels)."""
    if not getattr(tokenizer, "chat_template", None):
        raise TrainingFailure(
            "dataset_problem",
            "the dataset is in chat format but the base model's tokenizer has no chat template; "
            "use prompt/completion or text examples, or an instruct model",
        )
    messages = [dict(m) for m in messages]
    full = _render(tokenizer, messages)
    if tokenizer.is_fast:
        encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        input_ids = list(encoded["input_ids"])
        if loss_on == "all":
            return input_ids, list(input_ids)
        spans = assistant_char_spans(tokenizer, messages, full)
        return input_ids, _labels_from_char_spans(input_ids, encoded["offset_mapping"], spans)
    input_ids = list(tokenizer(full, add_special_tokens=False)["input_ids"])
    if loss_on == "all":
        return input_ids, list(input_ids)
    labels = [IGNORE_INDEX] * len(input_ids)
    for start, end in _token_spans_by_length(tokenizer, messages):
        labels[start:end] = input_ids[start:end]
    return input_ids, labels


def tokenize_prompt_completion(tokenizer: Any, prompt: str, completion: str, *, loss_on: str):
    """Prompt then completion then EOS; with loss_on="assistant" only the completion carries loss."""
    # Tokenised separately so the boundary is exact (TRL does the same); BOS, if any, goes on the prompt.
    prompt_ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    completion_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        completion_ids.append(tokenizer.eos_token_id)
    prompt_labels = list(prompt_ids) if loss_on == "all" else [IGNORE_INDEX] * len(prompt_ids)
    return prompt_ids + completion_ids, prompt_labels + completion_ids


def tokenize_text(tokenizer: Any, text: str):
    """Plain text, ending in EOS; every token carries loss."""
    input_ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and (not input_ids or input_ids[-1] != eos):
        input_ids.append(eos)
    return input_ids, list(input_ids)


def tokenize_example(example: Any, tokenizer: Any, *, loss_on: str) -> tuple[list[int], list[int]]:
    """Return (input_ids, labels) of one example, untruncated."""
    kind = example_kind(example)
    if kind == "chat":
        return tokenize_chat(tokenizer, example.messages, loss_on=loss_on)
    if kind == "prompt_completion":
        return tokenize_prompt_completion(tokenizer, example.prompt, example.completion, loss_on=loss_on)
    return tokenize_text(tokenizer, example.text)


def tokenize_examples(examples: Iterable[Any], tokenizer: Any, *, sequence_length: int, loss_on: str) -> TokenizedData:
    """Tokenise, truncate and filter a list of examples for training or evaluation."""
    features: list[dict[str, list[int]]] = []
    kinds: dict[str, int] = {}
    count = truncated = dropped = 0
    for example in examples:
        count += 1
        kind = example_kind(example)
        kinds[kind] = kinds.get(kind, 0) + 1
        input_ids, labels = tokenize_example(example, tokenizer, loss_on=loss_on)
        if len(input_ids) > sequence_length:
            truncated += 1
            input_ids, labels = input_ids[:sequence_length], labels[:sequence_length]
        # The model predicts token i+1 from position i, so label 0 never counts: at least one later
        # label must be real for the example to teach anything.
        if not any(label != IGNORE_INDEX for label in labels[1:]):
            dropped += 1
            continue
        features.append({"input_ids": input_ids, "labels": labels})
    return TokenizedData(features=features, examples=count, truncated=truncated, dropped=dropped, kinds=kinds)


class PaddingCollator:
    """Pads a list of features to the longest in the batch (dynamic padding) and counts real tokens."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        lengths = [len(f["input_ids"]) for f in features]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, (feature, length) in enumerate(zip(features, lengths, strict=True)):
            input_ids[row, :length] = torch.tensor(feature["input_ids"], dtype=torch.long)
            labels[row, :length] = torch.tensor(feature["labels"], dtype=torch.long)
            attention_mask[row, :length] = 1
        # The count rides along as a plain int so throughput needs no device sync; the trainer pops it.
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                NUM_TOKENS_KEY: sum(lengths)}
