"""The terminal of `tuneboard up` stays readable, and the data-dir commands explain themselves.

The real `tuneboard` script in an empty folder, its output read line by line as a user sees it: after
start-up the last lines are the address and the sign-in link (after the demo model's line); clients that
leave (a page closed or reloaded mid-stream, an upload dropped) print nothing; Ctrl-C prints one goodbye
line. `migrate`, `tokens create` and `sign-in-link` on a data directory that does not exist yet create it,
or say in one line what is wrong.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.jobs.helpers import chat_records, json_lines
from tests.ops.test_up import TUNEBOARD, UpProcess, _alive, _command_lines, _fresh_env, _process_tree
from tests.services import free_port

LINK = r"^    (http://\S+/login/link/\S+)$"


def _demo_model_converting(root: int) -> bool:
    for pid in _process_tree(root):
        try:
            if b"workers.demo_model" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            pass
    return False


def _sign_in(browser: httpx.Client, link: str) -> dict[str, str]:
    """Follow the one-time link; returns the CSRF header the pages' requests carry."""
    assert browser.get(link).status_code == 200
    return {"X-CSRF-Token": re.search(r'<meta name="csrf-token" content="([^"]+)"', browser.get("/").text)[1]}


def _raw_request(port: int, head: str, body: bytes = b"", read: bool = True) -> None:
    """Send a request by hand, read a little of the answer, then drop the connection with a reset, as a
    closed tab does."""
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(head.encode() + body)
        if read:
            connection.settimeout(10)
            connection.recv(4096)
        else:
            time.sleep(1)  # the scenario: the server is reading the body when the client goes
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


@pytest.mark.long
@pytest.mark.timeout(1200)  # a first start converts the demo model: up to 7 minutes before the link
def test_up_ends_start_up_with_the_link_prints_nothing_for_clients_that_leave_and_one_goodbye(
        tmp_path, tiny_model_dir):
    port = free_port()
    env = _fresh_env(TUNEBOARD_EMBEDDED_REDIS_PORT=str(free_port()), TUNEBOARD_MODEL_ROOTS=str(tiny_model_dir.parent))
    up = UpProcess(tmp_path, env, "--port", str(port))
    leave_open = threading.Event()
    try:
        # A first start: the demo model is converted (a minute or more on a busy CPU).
        link = up.wait_for_line(LINK, timeout=420)[1]
        deadline = time.monotonic() + 420
        while _demo_model_converting(up.process.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)  # the scenario: start-up stays quiet after the link (whatever it still had to say, it said)
        address = f"http://127.0.0.1:{port}"
        assert up.lines[-3:] == [f"Tuneboard is running at {address}/  (Ctrl-C to stop)",
                                 "First start: sign in as the admin with this one-time link:", f"    {link}"], up.lines
        assert "Demo model HuggingFaceTB/SmolLM2-135M-Instruct ready." in up.lines[:-3], up.lines
        assert not [line for line in up.lines if "alembic" in line], up.lines

        with httpx.Client(base_url=address, follow_redirects=True, timeout=30) as browser:
            csrf = _sign_in(browser, link)
            upload = browser.post("/v1/files", headers=csrf, data={"purpose": "fine-tune"},
                                  files={"file": ("colours.jsonl", json_lines(chat_records(8)))})
            assert upload.status_code == 200, upload.text
            job = browser.post("/v1/fine_tuning/jobs", headers=csrf, json={
                "model": str(tiny_model_dir), "training_file": upload.json()["id"],
                "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                "training": {"max_steps": 100_000, "batch_size": 2, "sequence_length": 64, "precision": "fp32",
                             "logging_steps": 1, "save_steps": 100_000}}).json()
            stream = f"/v1/fine_tuning/jobs/{job['id']}/stream"
            deadline = time.monotonic() + 180
            while browser.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics").json()["data"] == [] \
                    and time.monotonic() < deadline:
                time.sleep(0.5)
            before = len(up.lines)

            for _reload in range(3):  # a job page reloaded: its stream read a little, then closed
                with browser.stream("GET", stream, headers={"Accept": "text/event-stream"}) as response:
                    assert response.status_code == 200
                    next(response.iter_lines())
            cookie = "; ".join(f"{name}={value}" for name, value in browser.cookies.items())
            _raw_request(port, f"GET {stream} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
                               f"Cookie: {cookie}\r\n\r\n")  # a tab closed mid-stream
            _raw_request(port, f"POST /v1/files HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n"
                               f"X-CSRF-Token: {csrf['X-CSRF-Token']}\r\nContent-Length: 10000000\r\n"
                               "Content-Type: multipart/form-data; boundary=XX\r\n\r\n",
                         b'--XX\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
                         + json_lines(chat_records(200)), read=False)  # an upload abandoned halfway
            time.sleep(3)  # the scenario: the clients that left stay unmentioned for a while
            assert up.lines[before:] == []

            def page_left_open() -> None:  # a job page still open when the user presses Ctrl-C
                try:
                    with browser.stream("GET", stream, headers={"Accept": "text/event-stream"}) as response:
                        for _line in response.iter_lines():
                            leave_open.set()
                except httpx.HTTPError:
                    pass

            threading.Thread(target=page_left_open, daemon=True).start()
            assert leave_open.wait(30)
            started = _process_tree(up.process.pid)
            before = len(up.lines)
            up.process.send_signal(signal.SIGINT)
            assert up.process.wait(timeout=120) == 0
        assert len(up.drained()[before:]) == 1, up.lines[before:]
        assert up.lines[-1] == (f"Tuneboard stopped; everything is kept in {tmp_path / 'data'} (a running job "
                                "resumes at the next `tuneboard up`).")
    finally:
        if up.process.poll() is None:
            up.process.kill()
    left = {pid for pid in started if _alive(pid)}
    assert not left, _command_lines(left)


