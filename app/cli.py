"""The `tuneboard` command: `up` runs everything on this machine, `web` serves only the web app (a fleet's web
container), `worker` joins a GPU host to the queue, `migrate` upgrades the database, `sign-in-link` prints a
browser sign-in link for a user, `inventory` computes a model's module inventory; `submit` and `jobs` are the
terminal client (app/client/, REST only).
Must not import torch or `workers` (worker processes are started as `celery -A workers`).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from app.settings import DEFAULT_EMBEDDED_REDIS_PORT, get_settings


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _any_free_port(besides: int) -> int:
    # The web port is not bound until uvicorn starts, after Redis: never hand it to Redis.
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            chosen = sock.getsockname()[1]
        if chosen != besides:
            return chosen


def _fail(message: str) -> int:
    print(f"tuneboard: {message}", file=sys.stderr, flush=True)
    return 2


def _writable(directory: Path, what: str = "the data directory") -> str | None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return f"cannot write to {what} {directory}: {exc.strerror}"
    return None


def _shown_url(url: str) -> str:
    """A database URL as it may be printed: without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _prepare_database(settings) -> str | None:
    """Create the folder a SQLite database lives in, then migrate; what went wrong, in one line, or None."""
    from sqlalchemy.engine import make_url

    from app.ops.migrate import upgrade_database

    url = make_url(settings.effective_database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        # SQLite creates the file but not its folder ("unable to open database file" otherwise).
        problem = _writable(settings.data_dir) if settings.database_url is None else \
            _writable(Path(url.database).parent, "the database's folder")
        if problem:
            return problem
    try:
        upgrade_database()
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__]
        return f"cannot prepare the database {_shown_url(str(url))}: {cause[0]}"
    return None


def worker_command(queues: list[str], name: str, concurrency: int = 1) -> list[str]:
    """The Celery command line of a Tuneboard worker: one job at a time per GPU."""
    return [sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", ",".join(queues),
            "-c", str(concurrency), "-n", f"{name}@%h", "--loglevel", "INFO", "-E"]


def _wait_http(url: str, process: subprocess.Popen, timeout: float = 60) -> bool:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            time.sleep(0.2)
    return False


DEMO_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
# A first start converts the demo model in about a minute on a laptop's CPU; past this, `up` stops waiting.
DEMO_MODEL_WAIT_SECONDS = 600


def _wait_for_demo_model(converter: subprocess.Popen, log: Path, children, stop: dict) -> int | None:
    """Wait for the demo model's preparation and say how it went, so the address and link print after it.

    Returns None to go on, or the exit status for `up` when it was stopped or a child died meanwhile."""
    from app.ops.supervisor import wait_for_interrupt

    if converter.poll() is None:
        print(f"Preparing the demo model {DEMO_MODEL} (first start only, about a minute)...", flush=True)
    if (code := wait_for_interrupt(children, stop, until=converter, timeout=DEMO_MODEL_WAIT_SECONDS)) is not None:
        return code
    code = converter.poll()
    state = ("still being prepared; the first demo job waits for it" if code is None
             else "ready" if code == 0 else f"not prepared (see {log})")
    print(f"Demo model {DEMO_MODEL} {state}.", flush=True)
    return None


def cmd_up(args: argparse.Namespace) -> int:
    """Run the web app, one worker and (unless configured otherwise) an embedded Redis, with SQLite."""
    from app.ops.supervisor import Children, catch_stop_signals

    settings = get_settings()
    host, port = args.host or settings.host, args.port or settings.port
    if not _port_free(host, port):
        return _fail(f"port {port} on {host} is already in use; pick another with --port.")
    if problem := _writable(settings.data_dir):
        return _fail(problem)
    children = Children()
    try:
        code = _start_and_wait(settings, host, port, children)
    except KeyboardInterrupt:  # Ctrl-C while starting: stop what started, without a traceback
        code = 130
    finally:
        catch_stop_signals()  # a second Ctrl-C while the children stop must not leave them running
        children.stop_all()
    if code in (0, 130):  # stopped by Ctrl-C or SIGTERM
        print(f"Tuneboard stopped; everything is kept in {settings.data_dir.resolve()} (a running job resumes "
              "at the next `tuneboard up`).", flush=True)
    return code


