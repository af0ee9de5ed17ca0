"""`tuneboard up` as a user runs it on a fresh machine: a subprocess in an empty folder with nothing configured
(embedded Redis, SQLite, a training and an inference worker), signed in with the printed link, a tiny job run to
the end through the API the pages use, a chat answered while it trains and one by its adapter after, then Ctrl-C
(SIGINT) and not one process left behind. Also: the one-line refusals.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.jobs.helpers import chat_records, json_lines
from tests.services import free_port

TUNEBOARD = str(Path(sys.executable).parent / "tuneboard")
# First starts (the demo model's conversion) waited for one after another: longer than the suite's 10 minutes.
pytestmark = pytest.mark.timeout(1500)


# For the tests that run no job: the workers import the ML stack when a job comes instead of at their start (10 s of
# CPU each, two workers per `up`). What `up` starts, and how it stops, is the same.
NO_JOB_TO_RUN = {"TUNEBOARD_WORKER_PRELOAD": "false"}


def _fresh_env(**values: str) -> dict[str, str]:
    """The user's environment with no Tuneboard settings, plus the given ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEBOARD_")}
    return {**env, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **values}


def _process_tree(root: int) -> set[int]:
    """Every live descendant of a process, from /proc (children started in their own sessions included)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status is left for a parent to collect


def _still_alive(pids: set[int], timeout: float = 10) -> list[int]:
    """Those of the processes that have not ended within `timeout` seconds (they end as `up` exits, each in its
    own time)."""
    deadline = time.monotonic() + timeout
    while (alive := [pid for pid in pids if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


class UpProcess:
    """`tuneboard up` in the background, its output collected line by line."""

    def __init__(self, cwd: Path, env: dict[str, str], *args: str):
        self.process = subprocess.Popen([TUNEBOARD, "up", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._collector = threading.Thread(target=self._collect, daemon=True)
        self._collector.start()

    def _collect(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def drained(self, timeout: float = 30) -> list[str]:
        """Every line, once the process has ended and its output is read to the end."""
        self._collector.join(timeout)
        return self.lines

    # A first start prints its address after the demo model's conversion (about a minute alone; several on two
    # cores shared with other tests' workers), as the user sees it.
    def wait_for_line(self, pattern: str, timeout: float = 420) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            if self.process.poll() is not None:
                pytest.fail(f"tuneboard up exited with {self.process.returncode}:\n" + "\n".join(self.lines))
            time.sleep(0.2)
        pytest.fail(f"no line matching {pattern!r} after {timeout} s:\n" + "\n".join(self.lines))


@pytest.mark.long
def test_up_runs_a_job_end_to_end_and_ctrl_c_leaves_no_process(tmp_path, tiny_model_dir):
    port = free_port()
    # The tiny model's folder is a model root, as an admin would configure a folder of local models.
    up = UpProcess(tmp_path, _fresh_env(TUNEBOARD_EMBEDDED_REDIS_PORT=str(free_port()),
                                        TUNEBOARD_MODEL_ROOTS=str(tiny_model_dir.parent)), "--port", str(port))
    try:
        address = up.wait_for_line(r"Tuneboard is running at (http://\S+)/")[1]
        assert address == f"http://127.0.0.1:{port}"
        link = up.wait_for_line(r"^\s+(http://\S+/login/link/\S+)$")[1]
        started = _process_tree(up.process.pid)
        assert len(started) >= 4, started  # embedded Redis, two workers (and pools), web; maybe the demo converter

        with httpx.Client(base_url=address, follow_redirects=True, timeout=30) as browser:
            assert browser.get(link).status_code == 200  # the one-time link signs the admin in
            csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', browser.get("/").text)[1]
            headers = {"X-CSRF-Token": csrf}
            upload = browser.post("/v1/files", headers=headers, data={"purpose": "fine-tune"},
                                  files={"file": ("colours.jsonl", json_lines(chat_records(8)))})
            assert upload.status_code == 200, upload.text
            job = browser.post("/v1/fine_tuning/jobs", headers=headers, json={
                "model": str(tiny_model_dir), "training_file": upload.json()["id"],
                "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                "training": {"max_steps": 150, "batch_size": 2, "sequence_length": 64, "precision": "fp32",
                             "save_steps": 1000}}).json()
            deadline = time.monotonic() + 300
            while job["status"] == "queued" and time.monotonic() < deadline:
                time.sleep(0.2)
                job = browser.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
            # The playground answers while the training worker is busy: chats have a worker of their own.
            question = {"messages": [{"role": "user", "content": "The quick brown fox"}], "max_tokens": 8}
            chat = browser.post("/v1/chat/completions", headers=headers, json={"model": str(tiny_model_dir),
                                                                               **question})
            assert chat.status_code == 200 and chat.json()["usage"]["completion_tokens"] >= 1, chat.text
            assert browser.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "running"
            while job["status"] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
                time.sleep(0.5)
                job = browser.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
            assert job["status"] == "succeeded", job
            assert job["worker"].startswith("local@")
            assert browser.get(f"/v1/fine_tuning/jobs/{job['id']}/adapter").content[:2] == b"PK"  # a zip
            tuned = browser.post("/v1/chat/completions", headers=headers, json={"model": job["fine_tuned_model"],
                                                                                **question})
            assert tuned.status_code == 200 and tuned.json()["model"] == job["fine_tuned_model"], tuned.text
        assert (tmp_path / "data" / "tuneboard.db").is_file()  # the default data dir, in the current folder

        started |= _process_tree(up.process.pid)
        up.process.send_signal(signal.SIGINT)
        assert up.process.wait(timeout=60) == 0
    finally:
        if up.process.poll() is None:
            up.process.kill()
    assert _still_alive(started) == []
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # the web port is free again


def _refusal(tmp_path: Path, env: dict[str, str], *args: str) -> str:
    result = subprocess.run([TUNEBOARD, "up", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_taken_port_is_refused_in_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _refusal(tmp_path, _fresh_env(), "--port", str(port))
    assert line == f"tuneboard: port {port} on 127.0.0.1 is already in use; pick another with --port."


def test_an_unwritable_data_dir_is_refused_in_one_line(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    line = _refusal(tmp_path, _fresh_env(TUNEBOARD_DATA_DIR=str(tmp_path / "a-file" / "data")),
                    "--port", str(free_port()))
    assert line.startswith(f"tuneboard: cannot write to the data directory {tmp_path / 'a-file' / 'data'}")


def test_a_missing_redis_binary_is_refused_in_one_line(tmp_path):
    line = _refusal(tmp_path, _fresh_env(TUNEBOARD_REDIS_SERVER_BINARY="/nonexistent/redis-server",
                                         TUNEBOARD_EMBEDDED_REDIS_PORT=str(free_port())), "--port", str(free_port()))
    assert line == ("tuneboard: TUNEBOARD_REDIS_SERVER_BINARY /nonexistent/redis-server is not an executable file")


def test_a_mistyped_setting_is_named_in_one_line(tmp_path):
    line = _refusal(tmp_path, _fresh_env(TUNEBOARD_STORAGE_URL="minio://bucket"))
    assert line.startswith("tuneboard: invalid settings: TUNEBOARD_STORAGE_URL: ")
    assert "'minio://bucket' is not of the form s3://BUCKET/PREFIX" in line


def _command_lines(pids: set[int]) -> list[str]:
    lines = []
    for pid in pids:
        try:
            lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            pass
    return lines


@pytest.mark.empty_database  # `tuneboard up` migrates it
# An external database is PostgreSQL in every deployment that has one; the other tests here run `up` on SQLite.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_with_an_external_redis_and_database_up_starts_only_the_web_app_and_a_worker(tmp_path, redis_url,
                                                                                        redis_key_prefix, database_url):
    env = _fresh_env(TUNEBOARD_REDIS_URL=redis_url, TUNEBOARD_REDIS_KEY_PREFIX=redis_key_prefix,
                     TUNEBOARD_DATABASE_URL=database_url, TUNEBOARD_EMBEDDED_REDIS_PORT=str(free_port()),
                     **NO_JOB_TO_RUN)
    up = UpProcess(tmp_path, env, "--port", str(free_port()))
    try:
        up.wait_for_line(r"Tuneboard is running at")
        commands = _command_lines(_process_tree(up.process.pid))
        assert not [c for c in commands if "redis-server" in c], commands
        assert [c for c in commands if "celery -A workers worker" in c]
        assert [c for c in commands if "uvicorn app.main:app" in c]
        up.process.send_signal(signal.SIGINT)
        assert up.process.wait(timeout=60) == 0
    finally:
        if up.process.poll() is None:
            up.process.kill()
    assert not (tmp_path / "data" / "tuneboard.db").exists()  # the configured database was used instead


@pytest.mark.long
def test_two_installs_with_their_own_data_dirs_and_ports_run_side_by_side(tmp_path):
    installs = []
    ports: set[int] = set()
    while len(ports) < 2:  # two ports nobody holds, and not the same one twice
        ports.add(free_port())
    for name, port in zip(("first", "second"), sorted(ports), strict=True):
        folder = tmp_path / name
        folder.mkdir()
        installs.append((folder, port, UpProcess(folder, _fresh_env(**NO_JOB_TO_RUN), "--port", str(port))))
    try:
        trees = []
        for folder, port, up in installs:
            up.wait_for_line(r"Tuneboard is running at")
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
            except httpx.HTTPError as exc:
                pytest.fail(f"{folder.name}: /readyz {exc}; tuneboard up printed:\n" + "\n".join(up.lines))
            assert ready.status_code == 200, ready.text  # its own database, Redis and artifact folder answer
            assert (folder / "data" / "tuneboard.db").is_file() and (folder / "data" / "redis").is_dir()
            trees.append(_process_tree(up.process.pid))
        redis_commands = [c for tree in trees for c in _command_lines(tree) if "redis-server" in c]
        assert len(redis_commands) == 2 and redis_commands[0] != redis_commands[1]  # two Redis, two ports
        for _folder, _port, up in installs:
            up.process.send_signal(signal.SIGINT)
        assert [up.process.wait(timeout=60) for _f, _p, up in installs] == [0, 0]
    finally:
        for _folder, _port, up in installs:
            if up.process.poll() is None:
                up.process.kill()
    assert _still_alive({pid for tree in trees for pid in tree}) == []
