"""`tuneboard submit config.yaml`: upload the data, create the job, follow it to its end.

Exit status: 0 when the job succeeded, 1 when it failed or was cancelled, 2 for a job file or API
error (one line on stderr, no traceback), 130 on Ctrl-C (the job keeps running on the server).
The job file's format is described in app/client/job_file.py and docs/cli.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from app.client.follow import Follower
from app.client.http import ApiError, Client, connection_from
from app.client.job_file import FILE_KEYS, JobFile, JobFileError, load_job_file
from app.client.progress import Display
from app.job_status import JobStatus

EXIT_OK, EXIT_JOB_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


def human_bytes(count: float) -> str:
    """1536 -> '1.5 KB'."""
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GB"


def print_error(message: str, err: TextIO | None = None) -> None:
    """One line on stderr, as every client error is reported."""
    print(f"tuneboard: error: {message}", file=err or sys.stderr, flush=True)


class _UploadLine:
    """'Uploading train.jsonl  42% (1.1 MB of 2.6 MB)', redrawn on a terminal, start and end in a log."""

    def __init__(self, path: Path, out: TextIO, tty: bool):
        self.path, self.out, self.tty = path, out, tty
        self.size = path.stat().st_size
        self._percent = -1
        self._shown = 0
        if not tty:
            print(f"Uploading {path.name} ({human_bytes(self.size)})...", file=out, flush=True)

    def __call__(self, sent: int) -> None:
        if not self.tty:
            return
        percent = 100 if not self.size else min(100, sent * 100 // self.size)
        if percent != self._percent:
            self._percent = percent
            # At 100% the server still validates the dataset inside the same request.
            after = "; validating..." if percent == 100 else ""
            text = f"Uploading {self.path.name} {percent:3d}% ({human_bytes(sent)} of {human_bytes(self.size)}){after}"
            self.out.write("\r" + text + " " * max(0, self._shown - len(text)))
            self.out.flush()
            self._shown = len(text)

    def end_line(self) -> None:
        """Leave the redrawn line as it is, so what follows starts on a line of its own."""
        if self._shown:
            self.out.write("\n")
            self.out.flush()
            self._shown = 0

    def done(self, record: dict[str, Any]) -> None:
        """Replace the progress with 'Uploaded NAME as file-... (N examples, format).'"""
        if self._shown:
            self.out.write("\r" + " " * self._shown + "\r")
        summary = ", ".join(str(part) for part in (
            f"{record['examples']} examples" if record.get("examples") is not None else None,
            record.get("format")) if part)
        print(f"Uploaded {self.path.name} as {record['id']}" + (f" ({summary})" if summary else "") + ".",
              file=self.out, flush=True)


def upload_files(client: Client, job_file: JobFile, out: TextIO, tty: bool) -> dict[str, str]:
    """Upload the job file's local training / validation files; returns {key: file id}."""
    ids: dict[str, str] = {}
    for key in FILE_KEYS:
        path = job_file.local_file(key)
        if path is None:
            continue
        line = _UploadLine(path, out, tty)
        try:
            record = client.upload_file(path, line)
        except ApiError as exc:
            line.end_line()
            # The server's param is the form field ('file'); the user's is the key in the job file.
            exc.where = exc.where or job_file.where(key)
            exc.message = f"{key} {path.name}: {exc.message}"
            raise
        line.done(record)
        ids[key] = record["id"]
    return ids


def describe_created(job: dict[str, Any], client: Client) -> list[str]:
    """The lines printed once the job exists: its id and queue, the estimate, its page."""
    lines = [f"Created job {job['id']} ({job['status']} on queue {job.get('queue')})."]
    estimate = job.get("estimate") or {}
    if estimate.get("peft_summary"):
        lines.append(f"Estimate: {estimate['peft_summary']}")
    lines.append(f"Page: {client.page_url(job['id'])}")
    return lines


def summarize(job: dict[str, Any], client: Client, display: Display, out: TextIO, err: TextIO) -> int:
    """Print the outcome of a finished job; returns the exit status."""
    job_id, status = job["id"], job["status"]
    progress = job.get("progress") or {}
    steps = f"{progress.get('step')}/{progress.get('total_steps')}" if progress.get("total_steps") else \
        f"{progress.get('step', 0)}"
    if status == JobStatus.SUCCEEDED:
        final = job.get("final_metrics") or {}
        loss = final.get("loss", display.progress.loss)
        eval_loss = final.get("eval_loss", display.progress.eval_loss)
        parts = [f"final loss {loss:.4f}" if loss is not None else "no loss logged"]
        if eval_loss is not None:
            parts.append(f"eval loss {eval_loss:.4f}")
        print(f"Job {job_id} succeeded after {steps} steps: {', '.join(parts)}.", file=out)
        if job.get("adapter_available"):
            url = client.job_url(job_id, "/adapter")
            print(f"Adapter: {url}", file=out)
            print(f'  curl -fLOJ -H "Authorization: Bearer $TUNEBOARD_TOKEN" {url}', file=out, flush=True)
        return EXIT_OK
    if status == "failed":
        error = job.get("error") or {}
        code = f" ({error['code']})" if error.get("code") else ""
        print(f"Job {job_id} failed at step {steps}: {error.get('message') or 'no reason given'}{code}",
              file=err, flush=True)
        return EXIT_JOB_FAILED
    print(f"Job {job_id} was {status} at step {steps}.", file=err, flush=True)
    return EXIT_JOB_FAILED


def cancel_hint(client: Client, job_id: str) -> str:
    """How to cancel a job the client stopped following."""
    return (f"Stopped following {job_id}; the job keeps running. To cancel it:\n"
            f'  curl -X POST -H "Authorization: Bearer $TUNEBOARD_TOKEN" {client.job_url(job_id, "/cancel")}\n'
            f"or press Cancel on its page: {client.page_url(job_id)}")


def run_submit(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """The `submit` command: check the job file, upload, create, and (with --follow) follow the job."""
    out, err = out or sys.stdout, err or sys.stderr
    tty = out.isatty()
    try:
        job_file = load_job_file(Path(args.config))
        connection = connection_from(args.url, args.token)
    except JobFileError as exc:
        print_error(str(exc), err)
        return EXIT_ERROR
    except ApiError as exc:
        print_error(exc.one_line(), err)
        return EXIT_ERROR
    job: dict[str, Any] | None = None
    display = Display(out, tty=tty)
    with Client(connection) as client:
        try:
            file_ids = upload_files(client, job_file, out, tty)
            job = client.create_job(job_file.request_body(file_ids))
            print("\n".join(describe_created(job, client)), file=out, flush=True)
            if not args.follow:
                return EXIT_OK
            display.set_total((job.get("progress") or {}).get("total_steps"))
            final = Follower(client, job["id"], display).run()
            display.close()
            return summarize(final, client, display, out, err)
        except ApiError as exc:
            display.close()
            if job is None and exc.param:
                exc.where = exc.where or job_file.where(exc.param)
            print_error(exc.one_line(), err)
            return EXIT_ERROR
        except KeyboardInterrupt:
            display.close()
            if job is None:
                print("\nInterrupted before the job was created; check `tuneboard jobs` if unsure.", file=err,
                      flush=True)
            else:
                print("\n" + cancel_hint(client, job["id"]), file=err, flush=True)
            return EXIT_INTERRUPTED