def _start_embedded_redis(settings, web_port: int, children) -> str:
    """Start the embedded Redis as a child; returns its URL (RedisUnavailable says why it could not start)."""
    from app.ops.redis_server import RedisUnavailable, start_embedded_redis

    configured = settings.embedded_redis_port
    if configured is not None:
        if not _port_free("127.0.0.1", configured):
            raise RedisUnavailable(f"port {configured} for the embedded Redis is in use; set another "
                                   "TUNEBOARD_EMBEDDED_REDIS_PORT, leave it unset, or set TUNEBOARD_REDIS_URL.")
        candidates = [configured]
    else:
        # Another install's embedded Redis may hold the usual port: any free one will do, since every process
        # that needs it is started here and told where it is. A second try covers a port taken between the
        # check and the start.
        usual = DEFAULT_EMBEDDED_REDIS_PORT
        candidates = [usual if _port_free("127.0.0.1", usual) else _any_free_port(besides=web_port),
                      _any_free_port(besides=web_port)]

    def start(redis_port: int) -> str:
        children.add("redis", start_embedded_redis(settings.embedded_redis_dir, redis_port,
                                                   binary=settings.redis_server_binary))
        return f"redis://127.0.0.1:{redis_port}/0"

    for redis_port in candidates[:-1]:
        try:
            return start(redis_port)
        except RedisUnavailable:
            pass  # taken since the check: the next candidate
    return start(candidates[-1])


def _start_and_wait(settings, host: str, port: int, children) -> int:
    from app.base_models.inventories import worker_stack_installed
    from app.ops.redis_server import RedisUnavailable
    from app.ops.supervisor import catch_stop_signals, wait_for_interrupt
    from app.storage import artifacts

    env = {**os.environ, "TUNEBOARD_DATA_DIR": str(settings.data_dir.resolve())}
    if problem := _prepare_database(settings):
        return _fail(problem)
    try:
        artifacts.ping(settings)
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback
        return _fail(f"cannot use the artifact store {artifacts.get_store(settings).describe()}: {exc}")
    if settings.redis_url is None:
        try:
            env["TUNEBOARD_REDIS_URL"] = _start_embedded_redis(settings, port, children)
        except RedisUnavailable as exc:
            return _fail(str(exc))
    converter = None
    if worker_stack_installed():
        children.start("worker", worker_command([settings.default_queue], "local"), env,
                       log=settings.data_dir / "worker.log")
        # First run converts the demo GGUF once (tens of seconds), alongside the web server's start.
        demo_log = settings.data_dir / "demo-model.log"
        converter = children.start("demo model", [sys.executable, "-m", "workers.demo_model"], env, log=demo_log,
                                   one_shot=True)
    else:
        print("No worker started: the ML stack is not installed (pip install 'tuneboard[worker]').", flush=True)
    # Migrated above already: the web app's own migration would only add its log lines to this terminal.
    web_env = {**env, "TUNEBOARD_MIGRATE_ON_START": "false"}
    web = children.start("web", [sys.executable, "-m", "uvicorn", "app.main:app", "--host", host,
                                 "--port", str(port), "--log-level", "warning",
                                 # The app itself decides which proxies to believe (TUNEBOARD_TRUSTED_PROXIES).
                                 "--no-proxy-headers"], web_env)
    if not _wait_http(f"http://{host}:{port}/healthz", web):
        return _fail("the web server did not start; see the messages above.")
    link = first_run_link(f"http://{host}:{port}")
    # Caught before the address is printed: a Ctrl-C from then on is the normal way to stop, status 0.
    stop = catch_stop_signals()
    # The address and the sign-in link come last, where the user looks: after the demo model's line.
    if converter is not None and (code := _wait_for_demo_model(converter, demo_log, children, stop)) is not None:
        return code
    print(f"Tuneboard is running at http://{host}:{port}/  (Ctrl-C to stop)", flush=True)
    if link:
        print(f"First start: sign in as the admin with this one-time link:\n    {link}", flush=True)
    return wait_for_interrupt(children, stop)


