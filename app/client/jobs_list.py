"""`tuneboard jobs`: the team's fine-tuning jobs as a table, newest first.

    ID            SUFFIX   MODEL                                     STATUS        STEP  FINAL LOSS  CREATED
    ftjob-8aQk2…  -        …kpoints/llama-3.1-8b-instruct-merged-v2  running    120/600           -  2025-05-02 14:04
    ftjob-Ij28g…  colours  HuggingFaceTB/SmolLM2-135M-Instruct       succeeded  600/600      0.4321  2025-05-02 14:03

Times are local. Exit status 0, or 2 with one line on stderr for an API error, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

from app.client.http import ApiError, Client, connection_from
from app.client.submit import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, print_error

COLUMNS = ("ID", "SUFFIX", "MODEL", "STATUS", "STEP", "FINAL LOSS", "CREATED")
RIGHT_ALIGNED = {"STEP", "FINAL LOSS"}
# Local model paths get long; their tail (the directory name) is the part that tells them apart.
MODEL_WIDTH = 40


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


def job_row(job: dict[str, Any]) -> tuple[str, ...]:
    """One table row of a job object."""
    progress = job.get("progress") or {}
    step, total = progress.get("step"), progress.get("total_steps")
    steps = f"{step or 0}/{total}" if total else ("-" if not step else str(step))
    loss = (job.get("final_metrics") or {}).get("loss")
    created = job.get("created_at")
    return (
        job["id"],
        job.get("user_provided_suffix") or "-",
        _shorten(str(job.get("model", "")), MODEL_WIDTH),
        job.get("status", "?"),
        steps,
        f"{loss:.4f}" if isinstance(loss, int | float) else "-",
        time.strftime("%Y-%m-%d %H:%M", time.localtime(created)) if isinstance(created, int | float) else "-",
    )


def render_table(jobs: list[dict[str, Any]]) -> str:
    """The jobs, newest first, as an aligned plain-text table."""
    ordered = sorted(jobs, key=lambda j: (j.get("created_at") or 0, j["id"]), reverse=True)
    rows = [COLUMNS, *(job_row(job) for job in ordered)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = []
    for row in rows:
        cells = [cell.rjust(width) if name in RIGHT_ALIGNED else cell.ljust(width)
                 for name, cell, width in zip(COLUMNS, row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def run_jobs(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """The `jobs` command: print a page of the team's jobs."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        with Client(connection_from(args.url, args.token)) as client:
            page = client.list_jobs(limit=args.limit, status=args.status)
    except ApiError as exc:
        print_error(exc.one_line(), err)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    jobs = page.get("data") or []
    if not jobs:
        print("No jobs" + (f" with status {args.status}." if args.status else "."), file=out)
        return EXIT_OK
    print(render_table(jobs), file=out)
    if page.get("has_more"):
        print(f"(the newest {len(jobs)} shown; raise --limit to see more)", file=out)
    return EXIT_OK
