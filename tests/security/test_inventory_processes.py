"""Computing model inventories on the web host cannot burn it (issue 10, point 7): one
`python -m workers.inventory` process at a time per host however many requests arrive, a time limit after
which it is killed and reported, no zombies, and configs of absurd size refused before anything is built.
Real uvicorn, real child processes, counted in /proc."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.base_models.inventories import worker_stack_installed
from app.settings import REPO_ROOT
from tests.conftest import require
from tests.services import ServerProcess

pytestmark = pytest.mark.one_database  # child processes and their limits: no database question here

ESTIMATE = "/v1/fine_tuning/estimate"
TINY = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 160,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
        "max_position_embeddings": 256, "tie_word_embeddings": False}


@pytest.fixture(autouse=True)
def _worker_stack():
    require(worker_stack_installed(), "torch, transformers and peft (the worker extra)")


def model_folder(path: Path, **config) -> str:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({**TINY, **config}))
    return str(path)


@dataclass
class Child:
    pid: int
    state: str
    cmdline: str
    rss_kib: int


def children_of(parent: int) -> list[Child]:
    """The processes whose parent is `parent`, from /proc (zombies included: state Z)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            fields = text[text.rindex(")") + 2:].split()
            if int(fields[1]) != parent:
                continue
            folder = stat.parent
            cmdline = (folder / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            rss = next((int(line.split()[1]) for line in (folder / "status").read_text().splitlines()
                        if line.startswith("VmRSS:")), 0)
        except (OSError, ValueError):
            continue  # it ended while we looked
        found.append(Child(int(folder.name), fields[0], cmdline, rss))
    return found


def inventory_children(parent: int) -> list[Child]:
    return [c for c in children_of(parent) if "workers.inventory" in c.cmdline or c.state == "Z"]


def children_left_soon(parent: int, timeout: float = 60) -> list[Child]:
    """The parent's inventory children and zombies still there after up to `timeout` seconds (none, if all ended)."""
    deadline = time.monotonic() + timeout
    while inventory_children(parent) and time.monotonic() < deadline:
        time.sleep(0.2)
    return inventory_children(parent)


@pytest.fixture
def start_server(tuneboard_env, tmp_path):
    """start_server(**env) -> a live uvicorn on this test's settings, with extra environment."""
    servers: list[ServerProcess] = []

    def start(**env: str) -> ServerProcess:
        server = ServerProcess({**tuneboard_env.env, **env}, tmp_path / f"server{len(servers)}.log")
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


def settled(http: httpx.Client, model: str, timeout: float = 300) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = http.post(ESTIMATE, json={"model": model})
        if response.status_code != 202:
            return response
        time.sleep(0.5)
    pytest.fail(f"{model} still computing after {timeout} s")


def test_a_burst_of_new_models_runs_one_inventory_process_at_a_time(start_server, account, tmp_path):
    server = start_server()
    models = [model_folder(tmp_path / "models" / f"m{i}", hidden_size=64 * (i + 1)) for i in range(4)]
    seen: dict[int, Child] = {}
    most_at_once = 0
    peak_rss_kib = 0
    done = threading.Event()

    def watch():
        nonlocal most_at_once, peak_rss_kib
        while not done.is_set():
            running = [c for c in inventory_children(server.process.pid) if c.state != "Z"]
            most_at_once = max(most_at_once, len(running))
            peak_rss_kib = max(peak_rss_kib, sum(c.rss_kib for c in running))
            seen.update({c.pid: c for c in running})
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with httpx.Client(base_url=server.url, headers=account.headers, timeout=30) as http:
        # 12 requests at once: three for each of four models nobody computed yet.
        with ThreadPoolExecutor(max_workers=12) as pool:
            first = list(pool.map(lambda m: http.post(ESTIMATE, json={"model": m}).status_code, models * 3))
        assert set(first) == {202}
        answers = [settled(http, model) for model in models]
    done.set()
    watcher.join()
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert most_at_once == 1
    assert len(seen) == 4  # each model computed once, whatever the number of requests for it
    print(f"\npeak memory of inventory children at once: {peak_rss_kib / 1024:.0f} MiB")
    # The last child wrote its result and is still exiting (torch's teardown); then nothing is left.
    assert children_left_soon(server.process.pid) == []  # nothing left running, no zombies


def test_an_inventory_past_its_time_limit_is_killed_and_reported(start_server, account, tmp_path):
    # Importing torch alone takes longer than this limit, so the child is always stopped.
    server = start_server(TUNEBOARD_INVENTORY_TIMEOUT_SECONDS="0.5")
    model = model_folder(tmp_path / "models" / "slow")
    with httpx.Client(base_url=server.url, headers=account.headers, timeout=30) as http:
        assert http.post(ESTIMATE, json={"model": model}).status_code == 202
        response = settled(http, model, timeout=60)
    error = response.json()["error"]
    assert response.status_code == 404 and error["param"] == "model", response.text
    assert error["message"] == ("Could not build the module inventory: it took longer than 0.5 s, the limit "
                                "(TUNEBOARD_INVENTORY_TIMEOUT_SECONDS), and was stopped")
    assert children_left_soon(server.process.pid) == []  # killed and reaped: no zombie


@pytest.fixture
def client(tuneboard_env, account):
    from app.main import create_app

    with TestClient(create_app(), headers=account.headers) as test_client:
        yield test_client


@pytest.mark.parametrize(("field", "config"), [
    ("num_hidden_layers", {"num_hidden_layers": 1_000_000}),
    ("hidden_size", {"hidden_size": 10_000_000}),
    ("vocab_size", {"vocab_size": 1_000_000_000}),
    ("intermediate_size", {"intermediate_size": 100_000_000}),
    ("num_local_experts", {"model_type": "mixtral", "num_local_experts": 100_000}),
    ("text_config.num_hidden_layers", {"text_config": {"num_hidden_layers": 50_000}}),
])
def test_a_config_of_absurd_size_is_a_422_before_anything_is_built(client, tuneboard_env, tmp_path, field, config):
    from app.fleet import offloaded

    model = model_folder(tmp_path / "models" / "absurd", **config)
    for response in (client.post(ESTIMATE, json={"model": model}), client.get(f"/v1/models/{model}")):
        error = response.json()["error"]
        assert response.status_code == 422, response.text
        assert (error["param"], error["code"]) == ("model", "model_too_large")
        assert f"sets {field} = " in error["message"]
    assert offloaded.queued() == 0  # no process was queued or started
    assert not (tuneboard_env.data_dir / "inventories").exists()


def test_the_inventory_process_refuses_an_absurd_config_itself(tmp_path):
    """The child checks too, before building: that is what guards a hub model, whose config only it reads."""
    model = model_folder(tmp_path / "models" / "absurd", num_hidden_layers=10_000_000)
    out = tmp_path / "inventory.json"
    # Refused from the config alone (the error says so) rather than after building 10 million layers, which the
    # run's time limit would cut short with a TimeoutExpired instead.
    done = subprocess.run([sys.executable, "-m", "workers.inventory", model, "--out", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "ConfigTooLargeError: the model's config.json sets num_hidden_layers = 10,000,000" in done.stderr
    assert not out.exists()