def cmd_web(args: argparse.Namespace) -> int:
    """Serve only the web app; Redis, the database and the workers are configured to run elsewhere."""
    import uvicorn

    settings = get_settings()
    host, port = args.host or settings.host, args.port or settings.port
    # The first-run link needs the schema: migrate here when the app would (the lifespan's second run is a
    # no-op); a fleet migrates beforehand and turns TUNEBOARD_MIGRATE_ON_START off.
    if settings.migrate_on_start and (problem := _prepare_database(settings)):
        return _fail(problem)
    shown_host = "localhost" if host in ("0.0.0.0", "::") else host
    if link := first_run_link(f"http://{shown_host}:{port}"):
        print(f"First start: sign in as the admin with this one-time link:\n    {link}", flush=True)
    # The app itself decides which proxies to believe (TUNEBOARD_TRUSTED_PROXIES), not uvicorn's default.
    uvicorn.run("app.main:app", host=host, port=port, proxy_headers=False)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a worker in the foreground on the given queues (wraps `celery -A workers worker`)."""
    settings = get_settings()
    queues = args.queues.split(",") if args.queues else [settings.default_queue]
    command = worker_command(queues, args.name or "worker", args.concurrency)
    os.execv(sys.executable, command)
    return 0


def first_run_link(base_url: str) -> str | None:
    """On an install with no users: create the admin and return a one-time sign-in URL for them."""
    from app.accounts import users
    from app.db import new_session

    with new_session() as session:
        created = users.ensure_first_admin(session)
        if created is None:
            return None
        user, team = created
        return f"{base_url}/login/link/{users.create_sign_in_link(session, user, team)}"


def cmd_tokens_create(args: argparse.Namespace) -> int:
    """Print a new API token for a user (creating the first admin on a fresh install)."""
    from app.accounts import users
    from app.db import new_session
    from app.tables import Team

    if problem := _prepare_database(get_settings()):
        return _fail(problem)
    with new_session() as session:
        users.ensure_first_admin(session, args.user)
        user = users.find_user(session, args.user)
        if user is None:
            return _fail(f"no user {args.user}; invite them from the Team page first")
        teams = users.memberships(session, user)
        team = next((t for t, _ in teams if args.team is None or t.name == args.team), None)
        if team is None:
            names = ", ".join(t.name for t, _ in teams) or "none"
            return _fail(f"{args.user} is not in team {args.team!r} (their teams: {names})")
        _, plaintext = users.create_api_token(session, user, session.get(Team, team.id), args.name)
    print(plaintext)
    return 0


def cmd_sign_in_link(args: argparse.Namespace) -> int:
    """Print a one-time browser sign-in link for a user (a lost invitation link or a forgotten password)."""
    from app.accounts import invitations, users
    from app.db import new_session

    settings = get_settings()
    if problem := _prepare_database(settings):
        return _fail(problem)
    with new_session() as session:
        user = users.find_user(session, args.user)
        if user is None:
            return _fail(f"no user {args.user}; invite them from the Team page first")
        # Their teams first, then the teams that invited them: following the link accepts that invitation.
        teams = [team for team, _ in users.memberships(session, user)]
        teams += [team for _, team in invitations.pending_for_user(session, user)]
        team = next((t for t in teams if args.team is None or t.name == args.team), None)
        if team is None:
            names = ", ".join(t.name for t in teams) or "none"
            return _fail(f"{args.user} is neither in nor invited to team {args.team!r} (their teams: {names})")
        token = users.create_sign_in_link(session, user, team)
    base = (args.url or f"http://{settings.host}:{settings.port}").rstrip("/")
    print(f"{base}/login/link/{token}")
    print(f"One-time link for {user.email} in {team.name}, valid for a day; it replaces any earlier link. Signed in "
          "with it, they can set a new password within the hour without the old one.", file=sys.stderr)
    return 0


def cmd_migrate(_args: argparse.Namespace) -> int:
    """Upgrade the configured database to the newest schema."""
    settings = get_settings()
    if problem := _prepare_database(settings):
        return _fail(problem)
    print(f"database at {_shown_url(settings.effective_database_url)} is up to date")
    return 0


def cmd_inventory(args: argparse.Namespace) -> int:
    """Compute and cache the module inventory of a model outside the catalog (needs the worker extra)."""
    from app.base_models.inventories import resolve_source, worker_stack_installed

    if not worker_stack_installed():
        return _fail("computing inventories needs the worker extra: pip install 'tuneboard[worker]'")
    source = resolve_source(args.model)
    out = get_settings().inventory_cache_dir / f"{source.cache_name}.json"
    result = subprocess.run([sys.executable, "-m", "workers.inventory", source.model_id, "--out", str(out)])
    if result.returncode == 0:
        print(f"wrote {out}")
    return result.returncode


JOB_STATUSES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")


def cmd_submit(args: argparse.Namespace) -> int:
    """Create a job from a YAML job file over the REST API and follow it to its end."""
    from app.client.submit import run_submit

    return run_submit(args)


def cmd_jobs(args: argparse.Namespace) -> int:
    """List the team's jobs over the REST API."""
    from app.client.jobs_list import run_jobs

    return run_jobs(args)


