"""What every artifact store shares: the key rules, the listing entry and the missing-object error.

Must not import torch or `workers`.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.safe_paths import UnsafePath, checked_key


class ArtifactMissing(FileNotFoundError):
    """No object is stored under this key."""

    def __init__(self, key: str):
        super().__init__(f"no artifact stored under {key!r}")
        self.key = key


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    size: int


def safe_key(key: str) -> str:
    """A key in canonical form ('a/b/c'); UnsafePath (a ValueError) for anything that could leave the store."""
    try:
        return checked_key(key)
    except UnsafePath as exc:
        raise UnsafePath(key, exc.why, what="storage key") from None
