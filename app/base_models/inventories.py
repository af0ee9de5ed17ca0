"""Finding a model's module inventory: committed for catalog models, computed once and cached otherwise.

Computing needs torch, so it runs in a separate `python -m workers.inventory` process that `app.fleet.offloaded`
queues (one at a time per host, with a time limit); the web app only asks for it and reads the result.
Which model ids may name a local folder is `app.base_models.model_ids`'s rule. Must not import torch or `workers`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

from app.base_models import hub_lookup
from app.base_models.model_ids import UnknownModel, resolve_model_id
from app.estimator import catalog
from app.estimator.config_limits import FAILURE_PREFIX, ConfigTooLarge, check_config_size
from app.estimator.inventory import INVENTORY_FORMAT, Inventory, load_inventory
from app.fleet import offloaded
from app.safe_paths import inside
from app.settings import Settings, get_settings

# A config.json larger than this is not a config (real ones are a few kB).
MAX_CONFIG_BYTES = 1024 * 1024


class InventoryUnavailable(Exception):
    """No inventory: `computing` is True while a worker process builds it, else `message` says why.

    `refused` is True when the model itself is refused (unknown, or a config of absurd size), so launching
    a job on it is refused too; otherwise the inventory is merely not known here yet.
    """

    def __init__(self, model_id: str, message: str, *, computing: bool = False, status: int = 404,
                 code: str = "model_not_found", refused: bool = False, suggestions: list[str] | None = None):
        super().__init__(message)
        self.model_id = model_id
        self.message = message
        self.computing = computing
        self.status = 202 if computing else status
        self.code = "computing" if computing else code
        self.refused = refused
        self.suggestions = suggestions or []  # catalog ids that look like a mistyped one


@dataclass(frozen=True, slots=True)
class ModelSource:
    model_id: str
    cache_name: str
    is_local: bool


def resolve_source(model_id: str, settings: Settings | None = None) -> ModelSource:
    """Validate a model id (hub id, or a model folder under a model root) and name its cache file."""
    settings = settings or get_settings()
    try:
        ref = resolve_model_id(model_id, settings)
    except UnknownModel as exc:
        raise InventoryUnavailable(exc.model_id, exc.message, refused=True) from None
    if ref.local_dir is None:
        return ModelSource(ref.model_id, _short(catalog.slug(ref.model_id)), False)
    try:
        mtime_ns = (ref.local_dir / "config.json").stat().st_mtime_ns
    except OSError:  # removed since the check a moment ago
        raise InventoryUnavailable(model_id, UnknownModel(model_id).message, refused=True) from None
    # The config's mtime is part of the key so an edited config is recomputed.
    digest = hashlib.sha1(f"{ref.local_dir}:{mtime_ns}".encode()).hexdigest()[:12]
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", ref.local_dir.name).lstrip(".")  # the digest tells folders apart
    return ModelSource(str(ref.local_dir), f"local--{_short(readable)}--{digest}", True)


def _short(name: str) -> str:
    # Cache file names stay far below the 255-byte limit whatever the id's length.
    if len(name) <= 120:
        return name
    return name[:80] + "--" + hashlib.sha1(name.encode()).hexdigest()[:12]


def worker_stack_installed() -> bool:
    """Whether torch and transformers are importable here, checked without importing them."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers", "peft"))


def _check_local_config(source: ModelSource) -> None:
    """Refuse a local config of absurd size before any process builds it (hub configs: the child checks)."""
    config_file = Path(source.model_id) / "config.json"
    try:
        if config_file.stat().st_size > MAX_CONFIG_BYTES:
            raise InventoryUnavailable(source.model_id, f"the model's config.json is larger than "
                                       f"{MAX_CONFIG_BYTES:,} bytes; real configs are a few kB",
                                       status=422, code="model_too_large", refused=True)
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return  # not for us to judge: the child reports what is wrong with it
    if not isinstance(config, dict):
        return
    try:
        check_config_size(config)
    except ConfigTooLarge as exc:
        raise InventoryUnavailable(source.model_id, str(exc), status=422, code="model_too_large",
                                   refused=True) from None


