"""A held-out example as a question with a known answer: what the model is given, and the reference it should give.

The worker's held-out answers and the playground's held-out rows read examples through this one function, so the
prompt a run was judged on is the prompt a user picks in the playground. A chat example is asked up to its last
user turn and answered by its last assistant turn; a prompt/completion example is its prompt and completion; plain
text has no question and is skipped. Must not import torch or `workers`.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.datasets.format_common import Example


@dataclass(frozen=True, slots=True)
class HeldOutTurn:
    """The conversation before the reference answer (chat), or the raw prompt (completion), and that answer."""

    messages: tuple[dict[str, str], ...] | None
    prompt: str | None
    reference: str
    line: int

    def as_json(self) -> dict:
        """The question as stored and returned by the API: {"messages": [...]} or {"prompt": "..."}."""
        return {"messages": [dict(m) for m in self.messages]} if self.messages is not None else {"prompt": self.prompt}


def held_out_turn(example: Example) -> HeldOutTurn | None:
    """The example as a question and its reference answer, or None when it holds no question (a preference pair:
    its prompt, answered for reference by its chosen answer)."""
    if example.chosen is not None:
        chosen = example.chosen
        reference = chosen if isinstance(chosen, str) else "\n\n".join(m["content"] for m in chosen)
        return HeldOutTurn(example.messages, example.prompt if example.messages is None else None, reference,
                           example.line)
    if example.messages:
        messages = list(example.messages)
        if len(messages) < 2 or messages[-1]["role"] != "assistant" or messages[-2]["role"] != "user":
            return None
        return HeldOutTurn(tuple(messages[:-1]), None, messages[-1]["content"], example.line)
    if example.prompt is not None:
        return HeldOutTurn(None, example.prompt, example.completion or "", example.line)
    return None


def held_out_turns(examples: list[Example] | None, limit: int) -> list[HeldOutTurn]:
    """The first `limit` examples that hold a question, in file order."""
    found: list[HeldOutTurn] = []
    for example in examples or []:
        if len(found) >= limit:
            break
        if (turn := held_out_turn(example)) is not None:
            found.append(turn)
    return found
