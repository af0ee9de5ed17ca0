"""Queueing latency: from submitting a job to its first training step, minus the model load, for a worker
that imports the ML stack when its process starts (`workers.warm_start`, the default) and for one that
leaves the import to its first job (TUNEBOARD_WORKER_PRELOAD=false, the behaviour before), in one run.

For each of the two, a real Celery worker process (`python -m celery -A workers worker -Q <queue> -c 1`,
started with tests.services.WorkerProcess, default settings apart from the queue and the preload switch)
serves a fresh queue on a real Redis; the database is SQLite in a temp data dir. Once the worker is ready
(and, preloading, once its pool child has logged the preload), jobs on the tests' tiny Llama (hidden 64,
2 layers; 5 steps, batch 4, sequence length 64, fp32, logging every step) are launched one after the
other with `app.jobs.launch.launch()` in this process (what `POST /v1/fine_tuning/jobs` calls after parsing
the body; the model's inventory is computed before the first launch so every launch takes the same
path), each once the previous one has ended.

Every time comes from the job's Redis stream, whose entry ids are the XADD times in milliseconds
(Redis's clock, the same machine's as this process's `time.time()` submit stamp):

- submit: `time.time()` just before `launch()`; `queued` event: the row is committed, task not yet sent
- claimed: the `started` event, written right after the worker's atomic claim
- loaded: the "Loaded <model> in X s" event; X (printed to 0.1 s) is the model load time
- training started: the `training_started` event (tokenised, PEFT-wrapped, Trainer built, on_train_begin)
- first step: the first `metric` entry (step 1, logged as soon as it is done)

Reported per worker, per job and as p50 / max over the jobs (the first job is "cold", the worker's first;
p50 / max are also given over the warm jobs alone): submit->claimed, claimed->first step (with its parts),
model load, and submit->first step minus load; also the worker's start->ready and, preloading,
start->preloaded (when its pool child is warm). `--profile` then runs one more job in this process with
`workers.job_runner.run_job` under cProfile and prints where the claim-to-first-step time goes.

Run from the repository root (needs the worker extra and a Redis server):

    .venv/bin/python -m bench.queueing                   # 6 jobs per worker (1 cold + 5 warm), a few minutes
    .venv/bin/python -m bench.queueing --quick           # 3 jobs per worker
    .venv/bin/python -m bench.queueing --only preload    # one worker: preload (or: import-at-first-job)
    .venv/bin/python -m bench.queueing --json out.json   # also write every figure as JSON
    .venv/bin/python -m bench.queueing --profile         # plus one in-process run_job under cProfile

Results are recorded in docs/benchmarks.md, "Queueing (bench/queueing.py)".
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import _harness as h

LOADED = re.compile(r"^Loaded .* in (?P<seconds>\d+(?:\.\d+)?) s")


@dataclass
class Timeline:
    job_id: str
    cold: bool
    submit: float  # seconds (Unix)
    launch_returned: float
    queued: float
    claimed: float
    loaded: float
    load_s: float  # from the event's text
    training_started: float
    first_step: float
    status: str

    @property
    def figures_ms(self) -> dict[str, float]:
        ms = 1000
        return {
            "launch() call": ms * (self.launch_returned - self.submit),
            "submit->queued event": ms * (self.queued - self.submit),
            "submit->claimed": ms * (self.claimed - self.submit),
            "claimed->first step": ms * (self.first_step - self.claimed),
            "  claimed->loaded event": ms * (self.loaded - self.claimed),
            "  of which model load": ms * self.load_s,
            "  loaded->training started": ms * (self.training_started - self.loaded),
            "  training started->first step": ms * (self.first_step - self.training_started),
            "model load": ms * self.load_s,
            "submit->first step": ms * (self.first_step - self.submit),
            "submit->first step - load": ms * (self.first_step - self.submit - self.load_s),
        }


def job_config(model_dir: Path) -> Any:
    from app.estimator.job_config import JobConfig

    return JobConfig.model_validate({
        "model": str(model_dir),
        "lora": {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]},
        "training": {"max_steps": 5, "batch_size": 4, "sequence_length": 64, "precision": "fp32",
                     "learning_rate": 1e-3, "logging_steps": 1, "save_steps": 5, "lr_scheduler": "constant"},
    })


def wait_for_inventory(model: str, timeout: float = 180) -> None:
    from app.base_models.inventories import InventoryUnavailable, get_inventory
    from app.settings import get_settings

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            get_inventory(model, get_settings())
            return
        except InventoryUnavailable as exc:
            if not exc.computing:
                raise
            time.sleep(0.2)
    raise TimeoutError(f"no inventory for {model} after {timeout} s")


def wait_finished(job_id: str, timeout: float) -> str:
    from app.db import new_session
    from app.job_status import TERMINAL_STATUSES
    from app.tables import Job

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with new_session() as session:
            status = session.get(Job, job_id).status
        if status in TERMINAL_STATUSES:
            return status
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} did not finish in {timeout} s")


def timeline(job_id: str, cold: bool, submit: float, returned: float, status: str) -> Timeline:
    from app import redis_client
    from app.jobs import streams

    entries = streams.read_since(redis_client.get_redis(), job_id, count=100_000)

    def at(entry) -> float:
        return int(entry.id.split("-")[0]) / 1000

    def first(predicate) -> Any:
        found = next((e for e in entries if predicate(e)), None)
        if found is None:
            raise RuntimeError(f"job {job_id}: an expected stream entry is missing; stream types: "
                               f"{[(e.type, kind(e)) for e in entries]}")
        return found

    def kind(entry) -> str | None:
        # An event's own type: data.kind in the OpenAI-shaped payload, else the payload's type.
        return (entry.data.get("data") or {}).get("kind") or entry.data.get("type")

    event = lambda wanted: first(lambda e: e.type == "event" and kind(e) == wanted)  # noqa: E731
    queued = [e for e in entries if e.type == "event" and kind(e) == "queued"]
    loaded = first(lambda e: e.type == "event" and LOADED.match(e.data.get("message", "")))
    return Timeline(
        job_id=job_id, cold=cold, submit=submit, launch_returned=returned, queued=at(queued[0]) if queued else submit,
        claimed=at(event("started")), loaded=at(loaded),
        load_s=float(LOADED.match(loaded.data["message"])["seconds"]),
        training_started=at(event("training_started")),
        first_step=at(first(lambda e: e.type == "metric" and "loss" in e.data)), status=status,
    )


def run_jobs(count: int, model_dir: Path, file_id: str, queue: str, job_ids: list[str],
             account: h.Account) -> list[Timeline]:
    from app.db import new_session
    from app.settings import get_settings

    config = job_config(model_dir)
    lines = []
    for index in range(count):
        time.sleep(1.0)  # let the worker ack the previous task and go back to waiting on the queue
        with new_session() as session:
            submit = time.time()
            job = h.launch_job(session, get_settings(), account, config, training_file=file_id, queue=queue)
            returned = time.time()
            job_id = job.id
        job_ids.append(job_id)
        status = wait_finished(job_id, timeout=300)
        if status != "succeeded":
            from app.tables import Job

            with new_session() as session:
                job = session.get(Job, job_id)
                raise RuntimeError(f"job {job_id} ended {status}: {job.error_message}")
        line = timeline(job_id, index == 0, submit, returned, status)
        lines.append(line)
        f = line.figures_ms
        h.progress(f"job {index + 1}/{count}{' (cold)' if index == 0 else ''}: submit->claimed "
                   f"{f['submit->claimed']:.0f} ms, claimed->first step {f['claimed->first step']:.0f} ms, "
                   f"load {f['model load']:.0f} ms, submit->first step - load {f['submit->first step - load']:.0f} ms")
    return lines


def load_times_here(model_dir: Path, repeats: int) -> list[float]:
    """`workers.base_models.load_base` of the same model in this process, warm (after one untimed load), in ms.

    The worker's "Loaded ... in X s" event prints X to 0.1 s, too coarse for a model that loads in tens
    of milliseconds; this gives the same call's time precisely.
    """
    from workers.base_models import load_base

    load_base(str(model_dir), data_dir=Path("."), precision="fp32")
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        load_base(str(model_dir), data_dir=Path("."), precision="fp32")
        times.append(1000 * (time.perf_counter() - started))
    return times


def profile_in_process(model_dir: Path, file_id: str, queue: str, job_ids: list[str], account: h.Account) -> str:
    """One more job, claimed and run here by run_job under cProfile (no Celery), for the time breakdown.

    A first, unprofiled job warms this process up (imports), so the profile is of a warm worker's job.
    """
    import cProfile
    import io
    import pstats

    from app.db import new_session
    from app.tables import Job
    from workers.job_runner import run_job

    config = job_config(model_dir)

    def queued_job() -> str:
        with new_session() as session:
            job = Job(model=config.model, queue=f"{queue}-profile", config=config.model_dump(mode="json"),
                      training_file_id=file_id, status="queued", **account.owner)
            session.add(job)
            session.commit()
            job_ids.append(job.id)
            return job.id

    run_job(queued_job(), worker="bench-profile")  # warm-up: imports the ML stack here, as a warm worker has
    job_id = queued_job()
    profile = cProfile.Profile()
    started = time.time()
    profile.enable()
    status = run_job(job_id, worker="bench-profile")
    profile.disable()
    line = timeline(job_id, False, started, started, status)
    buffer = io.StringIO()
    figures = line.figures_ms
    buffer.write(f"in-process run_job ({status}): claimed->first step {figures['claimed->first step']:.0f} ms "
                 f"(load {figures['model load']:.0f} ms); whole run_job {1000 * (time.time() - started):.0f} ms\n")
    stats = pstats.Stats(profile, stream=buffer)
    stats.sort_stats("cumulative").print_stats(r"/(app|workers)/", 25)
    buffer.write("\n--- what workers/training/run.py:_train calls, by cumulative time ---\n")
    stats.sort_stats("cumulative").print_callees(r"run.py:\d+\(_train\)")
    buffer.write("\n--- what transformers' _inner_training_loop calls, by cumulative time ---\n")
    stats.print_callees(r"_inner_training_loop")
    return buffer.getvalue()


def summary(lines: list[Timeline]) -> dict[str, dict[str, float]]:
    """Per figure: the cold job's value, p50 / max over the warm jobs, p50 / max over all jobs (ms)."""
    warm = [line for line in lines if not line.cold] or lines
    out = {}
    for name in lines[0].figures_ms:
        every = [line.figures_ms[name] for line in lines]
        warms = [line.figures_ms[name] for line in warm]
        cold = next((line.figures_ms[name] for line in lines if line.cold), float("nan"))
        out[name] = {"cold": cold, "warm_p50": h.percentile(warms, 50), "warm_max": max(warms),
                     "all_p50": h.percentile(every, 50), "all_max": max(every)}
    return out


