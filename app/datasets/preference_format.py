"""Preference pairs in JSON Lines, for DPO: OpenAI's layout and the prompt / chosen / rejected one.

OpenAI: `{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}`, the prompt's
messages ending with a user turn and each output a list of assistant messages. The common layout (TRL's, and most
preference sets on the hub): `prompt` as a string with `chosen` and `rejected` strings, or `prompt` as messages
with `chosen` and `rejected` lists of assistant messages; without `prompt`, `chosen` and `rejected` are whole
conversations whose shared beginning, up to its last user turn, is the prompt. Every pair becomes one `Example`
with `chosen` and `rejected` set. Stdlib only: must not import torch, transformers, peft or `workers`.
"""

from __future__ import annotations

from typing import Any

from app.datasets.format_common import Example, ProblemCollector
from app.datasets.record_fields import json_type, string_field, validate_messages

Messages = tuple[dict[str, str], ...]


def openai_preference_example(record: dict, line: int, problems: ProblemCollector) -> Example | None:
    """An OpenAI preference record as an example, or None after reporting what is wrong with it."""
    before = problems.total
    source = record.get("input")
    prompt = None
    if not isinstance(source, dict):
        problems.add(line, "input", f"input must be an object with messages, not {json_type(source)}")
    else:
        prompt = _prompt_messages(source.get("messages"), "input.messages", line, problems)
    chosen = _answer_messages(record.get("preferred_output"), "preferred_output", line, problems)
    rejected = _answer_messages(record.get("non_preferred_output"), "non_preferred_output", line, problems)
    if problems.total > before:
        return None
    return _distinct(Example(messages=prompt, chosen=chosen, rejected=rejected, line=line), line, problems,
                     ("preferred_output", "non_preferred_output"))


def preference_example(record: dict, line: int, problems: ProblemCollector) -> Example | None:
    """A prompt / chosen / rejected record as an example, or None after reporting what is wrong with it."""
    before = problems.total
    if "prompt" not in record:
        return _implicit_prompt(record, line, problems)
    if isinstance(record["prompt"], str):
        prompt = string_field(record, "prompt", line, problems)
        chosen = _answer_string(record, "chosen", line, problems)
        rejected = _answer_string(record, "rejected", line, problems)
        if problems.total > before:
            return None
        example = Example(prompt=prompt, chosen=chosen, rejected=rejected, line=line)
    else:
        messages = _prompt_messages(record["prompt"], "prompt", line, problems)
        chosen_messages = _answer_messages(record.get("chosen"), "chosen", line, problems)
        rejected_messages = _answer_messages(record.get("rejected"), "rejected", line, problems)
        if problems.total > before:
            return None
        example = Example(messages=messages, chosen=chosen_messages, rejected=rejected_messages, line=line)
    return _distinct(example, line, problems, ("chosen", "rejected"))


def _answer_string(record: dict, key: str, line: int, problems: ProblemCollector) -> str | None:
    if isinstance(record.get(key), list):
        problems.add(line, key, f"{key} must be a string after a string prompt; give the prompt as messages "
                                "to pair it with assistant messages")
        return None
    return string_field(record, key, line, problems)


def _prompt_messages(value: Any, where: str, line: int, problems: ProblemCollector) -> Messages | None:
    checked = validate_messages(value, where, line, problems)
    if checked is None:
        return None
    messages, _ = checked
    last = len(messages) - 1
    if messages[last]["role"] != "user":
        problems.add(line, f"{where}[{last}].role",
                     f"{where}[{last}] must be a user message: the prompt ends with the turn both answers reply to")
        return None
    return tuple(messages)


def _answer_messages(value: Any, where: str, line: int, problems: ProblemCollector) -> Messages | None:
    if isinstance(value, str):
        problems.add(line, where, f"{where} must be a list of assistant messages after a prompt of messages, "
                                  "not a string")
        return None
    checked = validate_messages(value, where, line, problems)
    if checked is None:
        return None
    messages, _ = checked
    return tuple(messages) if _all_assistant(messages, where, line, problems, offset=0) else None


def _all_assistant(messages: list[dict[str, str]], where: str, line: int, problems: ProblemCollector, *,
                   offset: int) -> bool:
    wrong = [index for index, message in enumerate(messages) if message["role"] != "assistant"]
    for index in wrong:
        at = f"{where}[{offset + index}]"
        problems.add(line, f"{at}.role", f"{at} must be an assistant message: an answer is what the model says")
    return not wrong


def _implicit_prompt(record: dict, line: int, problems: ProblemCollector) -> Example | None:
    """chosen and rejected as whole conversations: their shared beginning, to its last user turn, is the prompt."""
    if isinstance(record.get("chosen"), str) or isinstance(record.get("rejected"), str):
        problems.add(line, "prompt", "prompt is missing: string answers need the prompt they answer")
        return None
    before = problems.total
    chosen = validate_messages(record.get("chosen"), "chosen", line, problems)
    rejected = validate_messages(record.get("rejected"), "rejected", line, problems)
    if chosen is None or rejected is None or problems.total > before:
        return None
    chosen_messages, rejected_messages = chosen[0], rejected[0]
    shared = 0
    while (shared < min(len(chosen_messages), len(rejected_messages))
           and chosen_messages[shared] == rejected_messages[shared]):
        shared += 1
    while shared > 0 and chosen_messages[shared - 1]["role"] != "user":
        shared -= 1
    if shared == 0:
        problems.add(line, "prompt", "prompt is missing, and chosen and rejected share no beginning that ends with a "
                                     "user message to take as the prompt")
        return None
    for key, messages in (("chosen", chosen_messages), ("rejected", rejected_messages)):
        if len(messages) == shared:
            problems.add(line, key, f"{key} has no answer after the prompt it shares with the other answer")
        else:
            _all_assistant(messages[shared:], key, line, problems, offset=shared)
    if problems.total > before:
        return None
    example = Example(messages=tuple(chosen_messages[:shared]), chosen=tuple(chosen_messages[shared:]),
                      rejected=tuple(rejected_messages[shared:]), line=line)
    return _distinct(example, line, problems, ("chosen", "rejected"))


def _distinct(example: Example, line: int, problems: ProblemCollector, names: tuple[str, str]) -> Example | None:
    if example.chosen == example.rejected:
        problems.add(line, names[1], f"{names[0]} and {names[1]} are the same: a pair teaches nothing unless its "
                                     "answers differ")
        return None
    return example
