"""Training data in JSON Lines: OpenAI chat, prompt/completion, Alpaca, `{"text"}` and preference-pair records.

Owns which keys make which record format, the checks on each record's fields (chat roles, ordering, weights)
and the one clear message for a pretty-printed JSON document. Stdlib only: must not import torch,
transformers, peft or `workers`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from typing import BinaryIO

from app.datasets.format_common import Example, Outcome, ProblemCollector, over_example_limit, raw_lines
from app.datasets.preference_format import openai_preference_example, preference_example
from app.datasets.record_fields import json_type, string_field, validate_messages

SUFFIXES = (".jsonl", ".json", ".ndjson")
# Above this size a file is not parsed as one JSON document to explain a bad first line (memory stays bounded).
_WHOLE_JSON_HINT_BYTES = 4 * 1024 * 1024

# Record formats, in the order a record's keys are matched (a record holding both `messages`
# and `prompt` is chat), with the keys named in messages about them.
_RECORD_KEYS: dict[str, tuple[str, ...]] = {
    "openai_preference": ("preferred_output", "non_preferred_output"),
    "preference": ("chosen", "rejected"),
    "chat": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "text": ("text",),
}
_RECORD_LABELS = {"openai_preference": "OpenAI preference", "preference": "prompt/chosen/rejected (messages)",
                  "preference_text": "prompt/chosen/rejected (strings)", "chat": "chat",
                  "prompt_completion": "prompt/completion", "alpaca": "Alpaca", "text": "text"}
# Every preference layout makes a file of format "preference"; string and message pairs do not mix in one file
# (TRL tokenizes a file's pairs one way).
_FILE_FORMATS = {"openai_preference": "preference", "preference_text": "preference"}


def _jsonl_lines(source: BinaryIO, problems: ProblemCollector) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers, decoded one by one so a bad byte names its line."""
    for number, line_offset, raw, length in raw_lines(source):
        if raw is None:
            problems.add(number, None, f"the line is {length:,} bytes; the limit is 10 MB per line")
            continue
        raw = raw.rstrip(b"\r")
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw, line_offset = raw[3:], 3
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.add(number, None, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte offset "
                         f"{line_offset + exc.start}); save the file as UTF-8")
            continue
        if line.strip():
            yield number, line