def summary_rows(lines: list[Timeline]) -> list[list[str]]:
    return [[name] + [h.fmt(v, 0) for v in values.values()] for name, values in summary(lines).items()]


# Before, then after: each worker runs on its own, one after the other, in this order.
MODES = {"import-at-first-job": "import at first job (TUNEBOARD_WORKER_PRELOAD=false, before)",
         "preload": "preload: ML stack imported as the worker process starts (default, after)"}
PRELOADED = re.compile(r"ML stack preloaded in (?P<seconds>[\d.]+) s")


@dataclass
class WorkerRun:
    mode: str
    start_to_ready_s: float
    start_to_preloaded_s: float | None  # when the pool child logged its warm start
    preload_s: float | None  # the child's own import time, from that line
    lines: list[Timeline]


def run_worker(mode: str, env: dict[str, str], work: Path, count: int, model_dir: Path, file_id: str, queue: str,
               job_ids: list[str], account: h.Account, worker_names: list[str]) -> WorkerRun:
    """Start a worker in this mode, wait until it is warm (preloading) or ready, run `count` jobs on it, stop it."""
    from tests.services import WorkerProcess

    name = f"bench-{mode}-{queue.rsplit('-', 1)[-1]}"
    worker_names.append(name)
    preload = mode == "preload"
    h.progress(f"starting a Celery worker ({MODES[mode]}) on queue {queue}")
    started = time.monotonic()
    worker = WorkerProcess({**env, "TUNEBOARD_WORKER_PRELOAD": str(preload).lower()}, [queue], name,
                           work / f"worker-{mode}.log")
    try:
        try:
            ready, warm, found = None, None, None
            deadline = time.monotonic() + 180
            while (ready is None or (preload and warm is None)) and time.monotonic() < deadline:
                log = worker.log()
                if ready is None and " ready." in log:
                    ready = time.monotonic() - started
                if warm is None and (found := PRELOADED.search(log)):
                    warm = time.monotonic() - started
                time.sleep(0.05)
            worker.wait_ready(timeout=1)  # says why, if the worker is not ready by now
            preload_s = float(found["seconds"]) if found else None
            h.progress(f"worker ready after {ready:.1f} s" + (f", warm after {warm:.1f} s" if warm else "")
                       + f"; running {count} jobs one after the other")
            lines = run_jobs(count, model_dir, file_id, queue, job_ids, account)
        except BaseException:
            print(worker.log()[-4000:])
            raise
    finally:
        worker.stop()
    return WorkerRun(mode, ready, warm, preload_s, lines)


