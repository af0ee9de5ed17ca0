"""`tuneboard submit` and `tuneboard jobs`: the terminal client (app/client/), which speaks only REST.
Must not import torch or `workers`.
"""

from __future__ import annotations

import argparse


def cmd_submit(args: argparse.Namespace) -> int:
    """Create a job from a YAML job file over the REST API and follow it to its end."""
    from app.client.submit import run_submit

    return run_submit(args)


def cmd_jobs(args: argparse.Namespace) -> int:
    """List the team's jobs over the REST API."""
    from app.client.jobs_list import run_jobs

    return run_jobs(args)
