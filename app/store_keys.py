"""What every artifact store shares: the key rules, the listing entry and the missing-object error.

Must not import torch or `workers`.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    """A key in canonical form ('a/b/c'); ValueError for empty keys and '.' or '..' parts."""
    parts = [p for p in key.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"invalid storage key {key!r}")
    return "/".join(parts)
