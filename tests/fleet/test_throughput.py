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
    assert throughput.default_rate("NVIDIA H200") == throughput.Rate(989e12 * 0.35, 0)
    assert throughput.default_rate("NVIDIA A100-SXM4-80GB").flops_per_second == pytest.approx(312e12 * 0.35)
    assert throughput.default_rate("cpu") == throughput.Rate(throughput.CPU_DEFAULT_FLOPS, 0,
                                                             throughput.CPU_DEFAULT_SECONDS_PER_STEP,
                                                             throughput.CPU_DEFAULT_SECONDS_PER_VALUE)
    assert throughput.default_rate("Some Future GPU").flops_per_second == throughput.GENERIC_GPU_FLOPS


def test_rates_are_fitted_per_device_class_on_this_queue_only(account):
    team = account.team_id
    # Runs that took 0.5 s a step plus their FLOPs at 1e14 FLOP/s (the default says 3.5e14 and no per-step cost):
    # from four runs on, the fit finds both terms, the FLOP/s held a little towards the default by the ridge.
    for steps, tokens in ((10, 1e6), (40, 2e6), (100, 1e6), (20, 4e6), (60, 3e6), (5, 2e6)):
        flops = 1e9 * tokens + 1e5 * tokens * 100  # re-costed from the computed tokens: fixed + per_length·L
        _finished(team, runtime=steps * 0.5 + flops / 1e14, step=steps, tokens=tokens, length_sum=tokens * 100)
    _finished(team, runtime=40, step=10, device="cpu (2 threads)")
    _finished(team, runtime=7, step=10, queue="elsewhere")  # another queue does not count
    _finished(team, runtime=10, step=10, status="failed")
    _finished(team, runtime=10, step=10, attempts=2)  # resumed: its runtime covers the last attempt only
    _finished(team, runtime=1, step=10, config={"training": {"gpus": 2}})  # two GPUs' speed, not one device's
    with new_session() as session:
        rates = throughput.measured_rates(session, "gpu")
        assert rates["NVIDIA H200"].runs == 6
        assert rates["NVIDIA H200"].flops_per_second == pytest.approx(1e14, rel=0.05)
        assert rates["NVIDIA H200"].seconds_per_step == pytest.approx(0.5, rel=0.1)
        # One CPU run: the CPU default scaled so that it predicts that run's time.
        cpu_flops = 1e9 * 1e6 + 1e5 * 1e8
        assert rates["cpu"].runs == 1 and rates["cpu"].seconds(cpu_flops, 10) == pytest.approx(40)

        workers = [_worker("NVIDIA H200"), _worker("NVIDIA L4")]
        times = throughput.queue_times(session, [{"name": "gpu", "workers": workers}, {"name": "idle", "workers": []}],
                                       2e14, 20)
    assert [(t.queue, t.device, t.calibrated_runs) for t in times] == [("gpu", "NVIDIA H200", 6),
                                                                       ("gpu", "NVIDIA L4", 0)]
    assert times[0].seconds == pytest.approx(20 * 0.5 + 2.0, rel=0.05)
    assert times[1].seconds == pytest.approx(2e14 / throughput.default_rate("NVIDIA L4").flops_per_second)
    assert times[1].flops_per_second == pytest.approx(2e14 / times[1].seconds)  # what the run achieves there

    # On 4 GPUs each GPU does a quarter of the FLOPs, and only a host with 4 GPUs takes the run.
    four = WorkerInfo(hostname="big", queues=("gpu",), device="NVIDIA L4", gpu_memory_bytes=None, seen_at=0,
                      gpu_count=4)
    with new_session() as session:
        spread = throughput.queue_times(session, [{"name": "gpu", "workers": [*workers, four]}], 2e14, 20, gpus=4)
    assert [(t.device, t.seconds) for t in spread] == [
        ("NVIDIA L4", pytest.approx(0.5e14 / throughput.default_rate("NVIDIA L4").flops_per_second))]