def get_inventory(model_id: str, settings: Settings) -> Inventory:
    """The inventory for a catalog id, a Hugging Face id or a local directory, or InventoryUnavailable."""
    entry = catalog.find(model_id)
    if entry is not None:
        return load_inventory(catalog.inventory_path(entry.id))
    source = resolve_source(model_id, settings)
    out = _cache_path(source, settings)
    if out.is_file():
        return load_inventory(out)
    if source.is_local:
        _check_local_config(source)
    elif not out.with_suffix(".error").is_file():
        _check_on_hub(source.model_id)
    if not worker_stack_installed():
        raise InventoryUnavailable(
            source.model_id,
            "This model is not in the catalog and computing its inventory needs the worker extra "
            f"(torch, transformers, peft). Run `tuneboard inventory {source.model_id}` where it is installed.",
        )
    try:
        offloaded.cached_or_start(out, ["-m", "workers.inventory", source.model_id], settings)
    except offloaded.Pending:
        raise InventoryUnavailable(source.model_id, "Computing the module inventory…", computing=True) from None
    except offloaded.Failed as exc:
        reason = str(exc)
        if reason.startswith(FAILURE_PREFIX):
            raise InventoryUnavailable(source.model_id, reason.removeprefix(FAILURE_PREFIX).strip(), status=422,
                                       code="model_too_large", refused=True) from None
        raise InventoryUnavailable(source.model_id, f"Could not build the module inventory: {reason}") from None
    return load_inventory(out)


def _check_on_hub(model_id: str) -> None:
    """Refuse a hub id the hub does not know, and say so at once when the hub cannot be asked; a model in this
    host's Hugging Face cache is computed from there without asking."""
    if hub_lookup.in_local_cache(model_id):
        return
    answer, why = hub_lookup.look_up(model_id)
    if answer == "exists":
        return
    suggestions = hub_lookup.similar_catalog_ids(model_id)
    hint = f" Did you mean {' or '.join(suggestions)}?" if suggestions else ""
    # Offline is a 404 as well (not found from here; the code tells it apart), as when a child failed to fetch it.
    if answer == "missing":
        raise InventoryUnavailable(model_id, f"No model {model_id!r} on the Hugging Face hub: {why}. Check the "
                                   f"spelling (owner/name).{hint}", refused=True, suggestions=suggestions)
    raise InventoryUnavailable(model_id, f"Offline: cannot look up {model_id!r} on the Hugging Face hub ({why}), "
                               f"and it is not in this host's model cache.{hint} Check the spelling, or connect "
                               "this host to huggingface.co and try again.", status=404, code="hub_unreachable",
                               suggestions=suggestions)


def _cache_path(source: ModelSource, settings: Settings) -> Path:
    # The format is in the name, so an inventory cached by an older Tuneboard is computed again, not misread.
    return inside(settings.inventory_cache_dir, f"{source.cache_name}.v{INVENTORY_FORMAT}.json")


def cached_inventory(model_id: str, settings: Settings) -> Inventory | None:
    """The inventory if it is already at hand (catalog or cache), else None; never starts a computation."""
    entry = catalog.find(model_id)
    if entry is not None:
        return load_inventory(catalog.inventory_path(entry.id))
    try:
        source = resolve_source(model_id, settings)
    except InventoryUnavailable:
        return None
    out = _cache_path(source, settings)
    return load_inventory(out) if out.is_file() else None


def forget_failure(model_id: str, settings: Settings) -> None:
    """Drop a cached failure so the next request tries again (after the user fixed the cause)."""
    hub_lookup.forget(model_id.strip())
    try:
        offloaded.forget_failure(_cache_path(resolve_source(model_id, settings), settings))
    except InventoryUnavailable:
        pass  # an unknown model has no cached failure to forget
