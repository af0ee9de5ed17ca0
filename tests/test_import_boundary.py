"""The boundary DESIGN.md draws: the web app never imports torch, transformers, peft or `workers`."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

from app.settings import REPO_ROOT
from tests.conftest import require

HEAVY = {"torch", "transformers", "peft", "accelerate", "safetensors", "workers"}


def modules_loaded_by(statement: str, env: dict[str, str] | None = None) -> set[str]:
    """Top-level packages in sys.modules after running `statement` in a fresh interpreter."""
    probe = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env=env)
    assert done.returncode == 0, done.stderr
    return {name.split(".")[0] for name in json.loads(done.stdout.splitlines()[-1])}


def test_importing_the_web_app_loads_no_ml_stack_and_no_workers():
    loaded = modules_loaded_by("import app.main")
    assert {"app", "fastapi", "jinja2"} <= loaded
    assert loaded & HEAVY == set()


def test_building_the_app_and_serving_the_configuration_page_loads_no_ml_stack(tuneboard_env, account):
    loaded = modules_loaded_by(
        "from fastapi.testclient import TestClient\n"
        "import app.main\n"
        f"with TestClient(app.main.app, headers={account.headers!r}) as client:\n"
        "    assert client.get('/').status_code == 200\n"
        "    estimate = client.post('/v1/fine_tuning/estimate', json={'model': 'openai-community/gpt2'})\n"
        "    assert estimate.status_code == 200\n"
        "    assert client.get('/jobs').status_code == 200",
        env=tuneboard_env.env,
    )
    assert loaded & HEAVY == set()


def test_the_probe_does_see_torch_when_something_imports_it():
    require(importlib.util.find_spec("torch") is not None, "torch")
    assert "torch" in modules_loaded_by("import app.main\nimport torch")
