"""`GET /v1/fine_tuning/jobs/{id}/metrics?max_points=N` on a 100,000-step job written straight into the database:
at most N points per series, both ends and every bucket's extremes kept. How fast it answers (from SQL) is
bench/history.py's `max_points=500` case, measured against trivial endpoints in the same run, not a stopwatch here.
"""

from __future__ import annotations

import math
import random

import httpx
import pytest
from sqlalchemy import insert

from tests.api.conftest import create_job, upload

STEPS = 100_000
EVAL_EVERY = 500
SPIKE, DIP, EVAL_DIP = 50_001, 77_777, 90_000
SERIES = ("loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_second")


def synthetic_run(job_id: str) -> list[dict]:
    """A noisy falling loss with one spike and one dip, sparse evals, a flat learning rate."""
    rng = random.Random(0)
    rows = []
    for step in range(1, STEPS + 1):
        loss = 2.0 * math.exp(-step / 30_000) + 0.3 + rng.uniform(-0.05, 0.05)
        eval_loss = 2.0 * math.exp(-step / 30_000) + 0.35 if step % EVAL_EVERY == 0 else None
        rows.append({"job_id": job_id, "step": step, "epoch": step / 1000, "loss": loss, "eval_loss": eval_loss,
                     "learning_rate": 1e-4, "grad_norm": rng.uniform(0.5, 1.5),
                     "tokens_per_second": rng.uniform(900, 1100), "created_at": 1.7e9 + step})
    rows[SPIKE - 1]["loss"] = 9.0
    rows[DIP - 1]["loss"] = 0.001
    rows[EVAL_DIP - 1]["eval_loss"] = 0.002
    return rows


@pytest.fixture
def long_job(sdk, tuneboard_env) -> tuple[str, list[dict]]:
    """A job with 100,000 logged steps, bulk-inserted."""
    from app.db import new_session
    from app.tables import Metric

    job_id = create_job(sdk, upload(sdk).id).id
    rows = synthetic_run(job_id)
    with new_session() as session:
        session.execute(insert(Metric), rows)
        session.commit()
    return job_id, rows


def get_metrics(live_server, account, job_id: str, **params) -> dict:
    response = httpx.get(f"{live_server.url}/v1/fine_tuning/jobs/{job_id}/metrics", params=params,
                         headers=account.headers, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_max_points_keeps_each_series_small_and_its_shape(live_server, account, long_job):
    job_id, rows = long_job
    body = get_metrics(live_server, account, job_id, max_points=500)
    assert body["downsampled"] is True and body["total_points"] == STEPS and body["has_more"] is False
    points = body["data"]
    steps = [p["step"] for p in points]
    assert steps == sorted(set(steps))
    for series in SERIES:
        assert sum(p[series] is not None for p in points) <= 500, series

    by_step = {p["step"]: p for p in points}
    assert steps[0] == 1 and steps[-1] == STEPS
    assert by_step[1]["loss"] == rows[0]["loss"] and by_step[STEPS]["loss"] == rows[-1]["loss"]
    assert by_step[DIP]["loss"] == 0.001 and by_step[SPIKE]["loss"] == 9.0  # global min and max
    assert by_step[EVAL_DIP]["eval_loss"] == 0.002
    assert all(p["epoch"] == p["step"] / 1000 for p in points)

    # Every bucket keeps its own lowest and highest loss exactly (the M4 rule).
    width = body["bucket_steps"]
    for start in range(1, STEPS + 1, width):
        bucket = rows[start - 1:start - 1 + width]
        kept = [by_step[r["step"]]["loss"] for r in bucket
                if r["step"] in by_step and by_step[r["step"]]["loss"] is not None]
        assert min(kept) == min(r["loss"] for r in bucket) and max(kept) == max(r["loss"] for r in bucket)

    # A flat series keeps one point per bucket end, not every tie.
    assert sum(p["learning_rate"] is not None for p in points) <= 2 * math.ceil(STEPS / width)


def test_small_ranges_and_the_default_answer_are_unchanged(live_server, account, long_job):
    job_id, rows = long_job
    tail = get_metrics(live_server, account, job_id, max_points=500, after_step=STEPS - 200)
    assert tail["downsampled"] is False and [p["step"] for p in tail["data"]] == list(range(STEPS - 199, STEPS + 1))
    assert tail["data"][-1]["grad_norm"] == rows[-1]["grad_norm"]

    tail_sampled = get_metrics(live_server, account, job_id, max_points=40, after_step=STEPS - 1000)
    assert tail_sampled["downsampled"] is True and tail_sampled["data"][0]["step"] == STEPS - 999
    assert all(sum(p[s] is not None for p in tail_sampled["data"]) <= 40 for s in SERIES)

    default = get_metrics(live_server, account, job_id)
    assert "downsampled" not in default and default["has_more"] is True
    assert [p["step"] for p in default["data"]] == list(range(1, 10_001))
