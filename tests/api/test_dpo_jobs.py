"""Preference tuning through the API: the `openai` SDK creates a DPO job unchanged (OpenAI's preference file and
`method={"type": "dpo", ...}`), a real worker trains it with TRL's DPOTrainer on a tiny model, and the job's
curves carry DPO's rewards. A method and a file that do not belong together are refused, naming the field.
"""

from __future__ import annotations

import time

import openai
import pytest
from openai.types.fine_tuning import FineTuningJob

from tests.api.conftest import create_job, upload
from tests.jobs.helpers import COLOURS, chat_records, wait_for_inventory

pytestmark = pytest.mark.one_database  # what the API refuses and a worker's run: no database question here

TERMINAL = {"succeeded", "failed", "cancelled"}
WRONG = {"blue": "purple", "green": "orange", "white": "brown", "black": "pink", "red": "grey", "yellow": "violet"}


def preference_records(count: int) -> list[dict]:
    """OpenAI's preference layout: the colour of a thing, answered right (preferred) and wrong."""
    records = []
    for i in range(count):
        thing, colour = COLOURS[i % len(COLOURS)]
        records.append({"input": {"messages": [{"role": "user", "content": f"What colour is {thing}?"}]},
                        "preferred_output": [{"role": "assistant", "content": colour}],
                        "non_preferred_output": [{"role": "assistant", "content": WRONG[colour]}]})
    return records


def test_the_sdk_creates_a_dpo_job_unchanged_and_a_worker_trains_it(sdk, start_worker, tiny_model_dir,
                                                                     tuneboard_env):
    wait_for_inventory(str(tiny_model_dir), tuneboard_env.settings)
    start_worker()
    pairs = upload(sdk, preference_records(24), name="pairs.jsonl")
    held_out = upload(sdk, preference_records(8), name="held-out.jsonl")
    job = sdk.fine_tuning.jobs.create(
        model=str(tiny_model_dir), training_file=pairs.id, validation_file=held_out.id, suffix="dpo",
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "batch_size": 4}}},
        extra_body={"lora": {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"},
                    "training": {"max_steps": 12, "save_steps": 6, "eval_steps": 6, "sequence_length": 64,
                                 "precision": "fp32", "logging_steps": 1, "learning_rate": 5e-3,
                                 "held_out_samples": 2}},
    )
    job = FineTuningJob.model_validate(job.to_dict())
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
    assert job.method.dpo.hyperparameters.batch_size == 4
    deadline = time.monotonic() + 300
    while job.status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
        job = sdk.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error

    stored = sdk.fine_tuning.jobs.retrieve(job.id).to_dict()
    assert stored["method"]["dpo"]["hyperparameters"]["loss_type"] == "sigmoid"
    points = sdk.get(f"/fine_tuning/jobs/{job.id}/metrics", cast_to=object)["data"]
    trained = [p for p in points if p.get("loss") is not None]
    assert [p["step"] for p in trained] == list(range(1, 13))
    assert all({"rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy"} <= set(p) for p in trained)
    evaluated = [(p["step"], p["eval_reward_margin"], p["eval_reward_accuracy"]) for p in points
                 if p.get("eval_reward_margin") is not None]
    # Step 0 is the reference itself (the fresh adapter changes nothing): margin 0. Training widens it.
    assert [step for step, _, _ in evaluated] == [0, 6, 12]
    assert evaluated[0][1] == pytest.approx(0.0, abs=1e-6)
    assert evaluated[-1][1] > 0.2 and evaluated[-1][2] >= 0.75, evaluated
    assert stored["progress"]["step"] == 12


def test_a_method_and_a_file_that_do_not_belong_together_are_refused(sdk):
    pairs = upload(sdk, preference_records(4), name="pairs.jsonl")
    chats = upload(sdk, chat_records(4), name="chats.jsonl")
    with pytest.raises(openai.BadRequestError) as caught:
        create_job(sdk, pairs.id)  # supervised by default
    assert caught.value.param == "training_file" and caught.value.code == "invalid_method_data"
    assert "preference pairs, which train with method dpo" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        create_job(sdk, chats.id, method={"type": "dpo"})
    assert caught.value.param == "training_file" and "holds chat records" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        create_job(sdk, pairs.id, method={"type": "dpo"}, validation_file=chats.id)
    assert caught.value.param == "validation_file"
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        create_job(sdk, pairs.id, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}})
    assert "beta" in caught.value.message
    job = create_job(sdk, pairs.id, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": "auto"}}})
    assert job.method.dpo.hyperparameters.beta == 0.1  # TRL's default
