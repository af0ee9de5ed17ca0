"""Where the dashboard's own files are: templates, static files, front-end libraries and migrations.

A checkout (and an editable install of it) keeps them in its top-level folders, the front-end libraries in
node_modules as `npm ci` installs them from package-lock.json. An installed wheel has no checkout beside it, so
the wheel carries a copy inside the package, in app/_bundled/ (hatch_build.py puts it there, only the front-end
files the pages load). This module is the one place that decides which of the two a process reads.

Standard library only: the wheel build loads this file by its path, without the project's dependencies.
Must not import torch or `workers`.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

PACKAGE_DIR = Path(__file__).resolve().parent
# Only a wheel has this folder: the build writes the copy into the wheel, never into the checkout.
BUNDLE_DIR = PACKAGE_DIR / "_bundled"
CHECKOUT_DIR = PACKAGE_DIR.parent

# Every front-end library file a page or /docs loads, relative to node_modules. A new <script> or <link> adds
# its file here: /vendor serves these and nothing else of node_modules, and the wheel carries exactly these.
VENDOR_FILES = frozenset({
    "htmx.org/dist/htmx.min.js",
    "uplot/dist/uPlot.iife.min.js",
    "uplot/dist/uPlot.min.css",
    "swagger-ui-dist/swagger-ui-bundle.js",
    "swagger-ui-dist/swagger-ui.css",
    "swagger-ui-dist/favicon-32x32.png",
})


class DashboardFiles(NamedTuple):
    """The folders (and Alembic's config file) the web app, the migrations and the CLI read."""

    templates: Path
    static: Path
    vendor: Path  # the folder VENDOR_FILES are relative to
    alembic_ini: Path
    migrations: Path


# Each field's place in a checkout, and in the wheel's bundle.
_IN_CHECKOUT = DashboardFiles(Path("templates"), Path("static"), Path("node_modules"), Path("alembic.ini"),
                              Path("migrations"))
_IN_BUNDLE = DashboardFiles(Path("templates"), Path("static"), Path("vendor"), Path("alembic.ini"),
                            Path("migrations"))


def installed_from_wheel() -> bool:
    """Whether this code runs from an installed wheel (its bundled copy) rather than from a checkout."""
    return BUNDLE_DIR.is_dir()


def dashboard_files() -> DashboardFiles:
    """The wheel's bundled copy when present, else the checkout's top-level folders."""
    if installed_from_wheel():
        return DashboardFiles(*(BUNDLE_DIR / place for place in _IN_BUNDLE))
    return DashboardFiles(*(CHECKOUT_DIR / place for place in _IN_CHECKOUT))


def child_process_dir() -> Path | None:
    """The folder Tuneboard's `python -m ...` child processes run in: the checkout when running from one (its
    packages first on their path, as ever); None for a wheel, whose packages are installed, so a child keeps
    its parent's folder and relative paths (and a .env file) mean the same to both."""
    return None if installed_from_wheel() else CHECKOUT_DIR


def wheel_contents() -> dict[str, str]:
    """What a wheel carries besides the code: each path relative to the checkout, mapped to its path in the
    wheel. Of node_modules, only the VENDOR_FILES."""
    bundle = f"{PACKAGE_DIR.name}/{BUNDLE_DIR.name}"
    contents = {}
    for field in DashboardFiles._fields:
        source = getattr(_IN_CHECKOUT, field).as_posix()
        target = f"{bundle}/{getattr(_IN_BUNDLE, field).as_posix()}"
        if field == "vendor":
            contents |= {f"{source}/{name}": f"{target}/{name}" for name in sorted(VENDOR_FILES)}
        else:
            contents[source] = target
    return contents
