"""Fixtures of the inference tests: a tiny model that reads thousands of positions, for replies long enough to
leave in the middle of."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.api.conftest import upload
from tests.jobs.helpers import chat_records, wait_for_inventory


@pytest.fixture(scope="session")
def long_context_model_dir(tmp_path_factory) -> Path:
    """The tiny Llama with 16,384 positions (RoPE: no more weights), built once per session."""
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama-long"), context=16_384)


def trained_tiny_job(sdk, tiny_model_dir: Path, tuneboard_env, records: int = 16, **training):
    """A job on the tiny model trained to the end by the test's worker (6 steps, checkpoints at 3 and 6, suffix
    "tiny"), as the SDK returns it."""
    wait_for_inventory(str(tiny_model_dir), tuneboard_env.settings)
    train = upload(sdk, chat_records(records))
    job = sdk.fine_tuning.jobs.create(
        model=str(tiny_model_dir), training_file=train.id, suffix="tiny",
        extra_body={"lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]},
                    "training": {"max_steps": 6, "save_steps": 3, "batch_size": 4, "sequence_length": 64,
                                 "precision": "fp32", "logging_steps": 1, "learning_rate": 5e-3, **training}})
    deadline = time.monotonic() + 240
    while job.status not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.5)
        job = sdk.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    return job
