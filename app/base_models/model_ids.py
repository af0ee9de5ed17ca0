"""What a model id may name: a Hugging Face hub id, or a model folder under a root the admin configured.

The one rule, shared by the web app (inventories, previews, launch) and the workers (loading weights), for
when a model id is a folder on this machine: an absolute path that resolves (symlinks followed) under one of
`settings.model_root_dirs`, outside every folder Tuneboard writes users' data to (artifacts, scratch, caches),
holding a config.json. Everything else that is not a hub id gets the same "unknown model" answer whether
or not the path exists, so the answers tell nothing about the server's folders.
Must not import torch or `workers`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from app.safe_paths import is_within
from app.settings import Settings

# The hub's longest id is a 96-character name under a namespace; anything far longer is not one.
MAX_MODEL_ID_CHARS = 256
# ASCII only (the hub's alphabet): `\w` would also let look-alike letters through.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?", re.ASCII)
MODEL_ID_HINT = ("give a Hugging Face model id (org/name) or the path of a folder with a config.json under a "
                 "model root the admin configured (TUNEBOARD_MODEL_ROOTS)")


class UnknownModel(ValueError):
    """Neither a hub id nor a model folder under a model root; the message is the same for every such id."""

    def __init__(self, model_id: str):
        shown = model_id if len(model_id) <= 120 else model_id[:120] + "…"
        self.model_id = model_id
        self.message = f"Unknown model {shown!r}: {MODEL_ID_HINT}."
        super().__init__(self.message)


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A model id that passed the rule: a hub id (local_dir None) or a model folder (resolved)."""

    model_id: str
    local_dir: Path | None


def is_hub_id(model_id: str) -> bool:
    """Whether the id has the shape of a Hugging Face hub id ('name' or 'owner/name')."""
    # The hub itself refuses '--' and '..' in names; '--' would also read as one of our cache names.
    return (len(model_id) <= MAX_MODEL_ID_CHARS and _HUB_ID.fullmatch(model_id) is not None
            and ".." not in model_id and "--" not in model_id)


def never_model_folders(settings: Settings) -> list[Path]:
    """Folders whose content users control or Tuneboard writes: never a model, even under a root."""
    return [settings.artifacts_dir, settings.scratch_dir, settings.inventory_cache_dir,
            settings.data_dir / "previews", settings.embedded_redis_dir]


def resolve_model_id(model_id: str, settings: Settings) -> ModelRef:
    """The hub id or the model folder a model id names; UnknownModel for anything else."""
    model_id = model_id.strip()
    if model_id.startswith("/"):
        return ModelRef(model_id, _model_folder(model_id, settings))
    if is_hub_id(model_id):
        return ModelRef(model_id, None)
    raise UnknownModel(model_id)


def _model_folder(path: str, settings: Settings) -> Path:
    if (len(path) > 4096 or "\\" in path or any(ord(c) < 32 for c in path)
            or ".." in Path(path).parts):
        raise UnknownModel(path)
    try:
        folder = Path(path).resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a name the OS refuses
        raise UnknownModel(path) from None
    # Where the path points decides, not how it is spelled: symlinks are followed before the check.
    if not any(folder != root and folder.is_relative_to(root) for root in settings.model_root_dirs):
        raise UnknownModel(path)
    if any(is_within(folder, never) for never in never_model_folders(settings)):
        raise UnknownModel(path)
    try:
        has_config = (folder / "config.json").is_file()
    except OSError:
        has_config = False
    if not has_config:
        raise UnknownModel(path)
    return folder
