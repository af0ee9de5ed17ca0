"""Shared test fixtures and the rule for missing services: skip on a laptop, fail under CI=true."""

from __future__ import annotations

import os
import shutil

import pytest

# `make test` runs two test processes on two cores, and most tests start more (Celery workers, torchrun ranks,
# servers). PyTorch's default of one compute thread per core makes every training process spin-wait for cores the
# others hold: the demo's 30 training steps took 520 s beside another busy test process with two threads each,
# 135 s with one. Set before torch is imported, here and in every process a test starts (they inherit it).
for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = os.environ.get("TUNEBOARD_CHROMIUM", "/usr/bin/chromium")


def require(available: bool, what: str) -> None:
    """Skip when a service or tool is missing on a developer machine; fail when CI must run the test."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true but is not available", pytrace=False)
    pytest.skip(f"{what} is not available")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Path of the Chromium binary the browser tests drive."""
    require(os.path.exists(CHROMIUM) or shutil.which("chromium") is not None, f"Chromium ({CHROMIUM})")
    return CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")


@pytest.fixture(scope="session", autouse=True)
def _test_models_are_under_a_model_root(tmp_path_factory):
    """Local model folders must lie under a model root (TUNEBOARD_MODEL_ROOTS): the tests build theirs in
    pytest's temporary folder, so that folder is a root, as an admin would list the folder of their models.
    Tests of the rule itself set their own roots."""
    from app.settings import get_settings

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNEBOARD_MODEL_ROOTS", str(tmp_path_factory.getbasetemp()))
        get_settings.cache_clear()
        yield
    get_settings.cache_clear()


def pytest_collection_modifyitems(items):
    """Tests marked `long` first, in their order: begun last, one would be the run's tail on one test process
    while the other sat idle (xdist hands the first tests to the first process, and the others steal)."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


pytest_plugins = ["tests.service_fixtures"]
