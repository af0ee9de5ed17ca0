"""`tuneboard worker`: a training (or, with --inference, an inference) worker in the foreground, and the Celery
command line `up` starts its workers with.
Must not import torch or `workers` (the worker is `celery -A workers`, another process).
"""

from __future__ import annotations

import argparse
import os
import sys

from app.settings import get_settings


def worker_command(queues: list[str], name: str, concurrency: int = 1) -> list[str]:
    """The Celery command line of a Tuneboard worker: one job at a time per GPU."""
    # -P: the current folder is not put on the path, so a folder of the user's named app/ or workers/ cannot
    # stand in for Tuneboard's packages.
    return [sys.executable, "-P", "-m", "celery", "-A", "workers", "worker", "-Q", ",".join(queues),
            "-c", str(concurrency), "-n", f"{name}@%h", "--loglevel", "INFO", "-E"]


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a worker in the foreground on the given queues (wraps `celery -A workers worker`)."""
    settings = get_settings()
    if args.inference:
        queues, name = args.queues.split(",") if args.queues else [settings.inference_queue], args.name or "inference"
    else:
        queues, name = args.queues.split(",") if args.queues else [settings.default_queue], args.name or "worker"
    command = worker_command(queues, name, args.concurrency)
    os.execv(sys.executable, command)
    return 0