def parse_jsonl(source: BinaryIO, problems: ProblemCollector, max_examples: int,
                emit: Callable[[Example], None]) -> Outcome:
    """Read JSON Lines, handing each valid example to `emit`; the first recognisable record fixes the format."""
    fmt: str | None = None
    first_line = 0
    examples = 0
    weight_zero = 0
    for number, line in _jsonl_lines(source, problems):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == 1 and _whole_json_hint(source, problems):
                break
            problems.add(number, None, f"not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(record, dict):
            problems.add(number, None, f"expected a JSON object, got {json_type(record)}")
            continue
        kind = _record_format(record)
        if kind is None:
            problems.add(number, None, _unrecognised(record))
            continue
        # The first recognisable record fixes the format, even when its values have problems:
        # a chat file whose first line has a bad role should be told about the role, not that
        # every later line is "in a different format".
        if fmt is None:
            fmt, first_line = kind, number
        elif kind != fmt:
            expected = " and ".join(_RECORD_KEYS[fmt if fmt != "preference_text" else "preference"])
            problems.add(number, None, f"expected a {_RECORD_LABELS[fmt]} record like line {first_line} "
                         f"(keys {expected}), found keys {', '.join(sorted(record)) or 'none'}")
            continue
        example, zeros = _record_example(kind, record, number, problems)
        weight_zero += zeros
        if example is not None:
            if examples >= max_examples:
                problems.add(number, None, over_example_limit(max_examples))
                break
            examples += 1
            emit(example)
    warnings = []
    if weight_zero:
        warnings.append(f"{weight_zero} assistant message{'s carry' if weight_zero != 1 else ' carries'} weight 0; "
                        "Tuneboard does not honour weights yet and trains on every assistant message")
    return Outcome(_FILE_FORMATS.get(fmt, fmt) if fmt else "chat", warnings)


def _whole_json_hint(source: BinaryIO, problems: ProblemCollector) -> bool:
    """A pretty-printed JSON document (not JSON Lines) gets one clear message instead of one per line."""
    position = source.tell()
    size = source.seek(0, io.SEEK_END)
    source.seek(0)
    try:
        if size <= _WHOLE_JSON_HINT_BYTES:
            whole = json.loads(source.read().decode("utf-8-sig"))
        else:
            whole = _looks_like_one_document(source, size)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    finally:
        source.seek(position)
    if isinstance(whole, list):
        problems.add(None, None, "the file is one JSON array; upload JSON Lines instead, one object per line "
                     "(for example: jq -c '.[]' data.json > data.jsonl)")
    else:
        problems.add(None, None, "the file is one JSON document spread over several lines; upload JSON Lines "
                     "instead, one object per line")
    return True


def _looks_like_one_document(source: BinaryIO, size: int) -> list | dict:
    """For a file too big to parse whole: [] or {} when it starts and ends like one JSON array or object."""
    first = source.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    source.seek(max(0, size - 4096))
    last = source.read().rstrip(b" \t\r\n")[-1:]
    if (first, last) == (b"[", b"]"):
        return []
    if (first, last) == (b"{", b"}"):
        return {}
    raise json.JSONDecodeError("not one document", "", 0)


def _record_format(record: dict) -> str | None:
    for kind, keys in _RECORD_KEYS.items():
        if any(key in record for key in keys):
            if kind == "preference" and any(isinstance(record.get(key), str) for key in ("prompt", "chosen")):
                return "preference_text"
            return kind
    return None


def _unrecognised(record: dict) -> str:
    found = ", ".join(sorted(record)) or "none"
    return ("unrecognised record: expected the key messages (chat), prompt and completion, instruction and "
            "output (Alpaca), text, chosen and rejected (preference pairs), or input, preferred_output and "
            f"non_preferred_output (OpenAI preference pairs); found keys {found}")


def _record_example(kind: str, record: dict, line: int, problems: ProblemCollector) -> tuple[Example | None, int]:
    """Validate one record of a known format; returns the example (None when invalid) and weight-0 count."""
    before = problems.total
    if kind == "chat":
        return _chat_example(record, line, problems)
    if kind == "openai_preference":
        return openai_preference_example(record, line, problems), 0
    if kind in ("preference", "preference_text"):
        return preference_example(record, line, problems), 0
    if kind == "prompt_completion":
        prompt = string_field(record, "prompt", line, problems)
        completion = string_field(record, "completion", line, problems)
        if problems.total > before:
            return None, 0
        return Example(prompt=prompt, completion=completion, line=line), 0
    if kind == "alpaca":
        instruction = string_field(record, "instruction", line, problems)
        extra = string_field(record, "input", line, problems, required=False)
        output = string_field(record, "output", line, problems)
        if problems.total > before:
            return None, 0
        user = instruction + ("\n\n" + extra if extra and extra.strip() else "")  # type: ignore[operator]
        messages = ({"role": "user", "content": user}, {"role": "assistant", "content": output})
        return Example(messages=messages, line=line), 0  # type: ignore[arg-type]
    text = string_field(record, "text", line, problems)
    return (Example(text=text, line=line) if text is not None else None), 0


def _chat_example(record: dict, line: int, problems: ProblemCollector) -> tuple[Example | None, int]:
    checked = validate_messages(record.get("messages"), "messages", line, problems)
    if checked is None:
        return None, 0
    out, weight_zero = checked
    last = len(out) - 1
    if not any(m["role"] == "assistant" for m in out):
        problems.add(line, "messages", "messages must include at least one assistant message")
        return None, 0
    if out[last]["role"] != "assistant":
        problems.add(line, f"messages[{last}].role", "the last message must be from the assistant")
        return None, 0
    return Example(messages=tuple(out), line=line), weight_zero
