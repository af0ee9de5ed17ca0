"""The model catalog: committed configs and inventories of well-known models, and search over them.

Pure data access; must not import torch or `workers`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from app.safe_paths import inside

DATA_DIR = Path(__file__).parent / "catalog_data"


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    id: str
    name: str
    family: str
    size: str
    summary: str


def slug(model_id: str) -> str:
    """File-system name for a model id: 'meta-llama/Llama-3.1-8B' -> 'meta-llama--Llama-3.1-8B'."""
    return model_id.strip("/").replace("/", "--")


def config_path(model_id: str) -> Path:
    """Where the committed config.json of a catalog model lives."""
    return inside(DATA_DIR / "configs", f"{slug(model_id)}.json")


def inventory_path(model_id: str) -> Path:
    """Where the committed inventory of a catalog model lives."""
    return inside(DATA_DIR / "inventories", f"{slug(model_id)}.json")


@cache
def entries() -> tuple[CatalogEntry, ...]:
    """Every catalog model, in display order."""
    raw = json.loads((DATA_DIR / "catalog.json").read_text())
    return tuple(CatalogEntry(**item) for item in raw)


@cache
def _by_lower_id() -> dict[str, CatalogEntry]:
    return {e.id.lower(): e for e in entries()}


def find(model_id: str) -> CatalogEntry | None:
    """The catalog entry for a model id (case-insensitive, as the hub resolves ids), or None."""
    return _by_lower_id().get(model_id.strip().lower())


def search(query: str, limit: int = 20) -> list[CatalogEntry]:
    """Catalog entries whose id, name, family or size contain every word of the query."""
    words = query.lower().split()
    hits = [
        e
        for e in entries()
        if all(w in f"{e.id} {e.name} {e.family} {e.size}".lower() for w in words)
    ]
    return hits[:limit]
