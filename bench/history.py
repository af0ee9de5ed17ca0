"""History and job list at 10,000 jobs: the team's history page, `GET /v1/fine_tuning/jobs` and a 100,000-step
job's metrics, each against a trivial endpoint of the same app measured in the same run.

The benchmark owns its throw-away database: SQLite in a temp data dir by default, or (with `--database-url`)
a fresh database it creates on a PostgreSQL server and drops at the end. It migrates it with Alembic
(`app.ops.migrate.upgrade_database`, as the tests do) and seeds it with bulk Core inserts of the app's own
tables:

- team "bench-main": an admin (created with `users.ensure_first_admin`, as bench/estimate.py does) and
  five members; 10,000 jobs over nine months: statuses (mostly succeeded, some failed, cancelled, running,
  queued), eight catalog models, several LoRA configs with their launch estimates, launchers, suffixes,
  notes, tags, `metadata` (project, experiment), finished jobs with final losses and runtimes;
- 1,000,000 metric points spread unevenly over the jobs that ran (train loss each step, eval loss every
  10 steps, learning rate, grad norm, tokens/s), plus one more job with 100,000 logged steps (eval every 500);
- team "bench-other": 1,000 jobs of its own, which must never show up (checked on every list answer).

Then it starts the real app under uvicorn in a subprocess (`tests.services.ServerProcess`, as the tests'
live_server) and times, with one keep-alive httpx client and the admin's API token:

- trivial endpoints: `/healthz` (no sign-in, no database) and the signed-in `GET /v1/fine_tuning/jobs/{id}`
  (token check + one primary-key read);
- the history page: the first page (whole HTML page), and as the browser's HTMX requests fetch them a
  status + model filter, a free-text search, a search matching nothing (reads every row of the team), a deep
  page (cursor 5,000 rows in) and the first page sorted by final loss;
- `GET /v1/fine_tuning/jobs?limit=20`: first page, `after=` 5,000 jobs in, status + `metadata[project]`;
- the 100,000-step job's metrics: the default answer (the first 10,000 steps), `max_points=500`,
  `max_points=2000` (what the job page's chart loads in one request), and every page in turn (what the
  job page loaded before it asked for `max_points`).

The cases are interleaved: each round times every case in turn (up to `--per-round` requests or
`--budget` seconds each), so a change in the machine's load lands on all of them alike. Per case: p50, p99,
sequential requests per second, the server's CPU time per request, and each as a ratio to the trivial
endpoints from the same run; with `--clients N` (default 4) also the requests per second of N concurrent
keep-alive clients. The client runs on the same cores as the server, as it does for every benchmark here.

Run from the repository root (needs Redis for the app; PostgreSQL only with --database-url):

    .venv/bin/python -m bench.history                  # 10,000 jobs, 1M points; a few minutes on 2 cores
    .venv/bin/python -m bench.history --quick          # 1,000 jobs, 100,000 points, 20,000 steps, a smoke test
    .venv/bin/python -m bench.history --json out.json  # every figure, load averages, versions
    .venv/bin/python -m bench.history --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test

Results are recorded in docs/benchmarks.md, "History and job list at 10,000 jobs (bench/history.py)".
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import _harness as h

DAY = 86_400.0
MODELS = (  # (catalog id, share of jobs)
    ("HuggingFaceTB/SmolLM2-135M-Instruct", 22), ("HuggingFaceTB/SmolLM2-360M", 14), ("Qwen/Qwen2.5-0.5B", 16),
    ("HuggingFaceTB/SmolLM2-1.7B", 10), ("google/gemma-2-2b", 8), ("meta-llama/Llama-3.1-8B", 14),
    ("mistralai/Mistral-7B-v0.3", 10), ("openai-community/gpt2", 6),
)
STATUSES = (("succeeded", 62), ("failed", 14), ("cancelled", 10), ("running", 4), ("queued", 8),
            ("validating_files", 2))
RANKS = (8, 16, 32, 64)
TAGS = ("baseline", "sweep", "lr-sweep", "rank-sweep", "prod", "candidate", "ablation", "long-context", "qlora",
        "eval", "debug", "regression", "customer-a", "customer-b", "nightly")
PROJECTS = ("support-bot", "summarise", "sql-gen", "translate", "classify")
WORDS = ("alpha", "bravo", "delta", "tango", "nova", "orion", "lyra", "atlas", "zephyr", "ember", "quartz", "sage")
NOTES = ("Loss plateaued after the warm-up; try a lower learning rate.", "Good candidate for the release.",
         "Diverged at step 300, grad norm exploded.", "Same as the previous run with rank doubled.",
         "Eval loss tracks train loss closely, no overfitting yet.", "OOM on the first attempt, resumed fine.",
         "Baseline for the customer comparison.", "Cancelled: wrong dataset version.")
SEARCH_TERM = "grad norm"  # in one of the notes: matches about 2 % of the jobs
EVAL_EVERY = 10
LONG_EVAL_EVERY = 500
INSERT_CHUNK = 20_000


# ---------------------------------------------------------------------------------------------- database
def create_postgres_database(server_url: str) -> tuple[str, Any]:
    """A new empty database on the server at server_url; returns its URL and a function that drops it."""
    from tests.services import create_postgres_database as create

    return create(server_url, prefix="tuneboard_bench")


def configure(data_dir: Path, database_url: str, redis_url: str) -> dict[str, str]:
    """Aim the settings (here and in the server's environment) at this database; migrate it; return the env."""
    from app.ops.migrate import upgrade_database
    from app.settings import get_settings

    data_dir.mkdir(parents=True, exist_ok=True)
    values = {"TUNEBOARD_DATA_DIR": str(data_dir), "TUNEBOARD_DATABASE_URL": database_url,
              "TUNEBOARD_REDIS_URL": redis_url, "HF_HUB_OFFLINE": "1"}
    os.environ.update(values)
    get_settings.cache_clear()
    upgrade_database(database_url)
    return {**os.environ, **values}


# ---------------------------------------------------------------------------------------------- seeding
@dataclass
class Seeded:
    """What the seeding made that the measurements need."""

    token: str
    team_id: str
    other_team_id: str
    jobs: list[dict[str, Any]]  # the main team's job rows, as inserted
    other_ids: set[str]
    long_job_id: str
    metric_points: int
    seconds: float


def _weighted(rng: random.Random, table) -> str:
    return rng.choices([v for v, _ in table], weights=[w for _, w in table])[0]


def _configs(rng: random.Random) -> dict[tuple[str, int], tuple[dict, dict | None]]:
    """Per (model, rank): a validated JobConfig dump and its launch estimate, computed once."""
    from app.base_models.inventories import get_inventory
    from app.estimator.block_diagram import block_diagram
    from app.estimator.job_config import JobConfig
    from app.estimator.presets import presets_for
    from app.jobs.launch import estimate_at_launch
    from app.settings import get_settings

    settings = get_settings()
    found = {}
    for model, _ in MODELS:
        presets = {p.key: p for p in presets_for(block_diagram(get_inventory(model, settings)))}
        for rank in RANKS:
            preset = presets.get("attention-mlp" if rank >= 32 else "attention") or next(iter(presets.values()))
            config = JobConfig.model_validate({
                "model": model, "lora": {"r": rank, "lora_alpha": rank * 2, "target_modules": list(preset.targets)},
                "training": {"learning_rate": rng.choice((1e-4, 2e-4, 5e-4)), "num_epochs": rng.choice((1, 2, 3))}})
            found[model, rank] = (config.model_dump(mode="json"), estimate_at_launch(config, 2000, True, settings))
    return found


def _job_rows(rng: random.Random, count: int, team_id: str, user_ids: list[str], file_ids: list[str],
              configs: dict, end: float, prefix: str) -> list[dict[str, Any]]:
    """`count` job rows over the 270 days before `end`, with the variety a busy team's history has."""
    from app.tables import new_id

    times = sorted(end - rng.random() * 270 * DAY for _ in range(count))
    rows = []
    for index, created in enumerate(times):
        model, status, rank = _weighted(rng, MODELS), _weighted(rng, STATUSES), rng.choice(RANKS)
        config, estimate = configs[model, rank]
        ran = status in ("succeeded", "failed", "cancelled", "running")
        started = created + rng.uniform(2, 600) if ran else None
        runtime = rng.lognormvariate(7.5, 1.0)  # median ~30 minutes, a long tail of day-long runs
        finished = started + runtime if started and status != "running" else None
        total_steps = rng.choice((200, 500, 1000, 3000))
        loss = round(rng.uniform(0.35, 2.2), 4)
        tags = rng.sample(TAGS, rng.choice((0, 0, 1, 1, 2, 3)))
        rows.append({
            "id": new_id("ftjob"), "team_id": team_id, "created_by": rng.choice(user_ids), "status": status,
            "model": model, "queue": rng.choice(("default", "default", "gpu-a100", "gpu-h100")), "config": config,
            "estimate": estimate, "training_file_id": rng.choice(file_ids),
            "validation_file_id": rng.choice(file_ids) if rng.random() < 0.3 else None,
            "suffix": f"{prefix}{rng.choice(WORDS)}-{rng.choice(WORDS)}-v{index % 37}" if rng.random() < 0.7 else None,
            "metadata": {"project": rng.choice(PROJECTS), "experiment": f"exp-{index // 25}"}
            if rng.random() < 0.6 else None,
            "notes": rng.choice(NOTES) if rng.random() < 0.2 else "", "tags": tags,
            "created_at": created, "started_at": started, "finished_at": finished,
            "attempts": 1 if ran else 0, "max_attempts": 3, "worker": "gpu-host-1@bench" if ran else None,
            # A running job's lease lies in the future, so the app's lease reaper leaves it alone.
            "lease_expires_at": end + 7 * DAY if status == "running" else None, "cancel_requested": False,
            "step": total_steps if status == "succeeded" else (rng.randint(1, total_steps) if ran else 0),
            "total_steps": total_steps if ran else None, "epoch": None,
            "trained_tokens": total_steps * 4096 if status == "succeeded" else None,
            "trainable_params": estimate["trainable_params"] if estimate and ran else None,
            "all_params": estimate["all_params"] if estimate and ran else None,
            "device": "cuda:0" if ran else None,
            "final_metrics": {"loss": loss, "eval_loss": round(loss + rng.uniform(0, 0.2), 4),
                              "train_runtime": runtime, "tokens_per_second": rng.uniform(800, 9000)}
            if status == "succeeded" else None,
            "adapter_key": f"adapters/{index}" if status == "succeeded" else None,
            "error_code": "training_error" if status == "failed" else None,
            "error_message": "CUDA out of memory" if status == "failed" else None,
        })
    return rows


def _points(rng: random.Random, job_id: str, steps: int, started: float, eval_every: int):
    """A job's logged steps: a noisy falling loss, sparse evals, warm-up then cosine learning rate."""
    base, floor = rng.uniform(1.8, 3.0), rng.uniform(0.3, 1.0)
    warmup = max(1, steps // 20)
    for step in range(1, steps + 1):
        shape = math.exp(-5 * step / steps)
        lr = 2e-4 * (step / warmup if step <= warmup else 0.5 * (1 + math.cos(math.pi * step / steps)))
        loss = floor + (base - floor) * shape + rng.uniform(-0.05, 0.05)
        yield {"job_id": job_id, "step": step, "epoch": step / steps, "loss": loss,
               "eval_loss": loss + 0.05 if step % eval_every == 0 else None, "learning_rate": lr,
               "grad_norm": rng.uniform(0.3, 1.5), "tokens_per_second": rng.uniform(900, 1100),
               "created_at": started + step * 1.5}


def _insert(connection, table, rows) -> int:
    """Insert an iterable of row dicts in chunks (one executemany each); the number inserted."""
    done, chunk = 0, []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= INSERT_CHUNK:
            connection.execute(table.insert(), chunk)
            done, chunk = done + len(chunk), []
    if chunk:
        connection.execute(table.insert(), chunk)
        done += len(chunk)
    return done


def _spread(rng: random.Random, jobs: list[dict], total: int) -> list[int]:
    """Steps per job adding up to `total`: uneven (lognormal), none for jobs that never ran."""
    weights = [rng.lognormvariate(0, 0.8) if job["started_at"] else 0.0 for job in jobs]
    scale = total / sum(weights)
    counts = [int(w * scale) for w in weights]
    ran = [i for i, w in enumerate(weights) if w]
    for i in range(total - sum(counts)):  # the rounding remainder, one step each
        counts[ran[i % len(ran)]] += 1
    return counts


def seed(jobs: int, points: int, long_steps: int, other_jobs: int, seed_value: int = 0) -> Seeded:
    """Fill the configured (empty, migrated) database; progress lines as it goes."""
    from sqlalchemy import text

    from app.accounts import users
    from app.db import get_engine, new_session
    from app.tables import DataFile, Job, Metric, new_id

    started = time.monotonic()
    rng = random.Random(seed_value)
    end = time.time() - 3600
    with new_session() as session:
        admin, team = users.ensure_first_admin(session, "admin@bench.localhost")
        _, token = users.create_api_token(session, admin, team, "bench/history.py")
        team.name = "bench-main"
        members = [admin]
        for i in range(5):
            user = users.create_user(session, f"member{i}@bench.localhost", name=f"Member {i}")
            users.set_membership(session, user, team, "member")
            members.append(user)
        other_user = users.create_user(session, "someone@other.localhost", name="Other")
        other_team = users.create_team(session, "bench-other")
        users.set_membership(session, other_user, other_team, "admin")
        session.commit()
        user_ids, team_id, other_team_id, other_user_id = \
            [u.id for u in members], team.id, other_team.id, other_user.id

    def files(team: str, user: str, count: int) -> list[dict]:
        return [{"id": new_id("file"), "filename": f"dataset-{i}.jsonl", "purpose": "fine-tune", "bytes": 10_000 * i,
                 "format": "chat", "examples": 2000, "summary": {}, "storage_key": f"datasets/{team}/{i}",
                 "created_at": end - 300 * DAY, "team_id": team, "created_by": user} for i in range(1, count + 1)]

    configs = _configs(rng)
    main_files, other_files = files(team_id, user_ids[0], 12), files(other_team_id, other_user_id, 3)
    rows = _job_rows(rng, jobs, team_id, user_ids, [f["id"] for f in main_files], configs, end, "")
    # The other team's suffixes carry a word of their own: a search for it must find nothing in the main team.
    other = _job_rows(rng, other_jobs, other_team_id, [other_user_id], [f["id"] for f in other_files], configs,
                      end, "othercorp-")
    long_start = end - 12 * DAY
    long_job = {**rows[-1], "id": new_id("ftjob"), "status": "succeeded", "created_at": long_start,
                "started_at": long_start + 60, "finished_at": long_start + 60 + long_steps * 1.5,
                "step": long_steps, "total_steps": long_steps, "suffix": "long-run-100k", "tags": ["long-context"],
                "lease_expires_at": None, "error_code": None, "error_message": None,
                "final_metrics": {"loss": 0.41, "eval_loss": 0.45, "train_runtime": long_steps * 1.5,
                                  "tokens_per_second": 1000.0}, "adapter_key": "adapters/long"}
    rows.append(long_job)
    rows.sort(key=lambda r: r["created_at"])
    engine = get_engine()
    with engine.begin() as connection:
        connection.execute(DataFile.__table__.insert(), main_files + other_files)
        _insert(connection, Job.__table__, rows + other)
    h.progress(f"seeded {len(rows):,} + {len(other):,} jobs, {len(main_files) + len(other_files)} files")

    counts = _spread(rng, [r for r in rows if r is not long_job], points)
    ran = [(r, n) for r, n in zip([r for r in rows if r is not long_job], counts, strict=True) if n]
    inserted, next_report = 0, 0
    with engine.begin() as connection:
        for offset in range(0, len(ran), 200):  # 200 jobs' points at a time: bounded memory, steady progress
            batch = ran[offset:offset + 200]
            inserted += _insert(connection, Metric.__table__, (p for job, n in batch for p in
                                                               _points(rng, job["id"], n, job["started_at"],
                                                                       EVAL_EVERY)))
            if inserted >= next_report:
                h.progress(f"  metric points {inserted:,} / {points:,}")
                next_report += max(points // 5, 1)
        h.progress(f"  metric points {inserted:,}; now the {long_steps:,}-step job")
        inserted += _insert(connection, Metric.__table__,
                            _points(rng, long_job["id"], long_steps, long_job["started_at"], LONG_EVAL_EVERY))
    with engine.connect() as connection:
        # Statistics as a live database has them: PostgreSQL's autovacuum analyses tables this size by itself.
        # SQLite only ever has them if someone runs ANALYZE, and Tuneboard does not, so it is left without.
        if engine.dialect.name == "postgresql":
            connection.execute(text("ANALYZE"))
            connection.commit()
    seconds = time.monotonic() - started
    h.progress(f"seeded {inserted:,} metric points in all; seeding took {seconds:.0f} s")
    return Seeded(token, team_id, other_team_id, [r for r in rows], {r["id"] for r in other}, long_job["id"],
                  inserted, seconds)


# ---------------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One request to time (or a sequence of them, timed as one sample), and what it answered."""

    key: str
    label: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    signed_in: bool = True
    walk_metrics: bool = False  # follow has_more / after_step like the job page's chart does
    samples_ms: list[float] = field(default_factory=list)
    server_cpu_s: float = 0.0
    requests: int = 0
    concurrent_rps: float | None = None
    response_bytes: int = 0
    note: str = ""

    def pct(self, p: float) -> float:
        return h.percentile(self.samples_ms, p)

    @property
    def rps(self) -> float:
        """Sequential samples per second: one client, one request after the other."""
        return 1000 * len(self.samples_ms) / sum(self.samples_ms) if self.samples_ms else float("nan")

    @property
    def cpu_ms(self) -> float:
        """The server's CPU time per sample."""
        return 1000 * self.server_cpu_s / len(self.samples_ms) if self.samples_ms else float("nan")


def _cursor(team_id: str, query: dict[str, str], depth: int) -> str:
    """The history's page cursor after the first `depth` rows of this view (a deep page)."""
    from app.db import new_session
    from app.jobs import history

    filters = history.HistoryFilters.from_query(query)
    with new_session() as session:
        found = session.execute(history.history_query(team_id, filters, limit=depth)).all()
    return history.encode_cursor(filters.sort, filters.order, found[-1].sort_value, found[-1].Job.id)


def build_cases(seeded: Seeded) -> list[Case]:
    """The trivial endpoints first (the ratios' denominators), then the pages and lists under test."""
    from collections import Counter

    jobs = seeded.jobs
    newest = sorted(jobs, key=lambda r: (r["created_at"], r["id"]), reverse=True)
    deep = min(5000, len(newest) // 2)
    model = Counter(r["model"] for r in jobs).most_common(1)[0][0]
    hx = {"HX-Request": "true"}
    long_api = f"/v1/fine_tuning/jobs/{seeded.long_job_id}"
    return [
        Case("healthz", "GET /healthz (no sign-in, no database)", "/healthz", signed_in=False),
        Case("retrieve", "GET /v1/fine_tuning/jobs/{id} (token + one row)", long_api),
        Case("history_first", "history: first page, whole HTML page", "/jobs"),
        Case("history_filtered", "history: status + model (HTMX)", "/jobs",
             {"status": "succeeded", "model": model}, hx),
        Case("history_search", f"history: search {SEARCH_TERM!r} (HTMX)", "/jobs", {"q": SEARCH_TERM}, hx),
        Case("history_search_none", "history: search matching nothing (HTMX)", "/jobs", {"q": "no-such-run"}, hx),
        Case("history_deep", f"history: page {deep // 50 + 1}, cursor {deep:,} rows in (HTMX)", "/jobs",
             {"after": _cursor(seeded.team_id, {}, deep)}, hx),
        Case("history_sort_loss", "history: sorted by final loss, ascending (HTMX)", "/jobs",
             {"sort": "loss", "order": "asc"}, hx),
        Case("list_first", "API list: limit=20", "/v1/fine_tuning/jobs", {"limit": 20}),
        Case("list_deep", f"API list: limit=20, after= {deep:,} jobs in", "/v1/fine_tuning/jobs",
             {"limit": 20, "after": newest[deep - 1]["id"]}),
        Case("list_filtered", f"API list: limit=20, status=succeeded, metadata[project]={PROJECTS[2]}",
             "/v1/fine_tuning/jobs", {"limit": 20, "status": "succeeded", "metadata[project]": PROJECTS[2]}),
        Case("metrics_default", "metrics: default (first page of steps)", f"{long_api}/metrics"),
        Case("metrics_500", "metrics: max_points=500 (downsampled)", f"{long_api}/metrics", {"max_points": 500}),
        Case("metrics_chart", "metrics: max_points=2000, as the job page loads its chart", f"{long_api}/metrics",
             {"max_points": 2000}),
        Case("metrics_walk", "metrics: every page in turn (the job page before it asked for max_points)",
             f"{long_api}/metrics", walk_metrics=True),
    ]


# ---------------------------------------------------------------------------------------------- timing
def _fetch(client, case: Case, token_headers: dict[str, str]) -> tuple[int, int, Any]:
    """One sample of a case: (requests made, bytes received, the last response)."""
    headers = {**(token_headers if case.signed_in else {}), **case.headers}
    if not case.walk_metrics:
        response = client.get(case.path, params=case.params, headers=headers)
        _check(case, response)
        return 1, len(response.content), response
    after, made, size = -1, 0, 0
    while True:
        response = client.get(case.path, params={"after_step": after}, headers=headers)
        _check(case, response)
        made, size = made + 1, size + len(response.content)
        body = response.json()
        if not body["has_more"] or not body["data"]:
            return made, size, response
        after = body["data"][-1]["step"]


def _check(case: Case, response) -> None:
    if response.status_code != 200:
        raise RuntimeError(f"{case.key}: HTTP {response.status_code}: {response.text[:300]}")


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def verify(client, cases: list[Case], seeded: Seeded, token_headers: dict[str, str]) -> None:
    """Each answer is the main team's and the right size; the other team's jobs never show up. Records sizes."""
    import re

    main_ids = {r["id"] for r in seeded.jobs}
    for case in cases:
        made, size, response = _fetch(client, case, token_headers)
        case.response_bytes = size
        if case.path == "/jobs":
            shown = set(re.findall(r'data-job-id="([^"]+)"', response.text))
            count = re.search(r'data-count="(\d+)"', response.text)
            if shown & seeded.other_ids or not shown <= main_ids:
                raise RuntimeError(f"{case.key}: the history shows jobs of another team")
            case.note = f"{len(shown)} rows" + (f" of {int(count.group(1)):,}" if count else "")
        elif case.key.startswith("list"):
            ids = {job["id"] for job in response.json()["data"]}
            if ids & seeded.other_ids or not ids <= main_ids or not ids:
                raise RuntimeError(f"{case.key}: the list answered {len(ids)} jobs, not all the team's")
            case.note = f"{len(ids)} jobs"
        elif case.key.startswith("metrics"):
            body = response.json()
            points = len(body["data"]) if made == 1 else seeded_long_steps(seeded)
            case.note = f"{points:,} points" + (f" in {made} requests" if made > 1 else "") + \
                (f", buckets of {body['bucket_steps']} steps" if body.get("downsampled") else "")
    search = client.get("/jobs", params={"q": "othercorp"}, headers={**token_headers, "HX-Request": "true"})
    if 'data-job-id="' in search.text:
        raise RuntimeError("a search for the other team's suffix found jobs in the main team's history")


def seeded_long_steps(seeded: Seeded) -> int:
    return next(r["total_steps"] for r in seeded.jobs if r["id"] == seeded.long_job_id)


def measure(client, cases: list[Case], server_pid: int, token_headers: dict[str, str], rounds: int,
            per_round: int, budget_s: float, loads: list[tuple[str, tuple[float, ...]]]) -> None:
    """Interleaved rounds: every case in turn, up to per_round samples or budget_s seconds each per round."""
    for round_index in range(1, rounds + 1):
        for case in cases:
            cpu_before = server_cpu_seconds(server_pid)
            deadline = time.perf_counter() + budget_s
            for i in range(per_round):
                start = time.perf_counter_ns()
                made, _size, _response = _fetch(client, case, token_headers)
                case.samples_ms.append((time.perf_counter_ns() - start) / 1e6)
                case.requests += made
                if time.perf_counter() > deadline and i >= 2:  # at least 3 samples per case per round
                    break
            case.server_cpu_s += server_cpu_seconds(server_pid) - cpu_before
        loads.append((f"after round {round_index}", os.getloadavg()))
        h.progress(f"round {round_index}/{rounds} done; load average {os.getloadavg()[0]:.2f}")


def _hammer(url: str, case: Case, token_headers: dict[str, str], stop: float, counts: list[int], index: int,
            errors: list[BaseException]) -> None:
    """One concurrent client: its own keep-alive connection, samples of one case until `stop`."""
    import httpx

    with httpx.Client(base_url=url, timeout=120, trust_env=False) as client:
        try:
            while time.perf_counter() < stop:
                _fetch(client, case, token_headers)
                counts[index] += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)


def measure_concurrent(url: str, cases: list[Case], token_headers: dict[str, str], clients: int,
                       seconds: float) -> None:
    """Requests per second of `clients` keep-alive clients hammering one case at a time for `seconds`."""

    for case in cases:
        counts = [0] * clients
        errors: list[BaseException] = []
        stop = time.perf_counter() + seconds
        threads = [threading.Thread(target=_hammer, args=(url, case, token_headers, stop, counts, i, errors))
                   for i in range(clients)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise RuntimeError(f"{case.key} with {clients} clients: {errors[0]!r}")
        # The last requests finish after `stop`, so the wall time, not `seconds`, is the denominator.
        case.concurrent_rps = sum(counts) / (time.perf_counter() - start)
        h.progress(f"  {clients} clients, {case.key}: {case.concurrent_rps:,.1f} samples/s")


# ---------------------------------------------------------------------------------------------- report
def _ratio(value: float, base: float) -> str:
    return "-" if not base or value != value else f"{value / base:,.1f}x" if value / base >= 10 else \
        f"{value / base:,.2f}x"


def table(cases: list[Case], clients: int | None) -> str:
    """The results with every figure also as a ratio to /healthz and to the signed-in retrieve."""
    base, signed = cases[0], cases[1]
    headers = ["case", "n", "p50 ms", "p99 ms", "req/s", "server CPU ms", "p50 / healthz", "p99 / healthz",
               "req/s / healthz", "p50 / retrieve"]
    if clients:
        headers += [f"req/s, {clients} clients", f"/ healthz, {clients} clients"]
    rows = []
    for case in cases:
        row = [case.label, len(case.samples_ms), h.fmt(case.pct(50), 2), h.fmt(case.pct(99), 2),
               h.fmt(case.rps, 0), h.fmt(case.cpu_ms, 2), _ratio(case.pct(50), base.pct(50)),
               _ratio(case.pct(99), base.pct(99)), _ratio(case.rps, base.rps), _ratio(case.pct(50), signed.pct(50))]
        if clients:
            row += [h.fmt(case.concurrent_rps, 0), _ratio(case.concurrent_rps or float("nan"),
                                                          base.concurrent_rps or 0)]
        rows.append(row)
    return h.markdown_table(headers, rows)


def sizes(cases: list[Case]) -> str:
    """What each case answers: response size, rows or points."""
    return h.markdown_table(["case", "response bytes", "answer"],
                            [[c.label, f"{c.response_bytes:,}", c.note or "-"] for c in cases])


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 jobs, 100,000 points, fewer samples")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every figure to this file")
    parser.add_argument("--database-url", help="a PostgreSQL server URL: a fresh database is created there and "
                                               "dropped at the end (default: SQLite in a temp data dir)")
    parser.add_argument("--redis-url", default=h.DEFAULT_REDIS_URL)
    parser.add_argument("--jobs", type=int, help="the main team's jobs (default 10,000)")
    parser.add_argument("--points", type=int, help="metric points over those jobs (default 1,000,000)")
    parser.add_argument("--long-steps", type=int, help="logged steps of the long job (default 100,000)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5)")
    parser.add_argument("--per-round", type=int, help="samples per case per round at most (default 40)")
    parser.add_argument("--budget", type=float, help="seconds per case per round, then on (default 3)")
    parser.add_argument("--clients", type=int, help="concurrent clients for the req/s column (default 4, 0: off)")
    args = parser.parse_args(argv)
    h.exit_cleanly_on_sigterm()
    quick = args.quick
    args.jobs = args.jobs or (1_000 if quick else 10_000)
    args.points = args.points or (100_000 if quick else 1_000_000)
    args.long_steps = args.long_steps or (20_000 if quick else 100_000)
    args.rounds = args.rounds or (2 if quick else 5)
    args.per_round = args.per_round or (10 if quick else 40)
    args.budget = args.budget or (0.5 if quick else 3.0)
    args.clients = (0 if quick else 4) if args.clients is None else args.clients
    h.check_redis(args.redis_url)
    loads = [("start", os.getloadavg())]
    h.progress(f"load average at the start: {', '.join(f'{x:.2f}' for x in loads[0][1])} "
               f"({os.cpu_count()} CPUs; the figures are only as quiet as the machine)")

    from tests.services import ServerProcess

    drop = None
    with tempfile.TemporaryDirectory(prefix="tuneboard-bench-history-") as tmp:
        work = Path(tmp)
        if args.database_url:
            database_url, drop = create_postgres_database(args.database_url)
        else:
            database_url = f"sqlite:///{work / 'data' / 'tuneboard.db'}"
        kind = database_url.split(":", 1)[0].split("+", 1)[0]
        try:
            env = configure(work / "data", database_url, args.redis_url)
            h.progress(f"database: {kind}; seeding {args.jobs:,} jobs, {args.points:,} metric points and a "
                       f"{args.long_steps:,}-step job")
            seeded = seed(args.jobs, args.points, args.long_steps, other_jobs=max(100, args.jobs // 10))
            loads.append(("after seeding", os.getloadavg()))
            cases = build_cases(seeded)
            server = ServerProcess(env, work / "server.log")
            try:
                server.wait_ready(timeout=60)
                results = run_measurements(server, cases, seeded, args, loads)
            finally:
                server.stop()
        finally:
            if drop is not None:
                drop()

    print()
    print(f"{kind}: {len(seeded.jobs):,} jobs in the team (+{len(seeded.other_ids):,} in another), "
          f"{seeded.metric_points:,} metric points; seeded in {seeded.seconds:.0f} s")
    print("load averages (1, 5, 15 min): " + "; ".join(f"{name} {a:.2f} {b:.2f} {c:.2f}" for name, (a, b, c) in loads))
    print()
    print(table(cases, args.clients))
    print()
    print(sizes(cases))
    if args.json:
        h.write_json(args.json, {
            "benchmark": "history", "database": kind, "machine": h.machine(), "versions": h.versions(),
            "settings": {k: v for k, v in vars(args).items() if k not in ("json", "database_url")},
            "seeding_s": seeded.seconds, "loads": loads, "results": results,
        })
    return 0


def run_measurements(server, cases: list[Case], seeded: Seeded, args, loads) -> list[dict[str, Any]]:
    """Warm up, check the answers, time the interleaved rounds and (optionally) the concurrent clients."""
    import httpx

    token_headers = {"Authorization": f"Bearer {seeded.token}"}
    with httpx.Client(base_url=server.url, timeout=120, trust_env=False) as client:  # one keep-alive connection
        verify(client, cases, seeded, token_headers)
        for case in cases:  # warm-up: template compilation, the database's page cache, the token's last_used_at
            for _ in range(3):
                _fetch(client, case, token_headers)
        h.progress("answers checked, warmed up; timing")
        measure(client, cases, server.process.pid, token_headers, args.rounds, args.per_round, args.budget, loads)
    if args.clients:
        h.progress(f"{args.clients} concurrent clients, {2 if args.quick else 4} s per case")
        measure_concurrent(server.url, cases, token_headers, args.clients, 2.0 if args.quick else 4.0)
        loads.append(("after the concurrent clients", os.getloadavg()))
    return [{"key": c.key, "label": c.label, "samples": len(c.samples_ms), "requests": c.requests,
             "p50_ms": c.pct(50), "p90_ms": c.pct(90), "p99_ms": c.pct(99), "max_ms": max(c.samples_ms),
             "rps": c.rps, "server_cpu_ms": c.cpu_ms, "concurrent_rps": c.concurrent_rps,
             "response_bytes": c.response_bytes, "answer": c.note, "samples_ms": c.samples_ms} for c in cases]


if __name__ == "__main__":
    sys.exit(main())
