"""Dataset previews: the first rows rendered with the base model's chat template (trained tokens marked)
and token counts, computed once per (file, model, loss_on) by `python -m workers.dataset_preview` because
that needs the model's tokenizer. Must not import torch or `workers`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from app.base_models.inventories import ModelSource, resolve_source
from app.fleet import offloaded
from app.safe_paths import inside
from app.settings import Settings
from app.storage import artifacts
from app.tables import DataFile

LossOn = Literal["assistant", "all"]


@dataclass(frozen=True, slots=True)
class Preview:
    data: dict

    def over_length(self, sequence_length: int) -> int:
        """How many examples exceed sequence_length tokens (they would be truncated)."""
        return sum(count for length, count in self.data["token_lengths"] if length > sequence_length)


def _cache_path(settings: Settings, data_file: DataFile, source: ModelSource, loss_on: LossOn) -> Path:
    if loss_on not in get_args(LossOn):
        raise ValueError(f"loss_on must be one of {', '.join(get_args(LossOn))}, not {loss_on!r}")
    return inside(settings.data_dir / "previews", f"{data_file.id}--{source.cache_name}--{loss_on}.json")


def get_preview(settings: Settings, data_file: DataFile, model: str, loss_on: LossOn = "assistant") -> Preview:
    """The cached preview, or offloaded.Pending / offloaded.Failed; InventoryUnavailable for an unknown model."""
    source = resolve_source(model, settings)
    out = _cache_path(settings, data_file, source, loss_on)
    command = ["-m", "workers.dataset_preview", "--file", str(artifacts.local_file(settings, data_file.storage_key)),
               "--model", source.model_id, "--loss-on", loss_on, "--data-dir", str(settings.data_dir)]
    if data_file.column_mapping:
        command += ["--column-mapping", json.dumps(data_file.column_mapping)]
    return Preview(offloaded.cached_or_start(out, command, settings))



def cached_preview(settings: Settings, data_file: DataFile, model: str,
                   loss_on: LossOn = "assistant") -> Preview | None:
    """The preview if it was already computed, else None; never starts a computation."""
    try:
        out = _cache_path(settings, data_file, resolve_source(model, settings), loss_on)
    except Exception:
        return None
    if not out.is_file():
        return None
    try:
        return Preview(json.loads(out.read_text()))
    except (OSError, ValueError):
        return None
