"""Training data: the upload validator and normaliser, the entry point for every dataset format.

Picks the reader a file needs (jsonl_format, csv_format or text_format, from its name or first byte), applies
what holds for every format (UTF-16 refused, column mappings for CSV only, at least one example), and owns the
deterministic validation split. The web app validates uploads with it (`summarise_file`: line by line from disk,
keeping counts, not examples) and the worker reads stored files with it (`parse_dataset`, `load_examples`), both
through the same readers, so they always agree on what a file holds.

Stdlib and pydantic only: must not import torch, transformers, peft or `workers`.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO, Literal

from app.datasets import csv_format, jsonl_format, text_format
from app.datasets.format_common import (
    DatasetInvalid,
    DatasetProblem,
    DatasetSummary,
    Example,
    Outcome,
    ParsedDataset,
    ProblemCollector,
    SummaryCounts,
)
from app.estimator.job_config import held_out_examples


def _fail(message: str, *, field_name: str | None = None) -> DatasetInvalid:
    """A DatasetInvalid holding one problem, for what stops a file being read at all."""
    return DatasetInvalid([DatasetProblem(field=field_name, message=message)])


def _container(filename: str, head: bytes) -> Literal["jsonl", "csv", "txt"]:
    """Which reader a file needs, from its extension, or its first byte when the extension is unknown."""
    name = filename.lower()
    if name.endswith(jsonl_format.SUFFIXES):
        return "jsonl"
    if name.endswith(csv_format.SUFFIXES):
        return "csv"
    if name.endswith(text_format.SUFFIXES):
        return "txt"
    # API clients sometimes upload without a useful name; a leading "{" can only be JSON Lines.
    if head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{":
        return "jsonl"
    suffix = Path(name).suffix
    what = f"unsupported file type {suffix!r}" if suffix else f"cannot tell the type of {filename!r}"
    raise _fail(f"{what}: upload JSON Lines (.jsonl), CSV (.csv) or plain text (.txt)", field_name="file")


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
    stats = SummaryCounts()
    outcome = _read(source, filename, stats.add, column_mapping, max_problems, max_examples)
    return DatasetSummary(format=outcome.format, examples=stats.count, summary=stats.summary(outcome))  # type: ignore[arg-type]


def _read(source: BinaryIO, filename: str, emit: Callable[[Example], None], column_mapping: dict[str, str] | None,
          max_problems: int, max_examples: int) -> Outcome:
    """Parse `source` from its start, handing each valid example to `emit`; raises DatasetInvalid."""
    source.seek(0)
    head = source.read(4096)
    source.seek(0)
    container = _container(filename, head)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        # Windows tools save "Unicode" as UTF-16; every later message would be noise.
        raise _fail("the file is UTF-16; save it as UTF-8 and upload it again", field_name="file")
    problems = ProblemCollector(max_problems)
    if column_mapping and container != "csv":
        problems.add(None, "column_mapping", "column_mapping applies to CSV files only")
        problems.raise_if_any()
    emitted = 0

    def counted(example: Example) -> None:
        nonlocal emitted
        emitted += 1
        emit(example)

    if container == "jsonl":
        outcome = jsonl_format.parse_jsonl(source, problems, max_examples, counted)
    elif container == "csv":
        outcome = csv_format.parse_csv(source, problems, max_examples, column_mapping or None, counted)
    else:
        outcome = text_format.parse_text(source, problems, max_examples, counted)
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
    held = held_out_examples(len(examples), percent)
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
