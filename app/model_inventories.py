"""Finding a model's module inventory: committed for catalog models, computed once and cached otherwise.

Computing needs torch, so it runs in a separate `python -m workers.inventory` process; the web app
only starts it and reads the result. Must not import torch or `workers`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from app import offloaded
from app.settings import Settings
from app.training import catalog
from app.training.inventory import Inventory, load_inventory

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class InventoryUnavailable(Exception):
    """No inventory yet: `computing` is True while a worker process builds it, else `message` says why."""

    def __init__(self, model_id: str, message: str, *, computing: bool = False):
        super().__init__(message)
        self.model_id = model_id
        self.message = message
        self.computing = computing


@dataclass(frozen=True, slots=True)
class ModelSource:
    model_id: str
    cache_name: str
    is_local: bool


def _is_local(model_id: str) -> bool:
    return model_id.startswith(("/", "./", "../", "~")) or Path(model_id).expanduser().is_dir()


def resolve_source(model_id: str) -> ModelSource:
    """Validate a model id or local directory and name its cache file."""
    model_id = model_id.strip()
    if _is_local(model_id):
        directory = Path(model_id).expanduser().resolve()
        config = directory / "config.json"
        if not directory.is_dir():
            raise InventoryUnavailable(model_id, f"{directory} is not a directory on the server.")
        if not config.is_file():
            raise InventoryUnavailable(model_id, f"{directory} has no config.json.")
        # The config's mtime is part of the key so an edited config is recomputed.
        digest = hashlib.sha1(f"{directory}:{config.stat().st_mtime_ns}".encode()).hexdigest()[:12]
        return ModelSource(str(directory), f"local--{directory.name}--{digest}", True)
    if not _HUB_ID.match(model_id) or ".." in model_id:
        raise InventoryUnavailable(
            model_id, f"{model_id!r} is neither a Hugging Face model id (org/name) nor a local directory."
        )
    return ModelSource(model_id, catalog.slug(model_id), False)


def worker_stack_installed() -> bool:
    """Whether torch and transformers are importable here, checked without importing them."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers", "peft"))


def get_inventory(model_id: str, settings: Settings) -> Inventory:
    """The inventory for a catalog id, a Hugging Face id or a local directory, or InventoryUnavailable."""
    entry = catalog.find(model_id)
    if entry is not None:
        return load_inventory(catalog.inventory_path(entry.id))
    source = resolve_source(model_id)
    out = _cache_path(source, settings)
    if out.is_file():
        return load_inventory(out)
    if not worker_stack_installed():
        raise InventoryUnavailable(
            source.model_id,
            "This model is not in the catalog and computing its inventory needs the worker extra "
            f"(torch, transformers, peft). Run `tuneboard inventory {source.model_id}` where it is installed.",
        )
    try:
        offloaded.cached_or_start(out, ["-m", "workers.inventory", source.model_id])
    except offloaded.Pending:
        raise InventoryUnavailable(source.model_id, "Computing the module inventory…", computing=True) from None
    except offloaded.Failed as exc:
        raise InventoryUnavailable(source.model_id, f"Could not build the module inventory: {exc}") from None
    return load_inventory(out)


def _cache_path(source: ModelSource, settings: Settings) -> Path:
    return settings.inventory_cache_dir / f"{source.cache_name}.json"


def cached_inventory(model_id: str, settings: Settings) -> Inventory | None:
    """The inventory if it is already at hand (catalog or cache), else None; never starts a computation."""
    entry = catalog.find(model_id)
    if entry is not None:
        return load_inventory(catalog.inventory_path(entry.id))
    try:
        source = resolve_source(model_id)
    except InventoryUnavailable:
        return None
    out = _cache_path(source, settings)
    return load_inventory(out) if out.is_file() else None


def forget_failure(model_id: str, settings: Settings) -> None:
    """Drop a cached failure so the next request tries again (after the user fixed the cause)."""
    offloaded.forget_failure(_cache_path(resolve_source(model_id), settings))