def _runs(truth: throughput.Rate, shapes) -> list[throughput.Measurement]:
    return [throughput.Measurement("m", flops, steps, truth.seconds(flops, steps, values), values)
            for steps, flops, values in shapes]


# (steps, FLOPs, values) of six runs: narrow models write many values for their FLOPs, wide ones few.
SHAPES = [(20, 3.5e11, 2.2e9), (50, 3e10, 6e9), (24, 2e12, 2e9), (100, 1.9e11, 1.4e9), (80, 4.7e11, 3.6e9),
          (10, 1e12, 8e9)]


def test_with_few_runs_the_default_is_scaled_to_them():
    default = throughput.default_rate("cpu")
    twice_as_slow = throughput.Rate(default.flops_per_second / 2, 0, default.seconds_per_step * 2,
                                    default.seconds_per_value * 2)
    for count in (1, throughput.MIN_RUNS_FOR_FIT - 1):
        rate = throughput.fit(_runs(twice_as_slow, SHAPES[:count]), default)
        assert rate.runs == count
        assert rate.seconds(5e11, 40, 3e9) == pytest.approx(twice_as_slow.seconds(5e11, 40, 3e9))


def test_from_four_runs_each_term_is_fitted():
    default = throughput.default_rate("cpu")
    # Arithmetic twice as fast as the default, memory traffic three times slower, steps free.
    truth = throughput.Rate(2 * default.flops_per_second, 0, 0.0, 3 * default.seconds_per_value)
    rate = throughput.fit(_runs(truth, SHAPES), default)
    assert rate.seconds_per_step < 0.2 * default.seconds_per_step
    assert rate.flops_per_second == pytest.approx(truth.flops_per_second, rel=0.1)
    assert rate.seconds_per_value == pytest.approx(truth.seconds_per_value, rel=0.1)
    assert rate.seconds(3e12, 10, 1e9) == pytest.approx(truth.seconds(3e12, 10, 1e9), rel=0.05)
    scaled_default = throughput.fit(_runs(truth, SHAPES[:3]), default)
    assert abs(scaled_default.seconds(3e12, 10, 1e9) / truth.seconds(3e12, 10, 1e9) - 1) > 0.15


def test_runs_that_cannot_tell_the_terms_apart_keep_the_defaults_balance():
    default = throughput.default_rate("cpu")
    same = [(30, 2e11, 1.5e9)] * 5
    slower = throughput.Rate(default.flops_per_second / 1.5, 0, default.seconds_per_step * 1.5,
                             default.seconds_per_value * 1.5)
    rate = throughput.fit(_runs(slower, same), default)
    assert rate.flops_per_second == pytest.approx(slower.flops_per_second, rel=0.01)
    assert rate.seconds_per_step == pytest.approx(slower.seconds_per_step, rel=0.01)


def test_no_term_is_negative_and_old_runs_fit_without_the_value_term():
    runs = [throughput.Measurement("m", flops, 10, flops / 1e12) for flops in (1e13, 2e13, 4e13)]
    runs.append(throughput.Measurement("m", 1e13, 1000, 9.0))  # many steps, less time: no positive per-step fits
    rate = throughput.fit(runs, throughput.default_rate("cpu"))
    assert 0 <= rate.seconds_per_step < 0.001 and rate.runs == 4 and rate.flops_per_second > 0
    assert rate.seconds_per_value == 0  # these runs were estimated before values were counted


def test_a_run_without_its_compute_counts_is_not_a_measurement(account):
    job_id = stored_job(account.team_id, status="succeeded", queue="gpu", device="cpu", final_metrics={"loss": 1},
                        estimate={"training_time": {"flops_model": MODEL}})
    with new_session() as session:
        from app.tables import Job

        assert throughput.achieved_flops_per_second(session.get(Job, job_id)) is None
        assert throughput.measured_rates(session, "gpu") == {}
