"""Finding a model's module inventory: committed for catalog models, computed once and cached otherwise.

Computing needs torch, so it runs in a separate `python -m workers.inventory` process; the web app
only starts it and reads the result. Must not import torch or `workers`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from app.settings import Settings
from app.training import catalog
from app.training.inventory import Inventory, load_inventory

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_running: dict[str, subprocess.Popen] = {}
_lock = threading.Lock()


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


def _start(source: ModelSource, out: Path, error_file: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    # The child keeps its own copy of the log's file descriptor; ours closes right away.
    with error_file.with_suffix(".log").open("w") as log:
        _running[source.cache_name] = subprocess.Popen(
            [sys.executable, "-m", "workers.inventory", source.model_id, "--out", str(out)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent,
        )


def _failure_reason(log_file: Path) -> str:
    lines = [line for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^\w*(Error|Exception)\b", line)]
    return (errors or lines or ["the inventory process exited without output"])[-1][:500]


def get_inventory(model_id: str, settings: Settings) -> Inventory:
    """The inventory for a catalog id, a Hugging Face id or a local directory, or InventoryUnavailable."""
    entry = catalog.find(model_id)
    if entry is not None:
        return load_inventory(catalog.inventory_path(entry.id))
    source = resolve_source(model_id)
    out = settings.inventory_cache_dir / f"{source.cache_name}.json"
    error_file = out.with_suffix(".error")
    with _lock:
        process = _running.get(source.cache_name)
        if process is not None and process.poll() is not None:
            del _running[source.cache_name]
            if process.returncode != 0:
                error_file.write_text(_failure_reason(error_file.with_suffix(".log")))
        if out.is_file():
            return load_inventory(out)
        if process is not None and process.poll() is None:
            raise InventoryUnavailable(source.model_id, "Computing the module inventory…", computing=True)
        if error_file.is_file():
            raise InventoryUnavailable(
                source.model_id, f"Could not build the module inventory: {error_file.read_text()}"
            )
        if not worker_stack_installed():
            raise InventoryUnavailable(
                source.model_id,
                "This model is not in the catalog and computing its inventory needs the worker extra "
                f"(torch, transformers, peft). Run `tuneboard inventory {source.model_id}` where it is installed.",
            )
        _start(source, out, error_file)
        raise InventoryUnavailable(source.model_id, "Computing the module inventory…", computing=True)


def cached_inventory(model_id: str, settings: Settings) -> Inventory | None:
    """The inventory if it is already at hand (catalog or cache), else None; never starts a computation."""
    entry = catalog.find(model_id)
    if entry is not None:
        return load_inventory(catalog.inventory_path(entry.id))
    try:
        source = resolve_source(model_id)
    except InventoryUnavailable:
        return None
    out = settings.inventory_cache_dir / f"{source.cache_name}.json"
    return load_inventory(out) if out.is_file() else None


def forget_failure(model_id: str, settings: Settings) -> None:
    """Drop a cached failure so the next request tries again (after the user fixed the cause)."""
    source = resolve_source(model_id)
    (settings.inventory_cache_dir / f"{source.cache_name}.error").unlink(missing_ok=True)
