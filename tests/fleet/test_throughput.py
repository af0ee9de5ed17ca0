"""Each queue's measured speed: stored finished runs re-costed into achieved FLOP/s, per device class.

Real database rows (SQLite and PostgreSQL), written as a finished worker leaves them.
"""

from __future__ import annotations

import pytest

from app.db import new_session
from app.fleet import throughput
from app.fleet.worker_registry import WorkerInfo
from tests.jobs.helpers import stored_job

MODEL = {"fixed": 1e9, "per_length": 1e5, "forward_fixed": 4e8, "forward_per_length": 3e4}


def _finished(team_id: str, *, queue: str = "gpu", device: str = "cuda:0 (NVIDIA H200)", model: str = "m",
              runtime: float, tokens: float = 1e6, length_sum: float = 1e8, **fields) -> str:
    fields.setdefault("status", "succeeded")
    return stored_job(team_id, queue=queue, device=device, model=model, finished_at=1e9 + runtime,
                      estimate={"training_time": {"flops_model": MODEL, "flops": 0, "queues": []}},
                      final_metrics={"train_runtime": runtime, "compute_training_tokens": tokens,
                                     "compute_training_length_sum": length_sum}, **fields)


def _worker(device: str) -> WorkerInfo:
    return WorkerInfo(hostname="w", queues=("gpu",), device=device, gpu_memory_bytes=None, seen_at=0)


@pytest.mark.parametrize(("label", "expected"), [
    ("cuda:0 (NVIDIA H200)", "NVIDIA H200"), ("NVIDIA H200", "NVIDIA H200"), ("cpu (2 threads)", "cpu"),
    ("cpu", "cpu"), (None, "unknown"),
])
def test_device_class_joins_a_jobs_device_label_to_a_workers_gpu_name(label, expected):
    assert throughput.device_class(label) == expected


def test_defaults_are_stated_per_device():
    assert throughput.default_rate("NVIDIA H200") == pytest.approx(989e12 * 0.35)
    assert throughput.default_rate("NVIDIA A100-SXM4-80GB") == pytest.approx(312e12 * 0.35)
    assert throughput.default_rate("cpu") == throughput.CPU_DEFAULT_FLOPS
    assert throughput.default_rate("Some Future GPU") == throughput.GENERIC_GPU_FLOPS


def test_rates_are_fitted_per_device_class_on_this_queue_only(account):
    team = account.team_id
    flops = 1e9 * 1e6 + 1e5 * 1e8  # re-costed from the computed tokens: fixed·tokens + per_length·length_sum
    # Runs that took 0.5 s a step plus their FLOPs at 1e14 FLOP/s: the fit recovers both.
    for steps in (10, 40, 100):
        _finished(team, runtime=steps * 0.5 + flops / 1e14, step=steps)
    _finished(team, runtime=40, step=10, device="cpu (2 threads)")
    _finished(team, runtime=7, step=10, queue="elsewhere")  # another queue does not count
    _finished(team, runtime=10, step=10, status="failed")
    _finished(team, runtime=10, step=10, attempts=2)  # resumed: its runtime covers the last attempt only
    with new_session() as session:
        rates = throughput.measured_rates(session, "gpu")
        assert rates["NVIDIA H200"].runs == 3
        assert rates["NVIDIA H200"].flops_per_second == pytest.approx(1e14, rel=1e-6)
        assert rates["NVIDIA H200"].seconds_per_step == pytest.approx(0.5, rel=1e-6)
        assert rates["cpu"] == throughput.Rate(flops / 40, 1)  # one run: its achieved FLOP/s, no per-step term

        workers = [_worker("NVIDIA H200"), _worker("NVIDIA L4")]
        times = throughput.queue_times(session, [{"name": "gpu", "workers": workers}, {"name": "idle", "workers": []}],
                                       2e14, 20)
    assert [(t.queue, t.device, t.calibrated_runs) for t in times] == [("gpu", "NVIDIA H200", 3),
                                                                       ("gpu", "NVIDIA L4", 0)]
    assert times[0].seconds == pytest.approx(20 * 0.5 + 2.0)
    assert times[1].flops_per_second == throughput.default_rate("NVIDIA L4")


def test_the_fit_falls_back_to_the_flops_term_when_a_per_step_cost_would_be_negative():
    runs = [throughput.Measurement("m", flops, 10, flops / 1e12) for flops in (1e13, 2e13, 4e13)]
    runs.append(throughput.Measurement("m", 1e13, 1000, 9.0))  # many steps, less time: no positive per-step fits
    rate = throughput.fit(runs)
    assert rate.seconds_per_step == 0 and rate.runs == 4 and rate.flops_per_second > 0


def test_a_run_without_its_compute_counts_is_not_a_measurement(account):
    job_id = stored_job(account.team_id, status="succeeded", queue="gpu", device="cpu", final_metrics={"loss": 1},
                        estimate={"training_time": {"flops_model": MODEL}})
    with new_session() as session:
        from app.tables import Job

        assert throughput.achieved_flops_per_second(session.get(Job, job_id)) is None
        assert throughput.measured_rates(session, "gpu") == {}
