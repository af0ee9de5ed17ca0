"""One chat reply from the engine's loaded base, with or without its active adapter, streamed as it is made.

The conversation goes through the base model's chat template, as training rendered it. Text reaches `on_text` in
pieces transformers' TextStreamer finalises (whole words, so a multi-byte character is never cut); stop sequences
are held back until they are ruled out, so a reply never shows the stop sequence or anything after it, as
OpenAI's API behaves. `should_stop` is asked between tokens: a client that left ends the generation there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from workers.inference.engine import InferenceEngine


class InferenceFailure(Exception):
    """A request this model cannot answer; `code` classifies it, the message says why in plain words."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True, slots=True)
class GenerationSettings:
    max_new_tokens: int = 256
    min_new_tokens: int = 0  # the end of turn is not allowed before this many (vLLM's `min_tokens`)
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GenerationResult:
    text: str
    finish_reason: str  # "stop" (end of turn or a stop sequence), "length", or "cancelled"
    prompt_tokens: int
    completion_tokens: int
    first_token_seconds: float | None
    seconds: float

    @property
    def tokens_per_second(self) -> float | None:
        """Completion tokens per second of generating them (after the prompt's own pass)."""
        span = self.seconds - (self.first_token_seconds or 0.0)
        return (self.completion_tokens - 1) / span if self.completion_tokens > 1 and span > 0 else None


class _StopSequences:
    """Passes text on, holding back what could still become a stop sequence; `hit` once one appeared."""

    def __init__(self, stops: Sequence[str], on_text: Callable[[str], None]):
        self.stops = [stop for stop in stops if stop]
        self.on_text = on_text
        self.pending = ""
        self.sent: list[str] = []
        self.hit = False

    def _emit(self, text: str) -> None:
        if text:
            self.sent.append(text)
            self.on_text(text)

    def feed(self, text: str) -> None:
        if self.hit:
            return
        self.pending += text
        found = [index for stop in self.stops if (index := self.pending.find(stop)) >= 0]
        if found:
            self.hit = True
            self._emit(self.pending[: min(found)])
            self.pending = ""
            return
        keep = max((length for stop in self.stops for length in range(len(stop) - 1, 0, -1)
                    if self.pending.endswith(stop[:length])), default=0)
        self._emit(self.pending[: len(self.pending) - keep])
        self.pending = self.pending[len(self.pending) - keep:]

    def finish(self) -> None:
        if not self.hit:
            self._emit(self.pending)
        self.pending = ""


def _streamer(tokenizer: Any, sink: _StopSequences, first_token: list[float], started: float) -> Any:
    from transformers import TextStreamer

    class ReplyStreamer(TextStreamer):
        def put(self, value):  # the prompt comes first (skipped), then one token per step
            if not self.next_tokens_are_prompt and not first_token:
                first_token.append(time.perf_counter() - started)
            super().put(value)

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            sink.feed(text)

    return ReplyStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def _stopping(should_stop: Callable[[], bool], sink: _StopSequences) -> Any:
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopWhenAsked(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            import torch

            done = sink.hit or should_stop()
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopWhenAsked()])


def prompt_ids(tokenizer: Any, messages: Sequence[dict]) -> Any:
    """The conversation rendered with the base model's chat template, ready for the assistant's turn."""
    if not getattr(tokenizer, "chat_template", None):
        raise InferenceFailure("no_chat_template", "the base model's tokenizer has no chat template, so it cannot "
                                                  "hold a conversation; use an instruct (chat) model")
    return tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, return_tensors="pt",
                                         return_dict=True)


def context_length(model: Any) -> int | None:
    """How many positions the model attends over, when its config says."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(value := getattr(config, name, None), int) and value > 0:
            return value
    return None


def generate(engine: InferenceEngine, messages: Sequence[dict], settings: GenerationSettings, *, use_adapter: bool,
             on_text: Callable[[str], None], should_stop: Callable[[], bool] = lambda: False) -> GenerationResult:
    """Generate the assistant's next turn; `use_adapter=False` answers as the base alone."""
    import torch

    started = time.perf_counter()
    model, tokenizer = engine.model, engine.tokenizer
    inputs = {name: tensor.to(model.device) for name, tensor in prompt_ids(tokenizer, messages).items()}
    prompt_tokens = int(inputs["input_ids"].shape[1])
    max_new = settings.max_new_tokens
    if (limit := context_length(model)) is not None:
        if prompt_tokens >= limit:
            raise InferenceFailure("context_length_exceeded", f"the conversation is {prompt_tokens} tokens long; "
                                                             f"the model reads at most {limit}")
        max_new = min(max_new, limit - prompt_tokens)
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    sink = _StopSequences(settings.stop, on_text)
    first_token: list[float] = []
    sampling = settings.temperature > 0
    options: dict[str, Any] = {
        "max_new_tokens": max_new, "do_sample": sampling,
        "streamer": _streamer(tokenizer, sink, first_token, started),
        "stopping_criteria": _stopping(should_stop, sink),
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    }
    if settings.min_new_tokens:
        options["min_new_tokens"] = min(settings.min_new_tokens, max_new)
    if sampling:
        options.update(temperature=settings.temperature, top_p=settings.top_p)
    else:  # greedy: the model's own sampling defaults (generation_config) must not apply
        options.update(temperature=None, top_p=None, top_k=None)
    from peft import PeftModel

    adapters_off = model.disable_adapter() if isinstance(model, PeftModel) and not use_adapter else nullcontext()
    with torch.inference_mode(), adapters_off:
        output = model.generate(**inputs, **options)
    sink.finish()
    completion = output[0][prompt_tokens:]
    completion_tokens = int(completion.shape[0])
    ended_turn = completion_tokens > 0 and int(completion[-1]) in _end_ids(model, tokenizer)
    if sink.hit or ended_turn:
        reason = "stop"
    elif should_stop():
        reason = "cancelled"
    else:
        reason = "length" if completion_tokens >= max_new else "stop"
    return GenerationResult("".join(sink.sent), reason, prompt_tokens, completion_tokens,
                            first_token[0] if first_token else None, time.perf_counter() - started)


def _end_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    found = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    return found
