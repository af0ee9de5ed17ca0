"""Training data in CSV: a header row, then one example per row through a column mapping.

Owns which groups of our field names a header's columns can be mapped to (given, or read from a header that
uses our names), the checks on each row, and the limits the csv module must be raised to. Stdlib only: must
not import torch, transformers, peft or `workers`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import BinaryIO

from app.datasets.format_common import (
    MAX_LINE_BYTES,
    Example,
    Outcome,
    ProblemCollector,
    is_utf8,
    over_example_limit,
    raw_lines,
)

SUFFIXES = (".csv",)

# Column groups our field names can be mapped to, as (required, optional); the first fitting a header wins.
_CSV_GROUPS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("user", "assistant"), ("system",)),
    (("instruction", "output"), ("input",)),
    (("prompt", "completion"), ()),
    (("text",), ()),
)
_CSV_FIELDS = tuple(name for required, optional in _CSV_GROUPS for name in required + optional)


def _resolve_mapping(header: list[str], mapping: dict[str, str] | None,
                     problems: ProblemCollector) -> dict[str, int] | None:
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


def _long_csv_line(source: BinaryIO, problems: ProblemCollector) -> bool:
    """Report the first physical line over the limit (the reader would hold it whole); True when there is one."""
    source.seek(0)
    for number, _, raw, _ in raw_lines(source):
        if raw is None:
            # Such a line almost always is one such cell; the csv module would have said so at the same line.
            problems.add(number, None, "a cell is longer than the limit of 10 MB")
            return True
    source.seek(0)
    return False


def parse_csv(source: BinaryIO, problems: ProblemCollector, max_examples: int,
              mapping: dict[str, str] | None, emit: Callable[[Example], None]) -> Outcome:
    """Read a CSV file with a header, handing each valid row to `emit` as the example its mapping makes."""
    if not is_utf8(source, problems) or _long_csv_line(source, problems):
        return Outcome("csv")
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


def _csv_examples(reader, problems: ProblemCollector, max_examples: int, mapping: dict[str, str] | None,
                  emit: Callable[[Example], None]) -> Outcome:
    try:
        header = next(reader)
    except StopIteration:
        return Outcome("csv")
    except csv.Error as exc:
        problems.add(1, None, _csv_error(exc))
        return Outcome("csv")
    columns = _resolve_mapping(header, mapping, problems)
    if columns is None:
        return Outcome("csv")
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
            problems.add(start, None, over_example_limit(max_examples), where=where)
            break
        examples += 1
        emit(_csv_example(values, start))
    return Outcome("csv", column_mapping=dict(used))


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
