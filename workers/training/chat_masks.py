"""Which tokens of a conversation the assistant says: the one part of supervised tokenization TRL does not do for
every chat template, kept here.

TRL's SFTTrainer masks assistant turns only through `{% generation %}` markers in the chat template, and patches in
markers for a fixed list of templates; most shipped templates (SmolLM2's, Mistral's, Llama 2's, many fine-tunes')
have none. This finds each assistant turn by rendering the conversation up to it, so any template works, and hands
the conversation to TRL already tokenized with an `assistant_masks` column (TRL's own processed layout), from which
TRL builds the labels. Imports no ML library: the tokenizer is passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from workers.training.contract import TrainingFailure

Span = tuple[int, int]


def _render(tokenizer: Any, messages: Sequence[dict], *, generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)


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


def _mask_from_char_spans(offsets: Iterable[Span], spans: list[Span], size: int) -> list[int]:
    mask = [0] * size
    span_index = 0
    for position, (token_start, _token_end) in enumerate(offsets):
        while span_index < len(spans) and token_start >= spans[span_index][1]:
            span_index += 1
        if span_index == len(spans):
            break
        # A token belongs to the span when it starts inside it; a token merged across the span's
        # start is left out rather than teaching the prompt.
        if token_start >= spans[span_index][0]:
            mask[position] = 1
    return mask


def require_chat_template(tokenizer: Any) -> None:
    """Refuse chat data for a tokenizer that cannot render it."""
    if not getattr(tokenizer, "chat_template", None):
        raise TrainingFailure(
            "dataset_problem",
            "the dataset is in chat format but the base model's tokenizer has no chat template; "
            "use prompt/completion or text examples, or an instruct model",
        )


def tokenize_with_assistant_mask(tokenizer: Any, messages: Sequence[dict]) -> dict[str, list[int]]:
    """A conversation rendered with its chat template and tokenized: `input_ids`, and `assistant_masks` (1 on the
    tokens of every assistant turn, its end-of-turn token included)."""
    require_chat_template(tokenizer)
    messages = [dict(m) for m in messages]
    full = _render(tokenizer, messages)
    if tokenizer.is_fast:
        encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        input_ids = list(encoded["input_ids"])
        spans = assistant_char_spans(tokenizer, messages, full)
        return {"input_ids": input_ids,
                "assistant_masks": _mask_from_char_spans(encoded["offset_mapping"], spans, len(input_ids))}
    input_ids = list(tokenizer(full, add_special_tokens=False)["input_ids"])
    mask = [0] * len(input_ids)
    for start, end in _token_spans_by_length(tokenizer, messages):
        mask[start:end] = [1] * len(mask[start:end])
    return {"input_ids": input_ids, "assistant_masks": mask}
