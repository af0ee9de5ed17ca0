"""The one gate between a value (from a request or the database) and a path on disk or a storage key.

`inside(root, ...)` is the only way Tuneboard builds a path from such a value: it refuses what could name
something outside `root` (absolute paths, `..`, NUL, backslashes, characters that read or normalise as a
slash or a dot) and then checks, symlinks resolved, that the result really lies under `root`.
`checked_key` applies the same rules to a storage key, for stores that have no disk (S3).
Must not import torch or `workers`.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

# Longest file name Linux, macOS and S3 key parts accept; a longer one would fail deep in the OS instead.
MAX_PART_BYTES = 255
# Slashes with no compatibility mapping to '/' that still read as one (NFKC catches U+FF0F, U+FF3C, U+FE68).
_SLASH_LOOKALIKES = frozenset("\u2215\u2044\u29f8\u29f9\u2216\u29f5")


class UnsafePath(ValueError):
    """A value that cannot become part of a path or key: it could lead outside its root."""

    def __init__(self, value: str, why: str, *, what: str = "path"):
        super().__init__(f"invalid {what} {_shown(value)}: {why}")
        self.value, self.why = value, why


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:80] + "…")


def _part_problem(part: str) -> str | None:
    if any(ord(c) < 32 or ord(c) == 127 for c in part):
        return "it contains a control character (NUL, newline, ...)"
    if "\\" in part:
        return "it contains a backslash"
    if _SLASH_LOOKALIKES & set(part):
        return "it contains a character that looks like a slash"
    normalised = unicodedata.normalize("NFKC", part)
    if normalised in (".", "..") or part in (".", ".."):
        return "'.' and '..' are not names"
    if "/" in normalised or "\\" in normalised:
        return "it contains a character that reads as a slash"
    if len(part.encode("utf-8", "surrogatepass")) > MAX_PART_BYTES:
        return f"one part is longer than {MAX_PART_BYTES} bytes"
    return None


def checked_parts(value: str) -> list[str]:
    """The '/'-separated parts of a relative path or key, each checked; UnsafePath naming the problem."""
    if not isinstance(value, str) or not value:
        raise UnsafePath(str(value), "it is empty")
    if value.startswith("/"):
        raise UnsafePath(value, "it is an absolute path")
    parts = [part for part in value.split("/") if part]
    if not parts:
        raise UnsafePath(value, "it is empty")
    for part in parts:
        problem = _part_problem(part)
        if problem:
            raise UnsafePath(value, problem)
    return parts


def checked_key(key: str) -> str:
    """A storage key in canonical form ('a/b/c') once it passed the rules above.

    A key is a name in the store, not a path: leading and doubled slashes are dropped, not refused."""
    return "/".join(checked_parts(key.lstrip("/") if isinstance(key, str) else key))


def inside(root: Path, *relative: str) -> Path:
    """`root` joined with the relative values, refused (UnsafePath) unless the result stays under `root`.

    The check runs on the resolved path, so a symlink inside the root that points out of it is refused too.
    """
    parts = [part for value in relative for part in checked_parts(value)]
    candidate = Path(root).joinpath(*parts)
    resolved_root = Path(root).resolve()
    resolved = candidate.resolve()
    if resolved == resolved_root or not resolved.is_relative_to(resolved_root):
        raise UnsafePath("/".join(relative), f"it leads outside {Path(root).name or root}/")
    return candidate


def is_within(path: Path, folder: Path) -> bool:
    """Whether `path` (resolved) is `folder` or lies under it (resolved)."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())
