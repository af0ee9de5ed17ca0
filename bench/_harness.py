"""Shared plumbing of the job benchmarks (training, streaming, queueing): environment, data, figures.

Not a benchmark itself. Each benchmark points Tuneboard at a throw-away data dir (SQLite inside it)
and at a Redis database, the way `tests/service_fixtures.py` does for the tests, and prints its
figures with the helpers here.

Redis: `redis://127.0.0.1:6379/0` by default. The test suite uses that database too, each test under a
key prefix of its own (TUNEBOARD_REDIS_KEY_PREFIX=tbtest-...:) whose keys it deletes, and never
flushes it. The benchmarks only use keys named after their own job ids and queues, and delete those
keys when they end; they never flush a database.
"""

from __future__ import annotations

import datetime
import inspect
import json
import os
import platform
import random
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

_STARTED = time.monotonic()


def progress(message: str) -> None:
    """One progress line, prefixed with the seconds since the benchmark started."""
    print(f"[{time.monotonic() - _STARTED:7.1f} s] {message}", flush=True)


def exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM (e.g. from `timeout`) into KeyboardInterrupt, so the benchmark's cleanup still runs."""

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, interrupt)


def percentile(samples: Sequence[float], pct: float) -> float:
    """The pct-th percentile (0-100) with linear interpolation; nan for no samples."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or value != value:  # None or nan
        return "-"
    return f"{value:,.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (right-aligned after the first column)."""
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    rule = "| " + " | ".join(("-" * w if i == 0 else "-" * (w - 1) + ":") for i, w in enumerate(widths)) + " |"
    body = ["| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths,
                                                                                                strict=True)))
            + " |" for r in rows]
    return "\n".join([line, rule, *body])


def versions() -> dict[str, str]:
    """Versions of the packages a benchmark's figures depend on (those importable here)."""
    from importlib import metadata

    found = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "accelerate", "celery", "kombu", "redis", "sqlalchemy",
                 "fastapi", "starlette", "uvicorn", "sse-starlette", "httpx", "uvloop"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        import redis

        found["redis-server"] = redis.Redis.from_url(DEFAULT_REDIS_URL).info("server")["redis_version"]
    except Exception:  # informational only
        pass
    return found


def machine() -> dict[str, Any]:
    """What the figures were measured on, including how busy the machine was."""
    info: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "sched_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def configure(data_dir: Path, redis_url: str, **extra: str) -> dict[str, str]:
    """Aim Tuneboard's settings at data_dir (SQLite inside) and redis_url; migrate; return a subprocess env.

    Sets the TUNEBOARD_* variables in this process too and clears the settings cache, as the tests'
    `tuneboard_env` fixture does, so in-process calls (`app.jobs.launch`, `workers.job_runner`) see them.
    """
    from app.ops.migrate import upgrade_database
    from app.settings import get_settings

    data_dir.mkdir(parents=True, exist_ok=True)
    database_url = f"sqlite:///{data_dir / 'tuneboard.db'}"
    values = {
        "TUNEBOARD_DATA_DIR": str(data_dir),
        "TUNEBOARD_DATABASE_URL": database_url,
        "TUNEBOARD_REDIS_URL": redis_url,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # The benchmarks build their models beside the data dir; a worker loads local models only under a root.
        "TUNEBOARD_MODEL_ROOTS": str(data_dir.parent),
        **extra,
    }
    os.environ.update(values)
    get_settings.cache_clear()
    upgrade_database(database_url)
    return {**os.environ, **values}


def quiet_transformers() -> None:
    """No progress bars or info logs from transformers in this process (they would drown the progress lines)."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def check_redis(url: str) -> None:
    """Exit with a clear message when Redis does not answer at url."""
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        sys.exit(f"Redis does not answer at {url} ({exc}); start one or pass --redis-url")


def delete_job_keys(url: str, job_ids: Iterable[str], queues: Iterable[str] = (), patterns: Iterable[str] = ()) -> None:
    """Remove the Redis keys this benchmark created: its jobs' streams / cancel flags, its Celery queues."""
    import redis

    client = redis.Redis.from_url(url)
    keys: list[bytes | str] = []
    for job_id in job_ids:
        keys += [f"tuneboard:job:{job_id}:stream", f"tuneboard:job:{job_id}:cancel"]
    for queue in queues:
        keys.append(queue)
        keys += list(client.scan_iter(match=f"_kombu.binding.{queue}*"))
        keys += list(client.scan_iter(match=f"_kombu.binding_permanent.{queue}*"))
        keys += list(client.scan_iter(match=f"{queue}\x06\x16*"))  # kombu's priority sub-queues
    for pattern in patterns:
        keys += list(client.scan_iter(match=pattern))
    if keys:
        client.delete(*keys)


