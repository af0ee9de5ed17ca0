"""The `tuneboard` command's parser: every subcommand, its options and help, then dispatch to the command's
module in app.cli (`up`, `web`, `worker`, `migrate`, `tokens create`, `sign-in-link`, `inventory`; `submit` and
`jobs` are the terminal client, app/client/, REST only).

argparse rather than typer: the parser is one short function, and typer would add click and rich to every
install and to each start of the command while removing little code, since the options are declared either
way. It would also change the help and error text users and tests read, and the client's `run_submit(args)` /
`run_jobs(args)` take argparse's namespace. It would pay only with many more commands or nested groups.

Must not import torch or `workers` (worker processes are started as `celery -A workers`).
"""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from app.cli.accounts import cmd_sign_in_link, cmd_tokens_create
from app.cli.common import fail
from app.cli.inventory import cmd_inventory
from app.cli.jobs import cmd_jobs, cmd_submit
from app.cli.migrate import cmd_migrate
from app.cli.up import cmd_up
from app.cli.web import cmd_web
from app.cli.worker import cmd_worker
from app.job_status import JobStatus
from app.settings import get_settings


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
    worker.add_argument("--inference", action="store_true",
                        help="answer chat completions (the inference queue, TUNEBOARD_INFERENCE_QUEUE) instead of "
                             "training: keeps a base model loaded, so give it a GPU of its own")
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
    jobs.add_argument("--status", choices=list(JobStatus), help="only jobs with this status")
    jobs.add_argument("--limit", type=_page_size, default=20, help="how many jobs (1-1000, default 20)")
    _add_server_options(jobs)
    jobs.set_defaults(func=cmd_jobs)
    args = parser.parse_args(argv)
    try:
        get_settings()
    except ValidationError as exc:
        # A mistyped TUNEBOARD_* variable: name it and the reason, not a traceback.
        problems = "; ".join(f"TUNEBOARD_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        return fail(f"invalid settings: {problems}")
    return args.func(args)