def _run(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TUNEBOARD, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_migrate_tokens_and_sign_in_link_on_a_data_dir_that_does_not_exist_yet_create_it(tmp_path):
    migrated = _run(tmp_path, _fresh_env(TUNEBOARD_DATA_DIR=str(tmp_path / "a" / "data")), "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout == f"database at sqlite:///{tmp_path / 'a' / 'data' / 'tuneboard.db'} is up to date\n"
    assert (tmp_path / "a" / "data" / "tuneboard.db").is_file()

    env = _fresh_env(TUNEBOARD_DATA_DIR=str(tmp_path / "b" / "data"))
    token = _run(tmp_path, env, "tokens", "create", "--user", "ada@example.com")
    assert token.returncode == 0, token.stderr
    assert token.stdout.startswith("tb_") and "Traceback" not in token.stderr
    link = _run(tmp_path, env, "sign-in-link", "--user", "ada@example.com")  # the admin tokens create made
    assert link.returncode == 0, link.stderr
    assert re.fullmatch(r"http://127\.0\.0\.1:8000/login/link/\S+\n", link.stdout)

    unknown = _run(tmp_path, _fresh_env(TUNEBOARD_DATA_DIR=str(tmp_path / "c" / "data")), "sign-in-link",
                   "--user", "bob@example.com")
    assert (unknown.returncode, unknown.stderr) == (
        2, "tuneboard: no user bob@example.com; invite them from the Team page first\n")


@pytest.mark.parametrize("command", [["migrate"], ["tokens", "create", "--user", "ada@example.com"],
                                     ["sign-in-link", "--user", "ada@example.com"]])
def test_a_database_that_cannot_be_used_is_explained_in_one_line(tmp_path, command):
    (tmp_path / "a-file").write_text("not a folder")
    under_a_file = _run(tmp_path, _fresh_env(TUNEBOARD_DATA_DIR=str(tmp_path / "a-file" / "data")), *command)
    assert (under_a_file.returncode, under_a_file.stderr) == (
        2, f"tuneboard: cannot write to the data directory {tmp_path / 'a-file' / 'data'}: Not a directory\n")

    nobody_listens = f"postgresql+psycopg://tuneboard:s3cret@127.0.0.1:{free_port()}/tuneboard"
    unreachable = _run(tmp_path, _fresh_env(TUNEBOARD_DATABASE_URL=nobody_listens), *command)
    assert unreachable.returncode == 2
    assert unreachable.stderr.count("\n") == 1 and "s3cret" not in unreachable.stderr, unreachable.stderr
    assert unreachable.stderr.startswith("tuneboard: cannot prepare the database "
                                         "postgresql+psycopg://tuneboard:***@127.0.0.1:")
    assert "Connection refused" in unreachable.stderr
