"""A worker tells the hub's answers apart before it downloads: no such repository, a gated one, a hub that
fails, and a model it can use. The hub is a stand-in, a real HTTP server on 127.0.0.1 answering as
huggingface.co does (X-Error-Code headers), reached through HF_ENDPOINT by a worker-side process.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The repository each answer is given for, under /api/models/.
ANSWERS = {
    "tuneboard-tests/missing": (404, "RepoNotFound", b'{"error":"Repository not found"}'),
    "tuneboard-tests/gated": (403, "GatedRepo", b'{"error":"Access to this model is restricted"}'),
    "tuneboard-tests/broken": (500, None, b'{"error":"Internal Error"}'),
    "tuneboard-tests/usable": (200, None, b'{"id":"tuneboard-tests/usable","modelId":"tuneboard-tests/usable"}'),
}


class _StandInHub(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        repo = self.path.split("?")[0].removeprefix("/api/models/")
        status, code, body = ANSWERS.get(repo, ANSWERS["tuneboard-tests/missing"])
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def stand_in_hub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StandInHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


RESOLVE = """
import json, sys
from workers.base_models import resolve_source
from workers.training.contract import TrainingFailure

answers = {}
for model_id in sys.argv[2:]:
    try:
        answers[model_id] = ["ok", resolve_source(model_id, sys.argv[1])[1]]
    except TrainingFailure as failure:
        answers[model_id] = [failure.code, str(failure)]
print(json.dumps(answers))
"""


def test_the_worker_names_a_missing_a_gated_and_an_unreachable_hub_model(stand_in_hub, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNEBOARD_", "HF_"))}
    env.update(HF_ENDPOINT=stand_in_hub, HF_HUB_OFFLINE="0", HF_HUB_CACHE=str(tmp_path / "hub-cache"),
               HF_HUB_DISABLE_IMPLICIT_TOKEN="1", TUNEBOARD_DATA_DIR=str(tmp_path / "data"))
    done = subprocess.run([sys.executable, "-c", RESOLVE, str(tmp_path / "data"), *ANSWERS], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)

    assert answers["tuneboard-tests/missing"] == [
        "model_not_found", "there is no model 'tuneboard-tests/missing' on the Hugging Face hub (or it is private)"]
    assert answers["tuneboard-tests/gated"] == [
        "model_not_found", "'tuneboard-tests/gated' is gated on the Hugging Face hub: accept its licence and set "
        "HF_TOKEN on the worker"]
    code, reason = answers["tuneboard-tests/broken"]
    assert code == "model_not_found"
    assert reason.startswith("the Hugging Face hub cannot be reached from this worker (HfHubHTTPError: ")
    assert "500 Internal Server Error" in reason
    assert answers["tuneboard-tests/usable"] == ["ok", "tuneboard-tests/usable from the Hugging Face hub"]