# ---------------------------------------------------------------------------------------------- accounts
@dataclass
class Account:
    """The benchmark's own user and team (when Tuneboard has accounts): who owns its files and jobs."""

    principal: Any = None  # app.accounts.users.Principal
    token: str | None = None  # an API token of that user in that team

    @property
    def owner(self) -> dict[str, str]:
        """The ownership columns a DataFile / Job row needs."""
        if self.principal is None:
            return {}
        return {"team_id": self.principal.team.id, "created_by": self.principal.user.id}

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def bench_account() -> Account:
    """A fresh user (admin of a fresh team) with an API token, in the configured database."""
    try:
        from app.accounts import users
    except ImportError:  # a Tuneboard without accounts
        return Account()
    from app.db import new_session

    tag = uuid.uuid4().hex[:8]
    with new_session() as session:
        user = users.create_user(session, f"bench-{tag}@localhost", name="bench")
        team = users.create_team(session, f"bench-{tag}")
        users.set_membership(session, user, team, "admin")
        _, token = users.create_api_token(session, user, team, "bench")
    return Account(users.Principal(user, team, "admin", "token"), token)


def _with_principal(function, account: Account, *args: Any) -> tuple:
    takes = "principal" in inspect.signature(function).parameters
    return (*args, account.principal) if takes else args


def store_file(session, settings, account: Account, *, filename: str, data: bytes) -> Any:
    """`app.datasets.files.store_upload` as the API calls it (a fine-tune dataset, no column mapping)."""
    from app.datasets.files import store_upload

    return store_upload(*_with_principal(store_upload, account, session, settings), filename=filename, data=data,
                        purpose="fine-tune", column_mapping=None)


def launch_job(session, settings, account: Account, config, **kwargs: Any) -> Any:
    """`app.jobs.launch.launch` as `POST /v1/fine_tuning/jobs` calls it, for the benchmark's account."""
    from app.jobs.launch import launch

    return launch(*_with_principal(launch, account, session, settings), config, **kwargs)


# ---------------------------------------------------------------------------------------------- models/data
WORDS = (
    "the quick brown fox jumps over lazy dog a small model learns simple mapping sky is blue grass green "
    "translate to french cat chat dog chien house maison water eau bread pain reverse word stop pots live "
    "evil star rats draw ward loop pool numbers one two three four five six seven eight nine ten eleven "
    "twelve capital of france paris italy rome spain madrid fine tuning with low rank adapters trains two "
    "matrices per layer and freezes the rest"
).split()


def queued_job(config, *, file_id: str, account: Account, queue: str) -> str:
    """A job row as the launch leaves it (queued, one attempt allowed), for a benchmark that runs it itself."""
    from app.db import new_session
    from app.tables import Job

    with new_session() as session:
        job = Job(model=config.model, queue=queue, config=config.model_dump(mode="json"), training_file_id=file_id,
                  status="queued", max_attempts=1, **account.owner)
        session.add(job)
        session.commit()
        return job.id


def chat_records(count: int, *, words: tuple[int, int] = (50, 90), seed: int = 0) -> list[dict]:
    """Deterministic chat examples whose assistant turns are `words` long (about 1.5 tokens a word here)."""
    rng = random.Random(seed)
    records = []
    for i in range(count):
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(*words)))
        records.append({"messages": [
            {"role": "system", "content": "Answer briefly and exactly."},
            {"role": "user", "content": f"Question {i}: say something about {rng.choice(WORDS)}."},
            {"role": "assistant", "content": answer.capitalize() + "."},
        ]})
    return records


def jsonl(records: Iterable[dict]) -> bytes:
    return "\n".join(json.dumps(r) for r in records).encode()


def build_model(directory: Path, *, hidden: int = 256, layers: int = 4, intermediate: int = 1024, heads: int = 8,
                kv_heads: int = 4, seed: int = 0) -> Path:
    """A random Llama of the given shape with the tests' tiny BPE tokenizer and ChatML template, on disk."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tests.tiny_model import build_tiny_model

    build_tiny_model(directory, seed=seed)
    if (hidden, layers) == (64, 2):
        return directory
    config = AutoConfig.from_pretrained(directory)
    config.update({"hidden_size": hidden, "num_hidden_layers": layers, "intermediate_size": intermediate,
                   "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": hidden // heads})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    for stale in directory.glob("*.safetensors"):
        stale.unlink()
    model.save_pretrained(directory)
    return directory


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")
