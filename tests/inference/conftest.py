"""Fixtures of the inference tests: a tiny model that reads thousands of positions, for replies long enough to
leave in the middle of."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def long_context_model_dir(tmp_path_factory) -> Path:
    """The tiny Llama with 16,384 positions (RoPE: no more weights), built once per session."""
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama-long"), context=16_384)
