"""Training data: the upload validator and normaliser for JSONL, CSV and plain-text datasets.

Owns the accepted input formats (OpenAI chat, prompt/completion, Alpaca and `{"text"}` JSON Lines;
CSV with a column mapping; blank-line separated plain text), the problems reported about a file
(each naming its line and field), the normalised `Example` that the trainer consumes, and the
deterministic validation split. The web app validates uploads with it (`summarise_file`: line by line
from disk, keeping counts, not examples) and the worker reads stored files with it (`parse_dataset`), both
through the same parsers, so they always agree on what a file holds.

Stdlib and pydantic only: must not import torch, transformers, peft or `workers`.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from pydantic import BaseModel

MAX_LINE_BYTES = 10 * 1024 * 1024
# Above this size a file is not parsed as one JSON document to explain a bad first line (memory stays bounded).
_WHOLE_JSON_HINT_BYTES = 4 * 1024 * 1024
ROLES = ("system", "user", "assistant")
DatasetFormat = Literal["chat", "prompt_completion", "alpaca", "text", "csv"]

_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
_CSV_SUFFIXES = (".csv",)
_TEXT_SUFFIXES = (".txt", ".text")

# JSONL record formats, in the order a record's keys are matched (a record holding both `messages`
# and `prompt` is chat), with the keys named in messages about them.
_RECORD_KEYS: dict[str, tuple[str, ...]] = {
    "chat": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "text": ("text",),
}
_FIRST_KEY = re.compile(r'^\s*\{\s*"(messages|prompt|completion|instruction|output|text)"\s*:')
_RECORD_LABELS = {"chat": "chat", "prompt_completion": "prompt/completion", "alpaca": "Alpaca", "text": "text"}

# CSV column groups our field names can be mapped to, as (required, optional); the first fitting a header wins.
_CSV_GROUPS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("user", "assistant"), ("system",)),
    (("instruction", "output"), ("input",)),
    (("prompt", "completion"), ()),
    (("text",), ()),
)
_CSV_FIELDS = tuple(name for required, optional in _CSV_GROUPS for name in required + optional)


class DatasetProblem(BaseModel):
    """One thing wrong with a dataset, located as precisely as the format allows."""

    line: int | None = None
    field: str | None = None
    message: str


class DatasetInvalid(ValueError):
    """The dataset cannot be used; `problems` holds the first ones in file order."""

    def __init__(self, problems: Sequence[DatasetProblem], total: int | None = None):
        self.problems = list(problems)
        # Problems past max_problems are counted but not kept, so the summary says how many there were.
        self.total = max(total if total is not None else len(self.problems), len(self.problems))
        first = self.problems[0].message if self.problems else "the dataset is invalid"
        more = self.total - 1
        if more > 0:
            first += f" (and {more} more problem{'s' if more != 1 else ''})"
        super().__init__(first)


@dataclass(frozen=True)
class Example:
    """One normalised training example: chat messages, a prompt/completion pair or plain text."""

    messages: tuple[dict[str, str], ...] | None = None
    prompt: str | None = None
    completion: str | None = None
    text: str | None = None
    line: int = 0

    def kind(self) -> Literal["chat", "completion", "text"]:
        """Which of the three shapes this example has."""
        if self.messages is not None:
            return "chat"
        if self.prompt is not None:
            return "completion"
        return "text"

    def characters(self) -> int:
        """Characters of content, not counting roles or separators."""
        if self.messages is not None:
            return sum(len(m["content"]) for m in self.messages)
        if self.prompt is not None:
            return len(self.prompt) + len(self.completion or "")
        return len(self.text or "")


@dataclass(frozen=True)
class ParsedDataset:
    """A validated dataset: its format, its examples in file order, and notes for the user."""

    format: DatasetFormat
    examples: tuple[Example, ...]
    warnings: tuple[str, ...] = ()
    column_mapping: dict[str, str] | None = field(default=None)

    def summary(self) -> dict:
        """Counts for the file's page and API object; JSON-ready."""
        stats = _Stats()
        for example in self.examples:
            stats.add(example)
        return stats.summary(_Outcome(self.format, list(self.warnings), self.column_mapping))


