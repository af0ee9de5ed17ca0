"""The committed catalog inventories are what the installed torch, transformers and peft build today.

Each is rebuilt from its committed config on the meta device and compared with the committed JSON, so an
upgrade that renames a module, changes a shape or changes PEFT's rules for a model type fails here instead
of silently skewing estimates. Regenerate with `python -m workers.inventory --catalog`. `generated_with` records the
library versions that built the committed file: a newer release that builds the same inventory passes.
"""

from __future__ import annotations

import json

import pytest

from app.estimator import catalog
from tests.estimator.peft_reference import CATALOG_IDS, quiet_warnings
from workers.inventory import _load_catalog_config, build_inventory


@pytest.mark.parametrize("model_id", CATALOG_IDS)
def test_committed_inventory_equals_a_fresh_build(model_id):
    committed = json.loads(catalog.inventory_path(model_id).read_text())
    with quiet_warnings():
        fresh = json.loads(json.dumps(build_inventory(_load_catalog_config(model_id), model_id)))
    changed = [key for key in fresh if key != "generated_with" and fresh[key] != committed.get(key)]
    assert not changed, (
        f"{model_id}: the committed inventory differs from what the installed libraries build in {changed} "
        f"(committed {committed.get('generated_with')}, installed {fresh['generated_with']}); run "
        "`python -m workers.inventory --catalog` and review the diff"
    )
