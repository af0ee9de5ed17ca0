"""Training data in plain text: documents separated by blank lines, each one text example.

Stdlib only: must not import torch, transformers, peft or `workers`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import BinaryIO

from app.datasets.format_common import (
    Example,
    Outcome,
    ProblemCollector,
    is_utf8,
    over_example_limit,
    raw_lines,
)

SUFFIXES = (".txt", ".text")


class _TooMany(Exception):
    """Raised inside the reader when max_examples is exceeded; reading stops there."""


def _text_lines(source: BinaryIO) -> Iterator[tuple[int, str | None]]:
    """The lines of a file known to be UTF-8 (a leading BOM dropped); None for a line over the limit."""
    for number, _, raw, _ in raw_lines(source):
        if raw is None:
            yield number, None
            continue
        if number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        yield number, raw.decode("utf-8").rstrip("\r")


def parse_text(source: BinaryIO, problems: ProblemCollector, max_examples: int,
               emit: Callable[[Example], None]) -> Outcome:
    """Read blank-line separated documents, handing each to `emit` as a text example."""
    if not is_utf8(source, problems):
        return Outcome("text")
    examples = 0
    current: list[str] = []
    start = 0

    def flush() -> None:
        nonlocal examples
        if current:
            if examples >= max_examples:
                problems.add(start, None, over_example_limit(max_examples))
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
    return Outcome("text")