def _page_size(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError("must be between 1 and 1000")
    return value


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the Tuneboard server (default: $TUNEBOARD_URL, else http://127.0.0.1:8000)")
    parser.add_argument("--token", help="API token (default: $TUNEBOARD_TOKEN)")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tuneboard` console script."""
    parser = argparse.ArgumentParser(prog="tuneboard", description="Self-hosted LoRA fine-tuning dashboard.")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="run the web app, a worker and an embedded Redis on this machine")
    up.add_argument("--host")
    up.add_argument("--port", type=int)
    up.set_defaults(func=cmd_up)
    web = commands.add_parser("web", help="serve only the web app (Redis, database and workers run elsewhere)")
    web.add_argument("--host", help="address to listen on (default: TUNEBOARD_HOST)")
    web.add_argument("--port", type=int, help="port (default: TUNEBOARD_PORT)")
    web.set_defaults(func=cmd_web)
    worker = commands.add_parser("worker", help="run a training worker (celery -A workers worker)")
    worker.add_argument("-Q", "--queues", help="comma-separated queues to serve (default: the default queue)")
    worker.add_argument("-n", "--name", help="worker name (default: worker)")
    worker.add_argument("-c", "--concurrency", type=int, default=1, help="jobs at once; keep 1 per GPU")
    worker.set_defaults(func=cmd_worker)
    tokens = commands.add_parser("tokens", help="API tokens").add_subparsers(dest="tokens_command", required=True)
    create = tokens.add_parser("create", help="print a new API token for a user")
    create.add_argument("--user", required=True, help="the user's email (the first admin's on a fresh install)")
    create.add_argument("--team", help="team name (default: the user's first team)")
    create.add_argument("--name", default="cli", help="what the token is for")
    create.set_defaults(func=cmd_tokens_create)
    link = commands.add_parser("sign-in-link", help="print a one-time browser sign-in link for a user")
    link.add_argument("--user", required=True, help="the user's email")
    link.add_argument("--team", help="team name (default: the user's first team, else the first that invited them)")
    link.add_argument("--url", help="the address browsers reach Tuneboard at (default: http://HOST:PORT)")
    link.set_defaults(func=cmd_sign_in_link)
    migrate = commands.add_parser("migrate", help="upgrade the database schema")
    migrate.set_defaults(func=cmd_migrate)
    inventory = commands.add_parser("inventory", help="compute a model's module inventory (needs torch)")
    inventory.add_argument("model", help="Hugging Face id or local directory with config.json")
    inventory.set_defaults(func=cmd_inventory)
    submit = commands.add_parser("submit", help="create a job from a YAML file and follow its progress",
                                 description="Create a fine-tuning job from a YAML job file (see docs/cli.md) "
                                 "and follow it with a live progress line. Exit status: 0 succeeded, 1 failed or "
                                 "cancelled, 2 job file or API error, 130 interrupted (the job keeps running).")
    submit.add_argument("config", help="the job file (model, training_file, lora, training, ...)")
    submit.add_argument("--follow", action=argparse.BooleanOptionalAction, default=True,
                        help="follow the job to its end (default) or return once it is created")
    _add_server_options(submit)
    submit.set_defaults(func=cmd_submit)
    jobs = commands.add_parser("jobs", help="list fine-tuning jobs, newest first")
    jobs.add_argument("--status", choices=JOB_STATUSES, help="only jobs with this status")
    jobs.add_argument("--limit", type=_page_size, default=20, help="how many jobs (1-1000, default 20)")
    _add_server_options(jobs)
    jobs.set_defaults(func=cmd_jobs)
    args = parser.parse_args(argv)
    try:
        get_settings()
    except ValidationError as exc:
        # A mistyped TUNEBOARD_* variable: name it and the reason, not a traceback.
        problems = "; ".join(f"TUNEBOARD_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        return _fail(f"invalid settings: {problems}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
