"""Hatchling build hook: puts the dashboard's own files into the wheel (and the front-end ones into the sdist).

An installed wheel has no checkout beside it, so the wheel carries the templates, static files, migrations,
alembic.ini and the front-end library files the pages load (VENDOR_FILES, from node_modules as `npm ci`
installs them) under app/_bundled/, where app/bundled_files.py looks first. The list comes from that module,
loaded by its path: the build runs without the project's dependencies. An editable install gets nothing: it
reads the checkout's folders. The source distribution carries the VENDOR_FILES at their node_modules paths,
so a wheel builds from it without npm.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


def _bundled_files(root: Path) -> ModuleType:
    path = root / "app" / "bundled_files.py"
    spec = importlib.util.spec_from_file_location("_tuneboard_bundled_files", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class BundledFilesHook(BuildHookInterface):
    """Adds the dashboard's files to the wheel (not an editable one) and the front-end files to the sdist."""

    def initialize(self, version: str, build_data: dict) -> None:
        """Map each file into the artifact; fail, naming what is missing, rather than build one without it."""
        if self.target_name == "wheel" and version == "editable":
            return
        root = Path(self.root)
        contents = _bundled_files(root).wheel_contents()
        if self.target_name == "sdist":
            contents = {source: source for source in contents if source.startswith("node_modules/")}
        missing = sorted(source for source in contents if not (root / source).exists())
        vendor_missing = [source for source in missing if source.startswith("node_modules/")]
        if vendor_missing:
            raise RuntimeError(
                "node_modules lacks the front-end files the pages load, which the package must carry: "
                + ", ".join(vendor_missing) + ". Run `npm ci` (from package-lock.json) in " + str(root)
                + " before building.")
        if missing:
            raise RuntimeError("the checkout lacks " + ", ".join(missing) + ", which the package must carry.")
        build_data["force_include"].update({str(root / source): target for source, target in contents.items()})
