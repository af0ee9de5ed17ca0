"""DPO jobs under the faults supervised jobs survive, with real Celery worker processes on a real Redis:
a worker killed with SIGKILL mid-run (the job resumes from its checkpoint on another worker and its
curves, rewards included, run 1..N exactly once) and a cancel (the loop stops itself within seconds).
"""

from __future__ import annotations

from tests.api.test_dpo_jobs import preference_records
from tests.jobs.helpers import (
    assert_resumed_by,
    cancel_and_assert_the_loop_stopped,
    last_checkpoint_step,
    launch,
    metric_steps,
    upload,
    wait_for,
)

LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
DPO = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1, "batch_size": 2}}}


def _training(**overrides) -> dict:
    base = {"learning_rate": 5e-3, "sequence_length": 64, "precision": "fp32", "logging_steps": 1,
            "warmup_ratio": 0.0, "lr_scheduler": "constant"}
    return {**base, **overrides}


def test_a_dpo_worker_killed_mid_run_resumes_from_its_checkpoint_on_another_worker(client, start_worker,
                                                                                  model_dir):
    doomed = start_worker(name="doomed")
    pairs = upload(client, preference_records(24), name="pairs.jsonl")
    job = launch(client, model_dir, pairs["id"], method=DPO, lora=LORA,
                 training=_training(max_steps=60, save_steps=10))
    wait_for(client, job["id"], lambda j: j["progress"]["step"] >= 25, timeout=300, what="step 25")
    doomed.kill()
    last_checkpoint = last_checkpoint_step(client, job["id"])
    start_worker(name="rescuer")
    assert_resumed_by(client, job["id"], "rescuer", last_checkpoint, timeout=400)
    points = [p for p in metric_steps(client, job["id"]) if p.get("loss") is not None]
    assert [p["step"] for p in points] == list(range(1, 61))
    # The resumed half is still DPO (its rewards logged), not a supervised run restarted on the pairs.
    assert all(p.get("reward_margin") is not None for p in points), points[-1]


def test_cancelling_a_dpo_job_stops_it_within_seconds_and_keeps_its_checkpoint(client, start_worker, model_dir):
    start_worker()
    pairs = upload(client, preference_records(24), name="pairs.jsonl")
    job = launch(client, model_dir, pairs["id"], method=DPO, lora=LORA,
                 training=_training(max_steps=5000, save_steps=10))
    wait_for(client, job["id"], lambda j: j["progress"]["step"] >= 12, timeout=300, what="step 12")
    cancel_and_assert_the_loop_stopped(client, job["id"])
