"""`/vendor`: the front-end library files the pages load, from node_modules, and nothing else of it.

node_modules holds whole packages (package.json files, sources, the lock file, packages nobody loads); only
the files named here are served, so the install's dependency tree and versions stay private.
Must not import torch or `workers`.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles

# Every file a page or /docs loads, relative to node_modules. A new <script> or <link> adds its file here.
VENDOR_FILES = frozenset({
    "htmx.org/dist/htmx.min.js",
    "uplot/dist/uPlot.iife.min.js",
    "uplot/dist/uPlot.min.css",
    "swagger-ui-dist/swagger-ui-bundle.js",
    "swagger-ui-dist/swagger-ui.css",
    "swagger-ui-dist/favicon-32x32.png",
})


class VendorFiles(StaticFiles):
    """StaticFiles that answers 404 for any path not in the allow-list."""

    def __init__(self, *, allowed: frozenset[str] = VENDOR_FILES, **kwargs):
        super().__init__(**kwargs)
        self.allowed = allowed

    async def get_response(self, path: str, scope):
        """The file when it is on the allow-list, else 404 (as if node_modules held nothing else)."""
        # `path` is already normalised by StaticFiles.get_path (no '..', OS separators).
        if path.replace("\\", "/") not in self.allowed:
            raise HTTPException(status_code=404)
        return await super().get_response(path, scope)
