"""The terminal client (`tuneboard submit`, `tuneboard jobs`) run as a subprocess against the real stack.

A uvicorn server, a real Celery worker training a tiny Llama, Redis streams and SQLite; the client gets
only --url and --token (no TUNEBOARD_* settings), as on a laptop that reaches a remote server. Its
stdout is a pipe here, so it prints the progress line at every tenth of the run instead of redrawing.
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from app import redis_client
from app.client.http import Client, Connection
from app.client.progress import Display, Progress, format_eta
from tests.jobs.helpers import chat_records, json_lines, wait_for_inventory

# The client only speaks HTTP, so one database is enough for it; the jobs tests cover both.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

REPO = Path(__file__).resolve().parents[2]
LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
TRAINING = {"max_steps": 40, "batch_size": 4, "learning_rate": 5e-3, "sequence_length": 64, "precision": "fp32",
            "logging_steps": 1, "save_steps": 20, "lr_scheduler": "constant"}
CATALOG_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # its inventory is committed: launching computes nothing
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens there


def client_env() -> dict[str, str]:
    """The environment of a client machine: none of the server's TUNEBOARD_* settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TUNEBOARD_")}


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m app.cli ARGS` to its end."""
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=REPO, env=client_env(), capture_output=True,
                          text=True, timeout=timeout)


def write_job_file(directory: Path, values: dict, name: str = "job.yaml") -> Path:
    """A job file with the keys in the given order (so tests know their lines)."""
    path = directory / name
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def write_training_data(directory: Path, count: int = 32) -> None:
    """data/train.jsonl next to the job file."""
    (directory / "data").mkdir(exist_ok=True)
    (directory / "data" / "train.jsonl").write_bytes(json_lines(chat_records(count)))


class LiveCli:
    """`python -m app.cli ARGS` running in the background, its output collected line by line."""

    def __init__(self, *args: str):
        # Ctrl-C must reach Python as KeyboardInterrupt even where the test runner ignores SIGINT.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args], cwd=REPO, env=client_env(), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for_line(self, pattern: str, timeout: float = 60) -> re.Match:
        """Block until a stdout line matches pattern; returns the match."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    break
                continue
            self.stdout.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r}; output so far:\n" + "\n".join(self.stdout)
                             + "\nstderr:\n" + (self.process.stderr.read() if self.process.poll() is not None else ""))

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        """Wait for the exit; returns (status, all of stdout, stderr)."""
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=timeout)  # it ends at the pipe's end: every line is queued then
        while not self.lines.empty():
            self.stdout.append(self.lines.get())
        return code, "\n".join(self.stdout), self.process.stderr.read()

    def kill(self) -> None:
        """Stop it if a failed assertion left it running."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def model_dir(tiny_model_dir, tuneboard_env) -> str:
    wait_for_inventory(str(tiny_model_dir), tuneboard_env.settings)
    return str(tiny_model_dir)


def api(live_server, account, path: str) -> dict:
    """GET an API path as the account."""
    response = httpx.get(f"{live_server.url}{path}", headers=account.headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


@sqlite_only
def test_submit_uploads_trains_and_follows_to_success_then_jobs_lists_it(live_server, account, start_worker,
                                                                          model_dir, tmp_path):
    start_worker()
    write_training_data(tmp_path)
    job_file = write_job_file(tmp_path, {"model": model_dir, "training_file": "data/train.jsonl",
                                         "suffix": "colours", "metadata": {"run": "cli"}, "lora": LORA,
                                         "training": TRAINING})

    done = run_cli("submit", str(job_file), "--url", live_server.url, "--token", account.token)

    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert done.stderr == ""
    assert "Uploading train.jsonl (" in out and re.search(r"Uploaded train\.jsonl as file-\S+ \(32 examples", out)
    job_id = re.search(r"^Created job (ftjob-\S+) \(queued on queue ", out, re.M).group(1)
    assert f"Page: {live_server.url}/jobs/{job_id}" in out
    assert "Estimate: trainable params:" in out
    # Not a terminal: no redraws, and a line at about every tenth of the 40 steps.
    assert "\r" not in out
    steps = [int(s) for s in re.findall(r"^\[[#.]{20}\] step (\d+)/40 · epoch \d+\.\d\d · loss \d+\.\d{4}", out, re.M)]
    assert steps == sorted(set(steps)) and steps[-1] == 40 and 8 <= len(steps) <= 12, steps
    assert re.search(r"^\d\d:\d\d:\d\d Started on worker w1@", out, re.M)
    assert "Checkpoint saved at step 20." in out and "Checkpoint saved at step 40." in out
    final_loss = float(re.search(rf"^Job {job_id} succeeded after 40/40 steps: final loss (\d+\.\d{{4}})\.",
                                 out, re.M).group(1))
    assert f"Adapter: {live_server.url}/v1/fine_tuning/jobs/{job_id}/adapter" in out

    job = api(live_server, account, f"/v1/fine_tuning/jobs/{job_id}")
    assert job["status"] == "succeeded" and job["user_provided_suffix"] == "colours"
    assert job["metadata"] == {"run": "cli"} and job["lora"]["r"] == 8 and job["training"]["max_steps"] == 40
    assert round(job["final_metrics"]["loss"], 4) == final_loss

    listed = run_cli("jobs", "--url", live_server.url, "--token", account.token, timeout=60)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "SUFFIX", "MODEL", "STATUS", "STEP", "FINAL", "LOSS", "CREATED"]
    assert len(rows) == 1
    cells = rows[0].split()
    assert cells[0] == job_id and cells[1] == "colours" and cells[3:6] == ["succeeded", "40/40", f"{final_loss:.4f}"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", cells[6]) and re.fullmatch(r"\d\d:\d\d", cells[7])

    running = run_cli("jobs", "--status", "running", "--url", live_server.url, "--token", account.token, timeout=60)
    assert (running.returncode, running.stdout.strip()) == (0, "No jobs with status running.")


def test_unknown_key_is_refused_with_its_line_before_anything_is_sent(tmp_path):
    write_training_data(tmp_path)
    job_file = write_job_file(tmp_path, {"model": "m", "training_file": "data/train.jsonl", "suffix": "x",
                                         "learning_rate": 0.001, "colour": "blue"})

    done = run_cli("submit", str(job_file), "--url", UNREACHABLE, "--token", "tb_x", timeout=60)

    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"tuneboard: error: {job_file} line 4: unknown key 'learning_rate'; it belongs under `training:`"]


@sqlite_only
def test_invalid_lora_rank_reports_the_servers_message_and_line_in_one_line(live_server, account, tmp_path):
    write_training_data(tmp_path)
    job_file = write_job_file(tmp_path, {"model": CATALOG_MODEL,
                                         "training_file": "data/train.jsonl", "lora": {"r": 0, "lora_alpha": 16}})

    done = run_cli("submit", str(job_file), "--url", live_server.url, "--token", account.token, timeout=60)

    assert done.returncode == 2
    assert "Uploaded train.jsonl as file-" in done.stdout and "Created job" not in done.stdout
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("tuneboard: error: lora.r: ")
    assert "greater than or equal to 1" in line
    assert line.endswith("[param: lora.r; job.yaml line 4]")
    assert api(live_server, account, "/v1/fine_tuning/jobs")["data"] == []


@sqlite_only
def test_bad_dataset_and_bad_token_and_no_server_are_one_line_errors(live_server, account, tmp_path):
    (tmp_path / "broken.jsonl").write_text('{"messages": []}\nnot json\n')
    job_file = write_job_file(tmp_path, {"model": "m", "training_file": "broken.jsonl"})
    done = run_cli("submit", str(job_file), "--url", live_server.url, "--token", account.token, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("tuneboard: error: training_file broken.jsonl: ")
    assert line.endswith("[param: file; job.yaml line 2]")

    denied = run_cli("jobs", "--url", live_server.url, "--token", "tb_wrong", timeout=60)
    assert denied.returncode == 2
    assert "(pass --token or set TUNEBOARD_TOKEN)" in denied.stderr and len(denied.stderr.splitlines()) == 1

    away = run_cli("jobs", "--url", UNREACHABLE, "--token", "tb_x", timeout=60)
    assert away.returncode == 2
    assert away.stderr.startswith(f"tuneboard: error: cannot reach Tuneboard at {UNREACHABLE}: ")


@sqlite_only
def test_a_failed_job_exits_1_with_its_reason(live_server, account, start_worker, tmp_path):
    start_worker()
    write_training_data(tmp_path, 8)
    missing = "tuneboard-tests/no-such-model"  # a hub id the worker cannot fetch (a local path is refused at once)
    job_file = write_job_file(tmp_path, {"model": missing, "training_file": "data/train.jsonl",
                                         "training": TRAINING})

    done = run_cli("submit", str(job_file), "--url", live_server.url, "--token", account.token, timeout=180)

    assert done.returncode == 1, done.stdout + done.stderr
    job_id = re.search(r"^Created job (ftjob-\S+) ", done.stdout, re.M).group(1)
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"Job {job_id} failed at step ")
    assert missing in line and line.endswith("(model_not_found)")


@sqlite_only
def test_no_follow_returns_once_the_job_is_created(live_server, account, tmp_path):
    write_training_data(tmp_path)
    job_file = write_job_file(tmp_path, {"model": CATALOG_MODEL, "training_file": "data/train.jsonl"})

    done = run_cli("submit", str(job_file), "--no-follow", "--url", live_server.url, "--token", account.token,
                   timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith(f"Page: {live_server.url}/jobs/ftjob-")
    assert api(live_server, account, "/v1/fine_tuning/jobs")["data"][0]["status"] == "queued"


@sqlite_only
def test_ctrl_c_stops_following_and_leaves_the_job_running(live_server, account, tmp_path):
    write_training_data(tmp_path)  # no worker: the job stays queued while the client follows it
    job_file = write_job_file(tmp_path, {"model": CATALOG_MODEL, "training_file": "data/train.jsonl"})
    cli = LiveCli("submit", str(job_file), "--url", live_server.url, "--token", account.token)
    try:
        job_id = cli.wait_for_line(r"^Created job (ftjob-\S+) ").group(1)
        cli.wait_for_line(r"Job queued on ")  # the stream is open: the queued event came through it
        cli.process.send_signal(signal.SIGINT)
        code, _, err = cli.finish()
    finally:
        cli.kill()

    assert code == 130
    assert "Traceback" not in err
    assert f"Stopped following {job_id}; the job keeps running." in err
    assert f"curl -X POST -H \"Authorization: Bearer $TUNEBOARD_TOKEN\" " \
           f"{live_server.url}/v1/fine_tuning/jobs/{job_id}/cancel" in err
    assert f"{live_server.url}/jobs/{job_id}" in err
    assert api(live_server, account, f"/v1/fine_tuning/jobs/{job_id}")["status"] == "queued"


@sqlite_only
def test_follow_survives_a_server_restart_without_losing_or_repeating_a_step(live_server, account, tuneboard_env,
                                                                              tmp_path, monkeypatch):
    from app.db import new_session
    from app.jobs import lifecycle, streams
    from app.tables import Job
    from tests import services

    write_training_data(tmp_path)
    job_file = write_job_file(tmp_path, {"model": CATALOG_MODEL, "training_file": "data/train.jsonl"})
    cli = LiveCli("submit", str(job_file), "--url", live_server.url, "--token", account.token)
    redis = redis_client.get_redis()
    restarted = None

    def publish_steps(job_id: str, steps: range) -> None:
        # What a worker publishes: a metric per logged step, on the job's Redis stream.
        for step in steps:
            streams.publish(redis, job_id, "metric", {"step": step, "epoch": step / 10, "loss": 2 / step,
                                                             "tokens_per_second": 1000.0}, max_len=1000)

    try:
        job_id = cli.wait_for_line(r"^Created job (ftjob-\S+) ").group(1)
        cli.wait_for_line(r"Job queued on ")
        streams.publish(redis, job_id, "status", {"status": "running", "step": 0, "total_steps": 10},
                        max_len=1000)
        publish_steps(job_id, range(1, 6))
        cli.wait_for_line(r"step 5/10")

        os.killpg(live_server.process.pid, signal.SIGKILL)  # the server dies mid-stream
        cli.wait_for_line(r"^Connection lost \(.+\); reconnecting in ")
        publish_steps(job_id, range(6, 8))  # training goes on while nobody listens
        monkeypatch.setattr(services, "free_port", lambda: live_server.port)
        restarted = services.ServerProcess(tuneboard_env.env, tmp_path / "server-2.log")
        restarted.wait_ready()
        cli.wait_for_line(r"^Reconnected; resuming after event \d+-\d+\.")
        publish_steps(job_id, range(8, 11))
        with new_session() as session:
            job = session.get(Job, job_id)
            job.status, job.step, job.total_steps = "succeeded", 10, 10
            session.commit()
            lifecycle.publish_status(redis, job)
        code, out, err = cli.finish()
    finally:
        cli.kill()
        if restarted is not None:
            restarted.stop()

    assert code == 0, out + err
    steps = [int(s) for s in re.findall(r"^\[[#.]{20}\] step (\d+)/10 ", out, re.M)]
    assert steps == list(range(1, 11)), out  # every step a tenth of the run: each printed once, none lost
    assert f"Job {job_id} succeeded after 10/10 steps: final loss 0.2000." in out


# --- the parts without a server --------------------------------------------------------------------------
class _FixedStream(BaseHTTPRequestHandler):
    """A server whose job stream is a fixed body: pings, a metric with its JSON over two data lines, the end."""

    BODY = (b": ping - 2025-01-01 00:00:00\r\n\r\n"
            b'id: 1-0\r\nevent: metric\r\ndata: {"step":\r\ndata: 1}\r\n\r\n'
            b": ping - 2025-01-01 00:00:10\r\n\r\n"
            b"event: end\r\ndata: {}\r\n\r\n")
    requests: list[dict[str, str | None]] = []

    def do_GET(self) -> None:
        self.requests.append({"path": self.path, "last_event_id": self.headers.get("Last-Event-ID"),
                              "accept": self.headers.get("Accept"), "authorization": self.headers.get("Authorization")})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.end_headers()
        for start in range(0, len(self.BODY), 7):  # in pieces that split lines, as a network may deliver them
            self.wfile.write(self.BODY[start:start + 7])
            self.wfile.flush()

    def log_message(self, *args) -> None:
        pass


def test_stream_events_joins_data_lines_skips_pings_and_asks_to_resume_after_the_last_id():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FixedStream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    opened = []
    try:
        with Client(Connection(f"http://127.0.0.1:{server.server_port}", "tok")) as client:
            events = list(client.stream_events("ftjob-1", "0-9", on_open=lambda: opened.append(True), after_step=4))
    finally:
        server.shutdown()
        server.server_close()

    assert [(e.event, e.data) for e in events] == [("metric", {"step": 1}), ("end", {})]
    assert events[0].id == "1-0" and opened == [True]
    assert _FixedStream.requests == [{"path": "/v1/fine_tuning/jobs/ftjob-1/stream?after_step=4",
                                      "last_event_id": "0-9", "accept": "text/event-stream",
                                      "authorization": "Bearer tok"}]


def test_progress_line_and_eta_use_the_servers_clock():
    progress = Progress()
    progress.total = 600
    for step in range(1, 121):  # one step every 320 ms of server time, whenever the points arrive
        progress.add_metric({"step": step, "epoch": step / 300, "loss": 1.2345, "tokens_per_second": 2310.4},
                            f"{1_700_000_000_000 + step * 320}-0")
    assert progress.line(width=10) == "[##........] step 120/600 · epoch 0.40 · loss 1.2345 · 2,310 tok/s · ETA 2m34s"
    assert [format_eta(s) for s in (5, 192, 3900)] == ["5s", "3m12s", "1h05m"]


def test_terminal_display_redraws_in_place_and_prints_messages_above_the_bar():
    out = io.StringIO()
    display = Display(out, tty=True)
    display.set_total(4)
    display.metric({"step": 1, "loss": 1.0}, "1000-0")
    display.message("Checkpoint saved at step 1.")
    display.metric({"step": 4, "loss": 0.5}, "2000-0")
    display.close()
    screen = out.getvalue()
    assert screen.startswith("\r[#####...............] step 1/4 · loss 1.0000")
    assert "\rCheckpoint saved at step 1.\n\r[#####" in screen
    assert screen.endswith("\r[####################] step 4/4 · loss 0.5000\n")


def test_job_file_lines_point_at_the_key(tmp_path):
    from app.client.job_file import load_job_file

    path = tmp_path / "job.yaml"
    path.write_text(json.dumps({"model": "m", "training_file": "file-abc"}) + "\n")
    assert load_job_file(path).local_file("training_file") is None  # an id, not a path
    path.write_text("model: m\ntraining_file: file-abc\ntraining:\n  max_steps: 5\n  batch_size: 2\n")
    job = load_job_file(path)
    assert job.line_of("training.batch_size") == 5 and job.line_of("training.nope") == 3
    assert job.request_body({}) == {"model": "m", "training_file": "file-abc",
                                    "training": {"max_steps": 5, "batch_size": 2}}
