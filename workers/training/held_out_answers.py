"""Held-out prompts answered by the base model and by the adapter, for the job page's side-by-side reading.

A loss tells whether the adapter got closer to the references; reading its answers tells how. At the end of a run
(and at each checkpoint when asked) up to `held_out_samples` held-out prompts are answered greedily, in batches,
with the adapter and with the adapters disabled (the base), on the model the Trainer holds: no second copy of the
weights. The prompts are the ones training would render (`app.datasets.held_out`): the chat template up to the
assistant's turn, or the raw prompt. The base's answers do not change during a run, so they are made once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

from app.datasets.format_common import Example
from app.datasets.held_out import HeldOutTurn, held_out_turns

BATCH = 8  # prompts generated together: a CPU core or a GPU is far better used by a batch than by one prompt


def prompt_token_ids(tokenizer: Any, turn: HeldOutTurn) -> list[int]:
    """The tokens the model reads before answering, rendered as training rendered the example."""
    if turn.messages is not None:
        text = tokenizer.apply_chat_template(list(turn.messages), tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(turn.prompt, add_special_tokens=True)["input_ids"])


def _left_padded(prompts: list[list[int]], pad_id: int, device: Any) -> dict[str, Any]:
    import torch

    width = max(len(ids) for ids in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids):] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}


def generate_answers(model: Any, tokenizer: Any, prompts: list[list[int]], *, max_new_tokens: int,
                     use_adapter: bool, should_stop: Callable[[], bool] = lambda: False) -> list[str] | None:
    """Greedy answers to tokenised prompts, or None when `should_stop` ended the generation early."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopWhenAsked(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), should_stop(), dtype=torch.bool, device=input_ids.device)

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    answers: list[str] = []
    for start in range(0, len(prompts), BATCH):
        batch = prompts[start:start + BATCH]
        inputs = _left_padded(batch, pad_id, device)
        with torch.inference_mode(), (nullcontext() if use_adapter else model.disable_adapter()):
            # Greedy: the model's own sampling defaults (generation_config) must not apply.
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                    top_p=None, top_k=None, pad_token_id=pad_id,
                                    stopping_criteria=StoppingCriteriaList([StopWhenAsked()]))
        if should_stop():
            return None
        width = inputs["input_ids"].shape[1]
        answers.extend(tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in output)
    return answers


class HeldOutAnswers:
    """Answers a run's held-out prompts with its model; keeps the base's answers for the next step."""

    def __init__(self, examples: list[Example] | None, tokenizer: Any, *, limit: int, max_new_tokens: int,
                 sequence_length: int):
        self.turns = held_out_turns(examples, limit) if limit > 0 else []
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        # The question's end is what the answer follows: a prompt longer than training read keeps its last tokens.
        self.prompts = [prompt_token_ids(tokenizer, turn)[-sequence_length:] for turn in self.turns]
        self.base_answers: list[str] | None = None

    def __bool__(self) -> bool:
        return bool(self.turns)

    def answer(self, model: Any, should_stop: Callable[[], bool]) -> tuple[list[dict], float] | None:
        """(one row per prompt: question, reference, base and adapter answers; seconds spent), or None when
        stopped. Puts the model back in the mode it was found in."""
        started = time.perf_counter()
        was_training, used_cache = model.training, getattr(model.config, "use_cache", None)
        model.eval()
        model.config.use_cache = True  # off while training; generation wants it
        try:
            options = {"max_new_tokens": self.max_new_tokens, "should_stop": should_stop}
            if self.base_answers is None:
                self.base_answers = generate_answers(model, self.tokenizer, self.prompts, use_adapter=False, **options)
            adapter_answers = generate_answers(model, self.tokenizer, self.prompts, use_adapter=True, **options)
        finally:
            model.config.use_cache = used_cache
            model.train(was_training)
        if self.base_answers is None or adapter_answers is None:
            return None
        rows = [{"position": position, "line": turn.line, "prompt": turn.as_json(), "reference": turn.reference,
                 "base_answer": base, "adapter_answer": adapted}
                for position, (turn, base, adapted) in enumerate(zip(self.turns, self.base_answers, adapter_answers,
                                                                     strict=True))]
        return rows, time.perf_counter() - started
