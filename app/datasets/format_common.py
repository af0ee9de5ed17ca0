"""Training data, what every upload format shares: the limits, the normalised `Example` the trainer consumes,
the problems reported about a file (each naming its line and field) and how they are collected, the dataset
summary, and the byte-level line reader the format readers build on.

The readers of each format (jsonl_format, csv_format, text_format) build on this module; app.datasets.validator
picks one for a file. Stdlib and pydantic only: must not import torch, transformers, peft or `workers`.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal

from pydantic import BaseModel

MAX_LINE_BYTES = 10 * 1024 * 1024
DatasetFormat = Literal["chat", "prompt_completion", "alpaca", "text", "csv", "preference"]
# A preference pair's answer: assistant messages after a conversational prompt, or a string after a plain one.
Answer = tuple[dict[str, str], ...] | str


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
    """One normalised training example: chat messages, a prompt/completion pair, plain text, or a preference pair
    (a prompt, as messages or a string, with a chosen and a rejected answer)."""

    messages: tuple[dict[str, str], ...] | None = None
    prompt: str | None = None
    completion: str | None = None
    text: str | None = None
    chosen: Answer | None = None
    rejected: Answer | None = None
    line: int = 0

    def kind(self) -> Literal["chat", "completion", "text", "preference"]:
        """Which of the four shapes this example has."""
        if self.chosen is not None:
            return "preference"
        if self.messages is not None:
            return "chat"
        if self.prompt is not None:
            return "completion"
        return "text"

    def characters(self) -> int:
        """Characters of content, not counting roles or separators (a pair: its prompt and both answers)."""
        if self.chosen is not None:
            return self._prompt_characters() + _answer_characters(self.chosen) + _answer_characters(self.rejected)
        if self.messages is not None:
            return sum(len(m["content"]) for m in self.messages)
        if self.prompt is not None:
            return len(self.prompt) + len(self.completion or "")
        return len(self.text or "")

    def _prompt_characters(self) -> int:
        if self.messages is not None:
            return sum(len(m["content"]) for m in self.messages)
        return len(self.prompt or "")


def _answer_characters(answer: Answer | None) -> int:
    if isinstance(answer, str):
        return len(answer)
    return sum(len(m["content"]) for m in answer or ())


@dataclass(frozen=True)
class ParsedDataset:
    """A validated dataset: its format, its examples in file order, and notes for the user."""

    format: DatasetFormat
    examples: tuple[Example, ...]
    warnings: tuple[str, ...] = ()
    column_mapping: dict[str, str] | None = field(default=None)

    def summary(self) -> dict:
        """Counts for the file's page and API object; JSON-ready."""
        stats = SummaryCounts()
        for example in self.examples:
            stats.add(example)
        return stats.summary(Outcome(self.format, list(self.warnings), self.column_mapping))


@dataclass
class Outcome:
    """What a parser learned about a file besides its examples."""

    format: str
    warnings: list[str] = field(default_factory=list)
    column_mapping: dict[str, str] | None = None


class SummaryCounts:
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

    def summary(self, outcome: Outcome) -> dict:
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


class ProblemCollector:
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
        """Raise DatasetInvalid with what was recorded, if anything was."""
        if self.problems:
            raise DatasetInvalid(self.problems, self.total)


def raw_lines(source: BinaryIO) -> Iterator[tuple[int, int, bytes | None, int]]:
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


def is_utf8(source: BinaryIO, problems: ProblemCollector) -> bool:
    """Whether the whole file is UTF-8; if not, every line that is not has been reported."""
    source.seek(0)
    valid = True
    for number, offset, raw, length in raw_lines(source):
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


def over_example_limit(max_examples: int) -> str:
    """The problem reported at the example past a file's limit."""
    return f"more than {max_examples:,} examples; the limit is {max_examples:,} per file"
