"""`tuneboard inventory`: compute and cache the module inventory of a model outside the catalog, in a
`python -m workers.inventory` process (it needs the worker extra). Must not import torch or `workers`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from app.cli.common import fail
from app.settings import get_settings


def cmd_inventory(args: argparse.Namespace) -> int:
    """Compute and cache the module inventory of a model outside the catalog (needs the worker extra)."""
    from app.base_models.inventories import resolve_source, worker_stack_installed

    if not worker_stack_installed():
        return fail("computing inventories needs the worker extra: pip install 'tuneboard[worker]'")
    source = resolve_source(args.model)
    out = get_settings().inventory_cache_dir / f"{source.cache_name}.json"
    result = subprocess.run([sys.executable, "-P", "-m", "workers.inventory", source.model_id, "--out", str(out)])
    if result.returncode == 0:
        print(f"wrote {out}")
    return result.returncode
