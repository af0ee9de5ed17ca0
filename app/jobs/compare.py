"""Comparing runs: which jobs the compare page shows, and the settings in which they differ.

A config is flattened to one level (model, dataset, validation_dataset, lora.*, training.*) and only the
keys whose values are not all equal are kept, in a stable order. Must not import torch or `workers`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MIN_JOBS, MAX_JOBS = 2, 5
# One colour per compared run, the same on the chart, its legend and the table headers.
COLOURS = ("#3b5bdb", "#e8590c", "#2b8a3e", "#ae3ec9", "#0c8599")
ABSENT = object()  # a key one config has and another lacks (written by an older version)


def parse_ids(values: Iterable[str]) -> list[str]:
    """Job ids from ?jobs=a,b and/or ?jobs=a&jobs=b, in order, without repeats."""
    ids: list[str] = []
    for value in values:
        for part in value.split(","):
            if part.strip() and part.strip() not in ids:
                ids.append(part.strip())
    return ids


def count_problem(ids: list[str]) -> str | None:
    """Why these ids cannot be compared, or None when there are 2 to 5 of them."""
    if len(ids) < MIN_JOBS:
        return f"Pick at least {MIN_JOBS} jobs to compare (got {len(ids)})."
    if len(ids) > MAX_JOBS:
        return f"Compare at most {MAX_JOBS} jobs at a time (got {len(ids)}); untick some and try again."
    return None


def flatten(config: dict[str, Any], training_file_id: str | None, validation_file_id: str | None) -> dict[str, Any]:
    """{'model': ..., 'dataset': file id, 'validation_dataset': ..., 'lora.r': 16, 'training.seed': 42, ...}."""
    flat: dict[str, Any] = {"model": config.get("model"), "dataset": training_file_id,
                            "validation_dataset": validation_file_id}
    for section in ("lora", "training"):
        for key, value in (config.get(section) or {}).items():
            flat[f"{section}.{key}"] = value
    return flat


def _normal(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    return value


def _same(values: list[Any]) -> bool:
    # Compared as canonical JSON: 16 and 16.0, or the same dict in another key order, are equal.
    return len({"absent" if v is ABSENT else json.dumps(_normal(v), sort_keys=True) for v in values}) == 1


@dataclass
class DiffRow:
    key: str
    values: list[Any]  # one per job; ABSENT where a config lacks the key


def config_diff(flats: list[dict[str, Any]]) -> list[DiffRow]:
    """The keys whose values differ between the flattened configs, in first-seen order."""
    keys: list[str] = []
    for flat in flats:
        keys.extend(k for k in flat if k not in keys)
    rows = [DiffRow(key, [flat.get(key, ABSENT) for flat in flats]) for key in keys]
    return [row for row in rows if not _same(row.values)]


def show(value: Any) -> str:
    """A setting as the diff table prints it."""
    if value is ABSENT:
        return "(absent)"
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return json.dumps(value)