@dataclass
class _Outcome:
    """What a parser learned about a file besides its examples."""

    format: str
    warnings: list[str] = field(default_factory=list)
    column_mapping: dict[str, str] | None = None


class _Stats:
    """The dataset summary, accumulated one example at a time so a file's examples need not all be held."""

    def __init__(self) -> None:
        self.count = self.characters = self.chats = self.messages = self.with_system = self.multi_turn = 0
        self.min: int | None = None
        self.max = 0
        self.kinds: dict[str, int] = {}

    def add(self, example: Example) -> None:
        """Count one example in."""
        size = example.characters()
        self.count += 1
        self.characters += size
        self.min = size if self.min is None else min(self.min, size)
        self.max = max(self.max, size)
        self.kinds[example.kind()] = self.kinds.get(example.kind(), 0) + 1
        if example.messages is not None:
            self.chats += 1
            self.messages += len(example.messages)
            self.with_system += example.messages[0]["role"] == "system"
            self.multi_turn += sum(m["role"] == "assistant" for m in example.messages) > 1

    def summary(self, outcome: _Outcome) -> dict:
        """Counts for the file's page and API object; JSON-ready."""
        out: dict[str, Any] = {
            "format": outcome.format,
            "examples": self.count,
            "characters": self.characters,
            "kinds": self.kinds,
            "min_characters": self.min or 0,
            "max_characters": self.max,
            "mean_characters": round(self.characters / self.count) if self.count else 0,
        }
        if self.chats:
            out["messages"] = self.messages
            out["with_system_message"] = self.with_system
            out["multi_turn"] = self.multi_turn
        if outcome.column_mapping is not None:
            out["column_mapping"] = dict(outcome.column_mapping)
        out["warnings"] = list(outcome.warnings)
        return out


@dataclass(frozen=True)
class DatasetSummary:
    """A validated file described without its examples: what an upload records."""

    format: DatasetFormat
    examples: int
    summary: dict


class _Collector:
    """Keeps the first `limit` problems and counts the rest."""

    def __init__(self, limit: int):
        self.limit = max(1, limit)
        self.problems: list[DatasetProblem] = []
        self.total = 0

    def add(self, line: int | None, field_name: str | None, message: str, *, where: str | None = None) -> None:
        """Record a problem; `where` overrides the "line N" that starts the message."""
        self.total += 1
        if len(self.problems) < self.limit:
            where = where or (f"line {line}" if line is not None else "")
            text = f"{where}: {message}" if where else message
            self.problems.append(DatasetProblem(line=line, field=field_name, message=text))

    def raise_if_any(self) -> None:
        if self.problems:
            raise DatasetInvalid(self.problems, self.total)


class _TooMany(Exception):
    """Raised inside a parser when max_examples is exceeded; parsing stops there."""


def _fail(message: str, *, line: int | None = None, field_name: str | None = None) -> DatasetInvalid:
    prefix = f"line {line}: " if line is not None else ""
    return DatasetInvalid([DatasetProblem(line=line, field=field_name, message=prefix + message)])


