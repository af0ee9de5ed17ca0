"""`/vendor`: the front-end library files the pages load, and nothing else of node_modules.

node_modules holds whole packages (package.json files, sources, the lock file, packages nobody loads); only
the files on the allow-list are served, so the install's dependency tree and versions stay private. The list,
VENDOR_FILES, lives in app.bundled_files, since the wheel build reads it too: a wheel carries just these files.
Must not import torch or `workers`.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles

from app.bundled_files import VENDOR_FILES

__all__ = ["VENDOR_FILES", "VendorFiles"]


class VendorFiles(StaticFiles):
    """StaticFiles that answers 404 for any path not in the allow-list."""

    def __init__(self, *, allowed: frozenset[str] = VENDOR_FILES, **kwargs):
        super().__init__(**kwargs)
        self.allowed = allowed

    async def get_response(self, path: str, scope):
        """The file when it is on the allow-list, else 404 (as if the folder held nothing else)."""
        # `path` is already normalised by StaticFiles.get_path (no '..', OS separators).
        if path.replace("\\", "/") not in self.allowed:
            raise HTTPException(status_code=404)
        return await super().get_response(path, scope)