def print_worker_run(run: WorkerRun) -> None:
    print(f"\n### {MODES[run.mode]}\n")
    warm = f"; start->pool child warm {run.start_to_preloaded_s:.1f} s (its import {run.preload_s:.1f} s)" \
        if run.start_to_preloaded_s is not None else ""
    print(f"worker start->ready {run.start_to_ready_s:.1f} s{warm}\n")
    per_job = [[f"{i + 1}{' (cold)' if line.cold else ''}"] + [h.fmt(line.figures_ms[k], 0) for k in
               ("submit->claimed", "claimed->first step", "model load", "submit->first step - load")]
               for i, line in enumerate(run.lines)]
    print(h.markdown_table(["job", "submit->claimed", "claimed->first step", "model load",
                            "submit->first step - load"], per_job))
    print()
    print(h.markdown_table(["figure (ms)", "cold job", "warm p50", "warm max", "all p50", "all max"],
                           summary_rows(run.lines)))


def comparison_rows(runs: list[WorkerRun]) -> list[list[str]]:
    """Cold job and warm p50 of the headline figures, one row per worker mode."""
    rows = []
    for run in runs:
        figures = summary(run.lines)
        rows.append([MODES[run.mode]] + [h.fmt(figures[name][which], 0) for name in
                    ("claimed->first step", "  loaded->training started", "submit->first step")
                    for which in ("cold", "warm_p50")])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.queueing", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 jobs per worker (a smoke test)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every figure to this file")
    parser.add_argument("--jobs", type=int, help="jobs in sequence per worker, the first one cold (default 6, quick 3)")
    parser.add_argument("--only", choices=list(MODES), help="run one worker mode only (default: both, in one run)")
    parser.add_argument("--profile", action="store_true", help="one more job run in-process under cProfile")
    parser.add_argument("--redis-url", default=h.DEFAULT_REDIS_URL)
    args = parser.parse_args(argv)
    h.exit_cleanly_on_sigterm()
    args.jobs = args.jobs or (3 if args.quick else 6)
    warnings.filterwarnings("ignore", category=FutureWarning)
    h.check_redis(args.redis_url)

    queue = f"bench-queueing-{uuid.uuid4().hex[:8]}"
    job_ids: list[str] = []
    worker_names: list[str] = []
    profile_text = None
    runs: list[WorkerRun] = []
    with tempfile.TemporaryDirectory(prefix="tuneboard-bench-queueing-") as tmp:
        work = Path(tmp)
        env = h.configure(work / "data", args.redis_url, TUNEBOARD_DEFAULT_QUEUE=queue)
        from app.db import new_session
        from app.settings import get_settings
        from tests.tiny_model import build_tiny_model

        h.quiet_transformers()
        h.progress("building the tiny model and computing its inventory")
        # Under the data dir's models/ folder: the default model root, where local model folders must lie.
        model_dir = build_tiny_model(get_settings().data_dir / "models" / "tiny-llama")
        wait_for_inventory(str(model_dir))
        account = h.bench_account()
        with new_session() as session:
            file_id = h.store_file(session, get_settings(), account, filename="train.jsonl",
                                   data=h.jsonl(h.chat_records(32))).id
        try:
            for mode in [args.only] if args.only else list(MODES):
                runs.append(run_worker(mode, env, work, args.jobs, model_dir, file_id, queue, job_ids, account,
                                       worker_names))
            if args.profile:
                h.progress("profiling one more job run in this process ...")
                profile_text = profile_in_process(model_dir, file_id, queue, job_ids, account)
            h.progress("timing load_base of the same model in this process (the event's 0.1 s is too coarse)")
            loads_here = load_times_here(model_dir, repeats=5)
        finally:
            # The workers' registry entries (app.fleet.worker_registry) would expire by themselves; remove them now.
            h.delete_job_keys(args.redis_url, job_ids, [queue],
                              patterns=[f"tuneboard:worker:{name}@*" for name in worker_names])

    print()
    print(f"{args.jobs} jobs in sequence per worker (-c 1); tiny Llama, 5 steps; times in ms")
    for run in runs:
        print_worker_run(run)
    print("\n### Side by side (ms)\n")
    print(h.markdown_table(["worker", "claimed->first step: cold", "warm p50", "loaded->training started: cold",
                            "warm p50", "submit->first step: cold", "warm p50"], comparison_rows(runs)))
    print(f"\nload_base of the same model in this process, warm: p50 {h.percentile(loads_here, 50):.0f} ms, "
          f"max {max(loads_here):.0f} ms over {len(loads_here)} loads")
    if profile_text:
        print("\n" + profile_text)
    if args.json:
        h.write_json(args.json, {
            "benchmark": "queueing", "machine": h.machine(), "versions": h.versions(),
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "workers": [{"mode": run.mode, "start_to_ready_s": run.start_to_ready_s,
                         "start_to_preloaded_s": run.start_to_preloaded_s, "preload_s": run.preload_s,
                         "jobs": [vars(line) | {"figures_ms": line.figures_ms} for line in run.lines],
                         "summary": {name.strip(): values for name, values in summary(run.lines).items()}}
                        for run in runs],
            "load_base_here_ms": loads_here, "profile": profile_text,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
