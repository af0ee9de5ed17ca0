"""A multi-GPU job's training processes always end: a rank exits without the interpreter teardown that can deadlock
in a process group's destructors, and the worker ends ranks that linger once their outcome is written. Real
processes; the gloo deadlock itself is not reproducible on demand, so a thread that never ends stands in for it."""

from __future__ import annotations

import subprocess
import sys
import time

from app.settings import REPO_ROOT
from workers.training import multi_gpu

STUCK_AT_EXIT = "import threading, time; threading.Thread(target=time.sleep, args=(3600,)).start()"


def _run(body: str) -> subprocess.CompletedProcess:
    code = f"{STUCK_AT_EXIT}\nfrom workers.training.rank import exit_without_teardown\n{body}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)


def test_a_rank_exits_with_its_status_even_when_teardown_would_hang():
    assert _run("exit_without_teardown(lambda: 0)").returncode == 0
    assert _run("exit_without_teardown(lambda: 3)").returncode == 3


def test_a_crashing_rank_exits_with_status_1_and_its_traceback():
    crashed = _run("def main():\n    raise RuntimeError('rank fell over')\nexit_without_teardown(main)")
    assert crashed.returncode == 1
    assert "RuntimeError: rank fell over" in crashed.stderr


class _Reporter:
    attempt_lost = False


def test_ranks_that_linger_after_writing_their_outcome_are_ended(tmp_path, monkeypatch):
    monkeypatch.setattr(multi_gpu, "EXIT_GRACE_SECONDS", 1)
    outcome = tmp_path / "outcome.json"
    outcome.write_text("{}")
    lingering = subprocess.Popen(["sleep", "3600"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 start_new_session=True)
    started = time.monotonic()
    status = multi_gpu._supervise(lingering, _Reporter(), multi_gpu.deque(maxlen=5), outcome)
    assert status == 0 and lingering.poll() is not None
    assert time.monotonic() - started < 30


def test_ranks_still_training_are_not_ended(tmp_path, monkeypatch):
    monkeypatch.setattr(multi_gpu, "EXIT_GRACE_SECONDS", 1)
    working = subprocess.Popen(["sh", "-c", "sleep 3; exit 7"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    status = multi_gpu._supervise(working, _Reporter(), multi_gpu.deque(maxlen=5), tmp_path / "outcome.json")
    assert status == 7  # no outcome yet: the worker waits for the processes, however long they train
