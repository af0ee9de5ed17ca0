"""The fields records share across layouts: a value's JSON type named for messages, a required string, and a list of
chat messages with its per-message checks (roles, content, OpenAI's name and weight keys, no tool calls, a system
message only first). Stdlib only: must not import torch, transformers, peft or `workers`.
"""

from __future__ import annotations

from typing import Any

from app.datasets.format_common import ProblemCollector

ROLES = ("system", "user", "assistant")


def json_type(value: Any) -> str:
    """A JSON value's type as a message names it: "an array", "a string", "null"..."""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if value is None:
        return "null"
    return "an object"


def string_field(record: dict, key: str, line: int, problems: ProblemCollector, *, field_name: str | None = None,
                 required: bool = True) -> str | None:
    """The record's non-empty string under `key`, or None after reporting why not."""
    name = field_name or key
    if key not in record or (record[key] is None and not required):
        if required:
            problems.add(line, name, f"{name} is missing")
        return None
    value = record[key]
    if not isinstance(value, str):
        problems.add(line, name, f"{name} must be a string, not {json_type(value)}")
        return None
    if required and not value.strip():
        problems.add(line, name, f"{name} must not be empty")
        return None
    return value


def validate_messages(value: Any, where: str, line: int, problems: ProblemCollector) -> tuple[list[dict[str, str]],
                                                                                          int] | None:
    """A list of {role, content} messages, each checked (field names start with `where`, e.g. "messages"); returns
    the messages and how many carry weight 0, or None after reporting what is wrong."""
    if not isinstance(value, list):
        problems.add(line, where, f"{where} must be a list of {{role, content}} objects, not {json_type(value)}")
        return None
    if not value:
        problems.add(line, where, f"{where} must not be empty")
        return None
    before = problems.total
    out: list[dict[str, str]] = []
    weight_zero = 0
    for index, message in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(message, dict):
            problems.add(line, at, f"{at} must be an object with role and content, not {json_type(message)}")
            continue
        role = message.get("role")
        if role in ("tool", "function") or (role == "assistant" and ("tool_calls" in message
                                                                       or "function_call" in message)):
            key = "role" if role in ("tool", "function") else "tool_calls"
            what = f"role {role!r}" if key == "role" else "tool calls"
            problems.add(line, f"{at}.{key}", f"{at} has {what}: tool calls are not supported yet")
            continue
        if "role" not in message:
            problems.add(line, f"{at}.role", f"{at}.role is missing")
        elif role not in ROLES:
            problems.add(line, f"{at}.role", f"{at}.role must be one of {', '.join(ROLES)}")
        content = string_field(message, "content", line, problems, field_name=f"{at}.content")
        # OpenAI's format allows these two keys; anything else is ignored rather than refused.
        if "name" in message and not isinstance(message["name"], str):
            problems.add(line, f"{at}.name", f"{at}.name must be a string")
        if "weight" in message:
            weight = message["weight"]
            if isinstance(weight, bool) or weight not in (0, 1):
                problems.add(line, f"{at}.weight", f"{at}.weight must be 0 or 1")
            elif role != "assistant":
                problems.add(line, f"{at}.weight", f"{at}.weight is only allowed on assistant messages")
            elif weight == 0:
                weight_zero += 1
        if role in ROLES and content is not None:
            out.append({"role": role, "content": content})
    if problems.total > before:
        return None
    for index, message in enumerate(out):
        if message["role"] == "system" and index > 0:
            problems.add(line, f"{where}[{index}].role",
                         f"{where}[{index}] is a system message; a system message may only come first")
    return (out, weight_zero) if problems.total == before else None