def _container(filename: str, head: bytes) -> Literal["jsonl", "csv", "txt"]:
    """Which reader a file needs, from its extension, or its first byte when the extension is unknown."""
    name = filename.lower()
    if name.endswith(_JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(_CSV_SUFFIXES):
        return "csv"
    if name.endswith(_TEXT_SUFFIXES):
        return "txt"
    # API clients sometimes upload without a useful name; a leading "{" can only be JSON Lines.
    if head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{":
        return "jsonl"
    suffix = Path(name).suffix
    what = f"unsupported file type {suffix!r}" if suffix else f"cannot tell the type of {filename!r}"
    raise _fail(f"{what}: upload JSON Lines (.jsonl), CSV (.csv) or plain text (.txt)", field_name="file")


def detect_format(filename: str, head: bytes) -> str:
    """The dataset format a file's name and first bytes point to; raises DatasetInvalid when none fits."""
    container = _container(filename, head)
    if container == "csv":
        return "csv"
    if container == "txt":
        return "text"
    segments = head.split(b"\n")
    for number, raw in enumerate(segments, start=1):
        line = raw.rstrip(b"\r")
        if number == 1:
            line = line.removeprefix(b"\xef\xbb\xbf")
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            # The head may end inside a long first record; its first key still tells the format.
            if number == len(segments):
                match = _FIRST_KEY.search(line.decode("utf-8", "replace"))
                if match:
                    return next(kind for kind, keys in _RECORD_KEYS.items() if match.group(1) in keys)
            if isinstance(exc, json.JSONDecodeError):
                raise _fail(f"not valid JSON ({exc.msg} at column {exc.colno})", line=number) from None
            raise _fail(f"not valid UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1})",
                        line=number) from None
        kind = _record_format(record)
        if kind is None:
            raise _fail(_unrecognised(record), line=number)
        return kind
    raise _fail("the file holds no examples")


def parse_dataset(data: bytes, filename: str, *, column_mapping: dict[str, str] | None = None,
                  max_problems: int = 20, max_examples: int = 1_000_000) -> ParsedDataset:
    """Validate and normalise a whole file; raises DatasetInvalid listing what is wrong, line by line."""
    examples: list[Example] = []
    outcome = _read(io.BytesIO(data), filename, examples.append, column_mapping, max_problems, max_examples)
    return ParsedDataset(format=outcome.format, examples=tuple(examples), warnings=tuple(outcome.warnings),  # type: ignore[arg-type]
                         column_mapping=outcome.column_mapping)


def summarise_file(source: BinaryIO, filename: str, *, column_mapping: dict[str, str] | None = None,
                   max_problems: int = 20, max_examples: int = 1_000_000) -> DatasetSummary:
    """Validate a seekable file line by line, as parse_dataset would, keeping counts rather than examples."""
    stats = _Stats()
    outcome = _read(source, filename, stats.add, column_mapping, max_problems, max_examples)
    return DatasetSummary(format=outcome.format, examples=stats.count, summary=stats.summary(outcome))  # type: ignore[arg-type]


def _read(source: BinaryIO, filename: str, emit: Callable[[Example], None], column_mapping: dict[str, str] | None,
          max_problems: int, max_examples: int) -> _Outcome:
    """Parse `source` from its start, handing each valid example to `emit`; raises DatasetInvalid."""
    source.seek(0)
    head = source.read(4096)
    source.seek(0)
    container = _container(filename, head)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        # Windows tools save "Unicode" as UTF-16; every later message would be noise.
        raise _fail("the file is UTF-16; save it as UTF-8 and upload it again", field_name="file")
    problems = _Collector(max_problems)
    if column_mapping and container != "csv":
        problems.add(None, "column_mapping", "column_mapping applies to CSV files only")
        problems.raise_if_any()
    emitted = 0

    def counted(example: Example) -> None:
        nonlocal emitted
        emitted += 1
        emit(example)

    if container == "jsonl":
        outcome = _parse_jsonl(source, problems, max_examples, counted)
    elif container == "csv":
        outcome = _parse_csv(source, problems, max_examples, column_mapping or None, counted)
    else:
        outcome = _parse_text(source, problems, max_examples, counted)
    problems.raise_if_any()
    if not emitted:
        raise _fail("the file holds no examples")
    return outcome


def load_examples(path: Path, *, column_mapping: dict[str, str] | None = None) -> ParsedDataset:
    """Read a stored dataset file and parse it as an upload would be."""
    path = Path(path)
    return parse_dataset(path.read_bytes(), path.name, column_mapping=column_mapping)


def split_validation(examples: Sequence[Example], percent: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Hold out `percent` % of the examples for evaluation; the same seed always picks the same ones."""
    examples = list(examples)
    if percent == 0:
        return examples, []
    if not 0 < percent < 100:
        raise ValueError(f"the validation split must be between 0 and 100 percent, not {percent}")
    # Rounded down, as the launch check and the step estimate count it.
    held = int(len(examples) * percent / 100)
    if held == 0:
        raise ValueError(f"a {percent}% validation split of {len(examples)} examples holds out no example; "
                         "raise the split or give a validation file")
    if held >= len(examples):
        raise ValueError(f"a {percent}% validation split of {len(examples)} examples leaves no training example")

    # Ranked by a hash of (seed, index) rather than `random`, so a job resumed on another worker, or
    # another Python version, holds out exactly the same examples.
    def rank(index: int) -> bytes:
        return hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()

    chosen = set(sorted(range(len(examples)), key=rank)[:held])
    train = [e for i, e in enumerate(examples) if i not in chosen]
    validation = [e for i, e in enumerate(examples) if i in chosen]
    return train, validation


# --- JSON Lines ---------------------------------------------------------------------------------


def _raw_lines(source: BinaryIO) -> Iterator[tuple[int, int, bytes | None, int]]:
    """(number, byte offset, bytes without the "\n", length) of every line; bytes are None for a line over
    MAX_LINE_BYTES, which is skipped without being held."""
    # Split bytes on "\n" only: str.splitlines would also break inside JSON strings at U+2028 and friends.
    number = offset = 0
    while raw := source.readline(MAX_LINE_BYTES + 1):
        number += 1
        start = offset
        ended = raw.endswith(b"\n")
        length = len(raw) - ended
        if length > MAX_LINE_BYTES:
            while not ended and (more := source.readline(1024 * 1024)):
                ended = more.endswith(b"\n")
                length += len(more) - ended
            raw = None
        elif ended:
            raw = raw[:-1]
        offset = start + length + ended
        yield number, start, raw, length


def _jsonl_lines(source: BinaryIO, problems: _Collector) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers, decoded one by one so a bad byte names its line."""
    for number, line_offset, raw, length in _raw_lines(source):
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


def _parse_jsonl(source: BinaryIO, problems: _Collector, max_examples: int,
                 emit: Callable[[Example], None]) -> _Outcome:
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
            problems.add(number, None, f"expected a JSON object, got {_json_type(record)}")
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
            expected = " and ".join(_RECORD_KEYS[fmt])
            problems.add(number, None, f"expected a {_RECORD_LABELS[fmt]} record like line {first_line} "
                         f"(keys {expected}), found keys {', '.join(sorted(record)) or 'none'}")
            continue
        example, zeros = _record_example(kind, record, number, problems)
        weight_zero += zeros
        if example is not None:
            if examples >= max_examples:
                problems.add(number, None, f"more than {max_examples:,} examples; the limit is {max_examples:,} "
                             "per file")
                break
            examples += 1
            emit(example)
    warnings = []
    if weight_zero:
        warnings.append(f"{weight_zero} assistant message{'s carry' if weight_zero != 1 else ' carries'} weight 0; "
                        "Tuneboard does not honour weights yet and trains on every assistant message")
    return _Outcome(fmt or "chat", warnings)


def _whole_json_hint(source: BinaryIO, problems: _Collector) -> bool:
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


def _json_type(value: Any) -> str:
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


def _record_format(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    for kind, keys in _RECORD_KEYS.items():
        if any(key in record for key in keys):
            return kind
    return None


def _unrecognised(record: Any) -> str:
    if not isinstance(record, dict):
        return f"expected a JSON object, got {_json_type(record)}"
    found = ", ".join(sorted(record)) or "none"
    return ("unrecognised record: expected the key messages (chat), prompt and completion, instruction and "
            f"output (Alpaca), or text; found keys {found}")


def _string(record: dict, key: str, line: int, problems: _Collector, *, field_name: str | None = None,
            required: bool = True) -> str | None:
    """The record's non-empty string under `key`, or None after reporting why not."""
    name = field_name or key
    if key not in record or (record[key] is None and not required):
        if required:
            problems.add(line, name, f"{name} is missing")
        return None
    value = record[key]
    if not isinstance(value, str):
        problems.add(line, name, f"{name} must be a string, not {_json_type(value)}")
        return None
    if required and not value.strip():
        problems.add(line, name, f"{name} must not be empty")
        return None
    return value


def _record_example(kind: str, record: dict, line: int, problems: _Collector) -> tuple[Example | None, int]:
    """Validate one record of a known format; returns the example (None when invalid) and weight-0 count."""
    before = problems.total
    if kind == "chat":
        return _chat_example(record, line, problems)
    if kind == "prompt_completion":
        prompt = _string(record, "prompt", line, problems)
        completion = _string(record, "completion", line, problems)
        if problems.total > before:
            return None, 0
        return Example(prompt=prompt, completion=completion, line=line), 0
    if kind == "alpaca":
        instruction = _string(record, "instruction", line, problems)
        extra = _string(record, "input", line, problems, required=False)
        output = _string(record, "output", line, problems)
        if problems.total > before:
            return None, 0
        user = instruction + ("\n\n" + extra if extra and extra.strip() else "")  # type: ignore[operator]
        messages = ({"role": "user", "content": user}, {"role": "assistant", "content": output})
        return Example(messages=messages, line=line), 0  # type: ignore[arg-type]
    text = _string(record, "text", line, problems)
    return (Example(text=text, line=line) if text is not None else None), 0


def _chat_example(record: dict, line: int, problems: _Collector) -> tuple[Example | None, int]:
    messages = record.get("messages")
    if not isinstance(messages, list):
        problems.add(line, "messages", "messages must be a list of {role, content} objects, not "
                     f"{_json_type(messages)}")
        return None, 0
    if not messages:
        problems.add(line, "messages", "messages must not be empty")
        return None, 0
    before = problems.total
    out: list[dict[str, str]] = []
    weight_zero = 0
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            problems.add(line, where, f"{where} must be an object with role and content, not {_json_type(message)}")
            continue
        role = message.get("role")
        if role in ("tool", "function") or (role == "assistant" and ("tool_calls" in message
                                                                       or "function_call" in message)):
            key = "role" if role in ("tool", "function") else "tool_calls"
            what = f"role {role!r}" if key == "role" else "tool calls"
            problems.add(line, f"{where}.{key}", f"{where} has {what}: tool calls are not supported yet")
            continue
        if "role" not in message:
            problems.add(line, f"{where}.role", f"{where}.role is missing")
        elif role not in ROLES:
            problems.add(line, f"{where}.role", f"{where}.role must be one of {', '.join(ROLES)}")
        content = _string(message, "content", line, problems, field_name=f"{where}.content")
        # OpenAI's format allows these two keys; anything else is ignored rather than refused.
        if "name" in message and not isinstance(message["name"], str):
            problems.add(line, f"{where}.name", f"{where}.name must be a string")
        if "weight" in message:
            weight = message["weight"]
            if isinstance(weight, bool) or weight not in (0, 1):
                problems.add(line, f"{where}.weight", f"{where}.weight must be 0 or 1")
            elif role != "assistant":
                problems.add(line, f"{where}.weight", f"{where}.weight is only allowed on assistant messages")
            elif weight == 0:
                weight_zero += 1
        if role in ROLES and content is not None:
            out.append({"role": role, "content": content})
    if problems.total > before:
        # Ordering rules only make sense once every message is itself valid.
        return None, 0
    last = len(out) - 1
    for index, message in enumerate(out):
        if message["role"] == "system" and index > 0:
            problems.add(line, f"messages[{index}].role",
                         f"messages[{index}] is a system message; a system message may only come first")
    if not any(m["role"] == "assistant" for m in out):
        problems.add(line, "messages", "messages must include at least one assistant message")
    elif out[last]["role"] != "assistant":
        problems.add(line, f"messages[{last}].role", "the last message must be from the assistant")
    if problems.total > before:
        return None, 0
    return Example(messages=tuple(out), line=line), weight_zero


# --- plain text ---------------------------------------------------------------------------------


def _is_utf8(source: BinaryIO, problems: _Collector) -> bool:
    """Whether the whole file is UTF-8; if not, every line that is not has been reported."""
    source.seek(0)
    valid = True
    for number, offset, raw, length in _raw_lines(source):
        bad = _first_bad_byte(raw) if raw is not None else _first_bad_byte_far(source, offset, length)
        if bad is not None:
            position, byte = bad
            valid = False
            problems.add(number, None, f"not valid UTF-8 (byte 0x{byte:02x} at byte offset "
                         f"{offset + position}); save the file as UTF-8")
    source.seek(0)
    return valid


def _first_bad_byte(raw: bytes) -> tuple[int, int] | None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start, raw[exc.start]
    return None


def _first_bad_byte_far(source: BinaryIO, offset: int, length: int) -> tuple[int, int] | None:
    """_first_bad_byte for a line too long to hold: decoded in pieces (the caller's reading resumes after it)."""
    resume = source.tell()
    source.seek(offset)
    decoder = codecs.getincrementaldecoder("utf-8")()
    done = 0
    try:
        while done < length:
            piece = source.read(min(1024 * 1024, length - done))
            held = len(decoder.getstate()[0])
            try:
                decoder.decode(piece, final=done + len(piece) >= length)
            except UnicodeDecodeError as exc:
                return done - held + exc.start, exc.object[exc.start]
            done += len(piece)
        return None
    finally:
        source.seek(resume)


def _text_lines(source: BinaryIO) -> Iterator[tuple[int, str | None]]:
    """The lines of a file known to be UTF-8 (a leading BOM dropped); None for a line over the limit."""
    for number, _, raw, _ in _raw_lines(source):
        if raw is None:
            yield number, None
            continue
        if number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        yield number, raw.decode("utf-8").rstrip("\r")


def _parse_text(source: BinaryIO, problems: _Collector, max_examples: int,
                emit: Callable[[Example], None]) -> _Outcome:
    if not _is_utf8(source, problems):
        return _Outcome("text")
    examples = 0
    current: list[str] = []
    start = 0

    def flush() -> None:
        nonlocal examples
        if current:
            if examples >= max_examples:
                problems.add(start, None, f"more than {max_examples:,} examples; the limit is {max_examples:,} "
                             "per file")
                raise _TooMany
            examples += 1
            emit(Example(text="\n".join(current), line=start))
            current.clear()

    try:
        for number, line in _text_lines(source):
            if line is None:
                problems.add(number, None, "the line is longer than the limit of 10 MB per line")
                continue
            if not line.strip():
                flush()
            else:
                if not current:
                    start = number
                current.append(line)
        flush()
    except _TooMany:
        pass
    return _Outcome("text")


# --- CSV ----------------------------------------------------------------------------------------


def _resolve_mapping(header: list[str], mapping: dict[str, str] | None,
                     problems: _Collector) -> dict[str, int] | None:
    """Our field name -> column index, from the mapping given or from a header that uses our names."""
    shown = ", ".join(header)
    if mapping is None:
        lowered = {name.strip().lower(): i for i, name in reversed(list(enumerate(header)))}
        for required, optional in _CSV_GROUPS:
            if all(name in lowered for name in required):
                return {name: lowered[name] for name in required + optional if name in lowered}
        problems.add(1, "column_mapping", f"the header ({shown}) has no columns Tuneboard knows; name them prompt "
                     "and completion, instruction and output, user and assistant, or text, or give a column_mapping")
        return None
    before = problems.total
    resolved: dict[str, int] = {}
    for ours, column in mapping.items():
        where = f"column_mapping.{ours}"
        if ours not in _CSV_FIELDS:
            problems.add(None, where, f"{where}: unknown field; use one of {', '.join(_CSV_FIELDS)}")
        elif column not in header:
            problems.add(None, where, f"{where}: column {column!r} is not in the header ({shown})")
        else:
            resolved[ours] = header.index(column)
    if problems.total > before:
        return None
    groups = [(req, opt) for req, opt in _CSV_GROUPS if any(name in mapping for name in req + opt)]
    if len(groups) != 1:
        problems.add(None, "column_mapping", "column_mapping: map prompt and completion, instruction and output "
                     "(input optional), user and assistant (system optional), or text; not a mix")
        return None
    required, _ = groups[0]
    missing = [name for name in required if name not in mapping]
    if missing:
        problems.add(None, "column_mapping", f"column_mapping: {' and '.join(required)} go together; "
                     f"map {' and '.join(missing)} as well")
        return None
    return resolved


def _long_csv_line(source: BinaryIO, problems: _Collector) -> bool:
    """Report the first physical line over the limit (the reader would hold it whole); True when there is one."""
    source.seek(0)
    for number, _, raw, _ in _raw_lines(source):
        if raw is None:
            # Such a line almost always is one such cell; the csv module would have said so at the same line.
            problems.add(number, None, "a cell is longer than the limit of 10 MB")
            return True
    source.seek(0)
    return False


def _parse_csv(source: BinaryIO, problems: _Collector, max_examples: int,
               mapping: dict[str, str] | None, emit: Callable[[Example], None]) -> _Outcome:
    if not _is_utf8(source, problems) or _long_csv_line(source, problems):
        return _Outcome("csv")
    # The csv module refuses cells over 128 KiB by default; raise its process-wide limit (never lower it)
    # to our per-line limit so long documents are accepted and bigger ones get our message.
    if csv.field_size_limit() < MAX_LINE_BYTES:
        csv.field_size_limit(MAX_LINE_BYTES)
    # newline="" keeps newlines inside quoted cells intact, as the csv module requires.
    text = io.TextIOWrapper(source, encoding="utf-8-sig", newline="")
    try:
        return _csv_examples(csv.reader(text), problems, max_examples, mapping, emit)
    finally:
        text.detach()  # the caller's file stays open


def _csv_examples(reader, problems: _Collector, max_examples: int, mapping: dict[str, str] | None,
                  emit: Callable[[Example], None]) -> _Outcome:
    try:
        header = next(reader)
    except StopIteration:
        return _Outcome("csv")
    except csv.Error as exc:
        problems.add(1, None, _csv_error(exc))
        return _Outcome("csv")
    columns = _resolve_mapping(header, mapping, problems)
    if columns is None:
        return _Outcome("csv")
    used = mapping if mapping is not None else {ours: header[i] for ours, i in columns.items()}
    required = next(req for req, opt in _CSV_GROUPS if req[0] in columns)
    examples = 0
    row_number = 1
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.add(start, None, _csv_error(exc))
            break
        row_number += 1  # a spreadsheet numbers blank rows too
        if not any(cell.strip() for cell in row):
            continue  # blank rows are what spreadsheets leave at the end
        # Quoted newlines make the physical line and the spreadsheet row differ; name both then.
        where = f"line {start}" + (f" (spreadsheet row {row_number})" if start != row_number else "")
        before = problems.total
        if len(row) > len(header) and any(cell.strip() for cell in row[len(header):]):
            problems.add(start, None, f"the row has {len(row)} cells but the header has {len(header)}; "
                         "quote cells that hold commas", where=where)
            continue
        values = {ours: row[i] if i < len(row) else "" for ours, i in columns.items()}
        for ours in required:
            column = header[columns[ours]]
            if not values[ours].strip():
                problems.add(start, column, f"the {column!r} column ({ours}) is empty", where=where)
        if problems.total > before:
            continue
        if examples >= max_examples:
            problems.add(start, None, f"more than {max_examples:,} examples; the limit is {max_examples:,} per file",
                         where=where)
            break
        examples += 1
        emit(_csv_example(values, start))
    return _Outcome("csv", column_mapping=dict(used))


def _csv_error(exc: csv.Error) -> str:
    if "field larger than field limit" in str(exc):
        return "a cell is longer than the limit of 10 MB"
    return f"not valid CSV ({exc})"


def _csv_example(values: dict[str, str], line: int) -> Example:
    if "prompt" in values:
        return Example(prompt=values["prompt"], completion=values["completion"], line=line)
    if "text" in values:
        return Example(text=values["text"], line=line)
    if "instruction" in values:
        extra = values.get("input", "")
        user = values["instruction"] + ("\n\n" + extra if extra.strip() else "")
        return Example(messages=({"role": "user", "content": user},
                                 {"role": "assistant", "content": values["output"]}), line=line)
    messages = []
    if values.get("system", "").strip():
        messages.append({"role": "system", "content": values["system"]})
    messages += [{"role": "user", "content": values["user"]}, {"role": "assistant", "content": values["assistant"]}]
    return Example(messages=tuple(messages), line=line)
