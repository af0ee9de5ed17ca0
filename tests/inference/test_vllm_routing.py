"""Routing chat completions to a vLLM server (TUNEBOARD_VLLM_URLS), with the team's adapters loaded into it at run
time from the artifact store, through the `openai` SDK unchanged.

vLLM itself needs a GPU; here a stand-in that speaks vLLM's API (tests/inference/vllm_standin.py, real greedy
generations of the tiny model) answers. No inference worker runs in these tests: every reply that arrives came
through the vLLM route. Checked: the base it serves and a team's adapter on it answer with what PEFT answers locally;
an adapter is copied into the shared folder and loaded once for many requests; a checkpoint is another adapter; a
restarted server (adapters forgotten) gets the adapter again; another team's adapter never reaches it; a base it
does not serve still goes to the inference queue; a server that stopped is a 503 naming it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.api.conftest import sdk_client
from tests.inference.conftest import trained_tiny_job
from tests.inference.test_chat_completions import QUESTION, _local_greedy_reply
from tests.service_fixtures import make_account
from tests.services import REPO, ServerProcess, free_port


@pytest.fixture
def vllm_standin(tiny_model_dir, tmp_path):
    """The stand-in vLLM server on a free port, serving the tiny model under its folder's path."""
    port = free_port()
    log = (tmp_path / "vllm.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.inference.vllm_standin", "--model", str(tiny_model_dir),
         "--served-model-name", str(tiny_model_dir), "--port", str(port)],
        cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, (tmp_path / "vllm.log").read_text()
        try:
            if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    yield process, url
    process.terminate()
    process.wait(timeout=10)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # routing is the web side's: no database in it
def test_chat_completions_for_the_base_a_vllm_server_serves_go_there_with_adapters_loaded_once(
        vllm_standin, sdk_client_factory, start_worker, tiny_model_dir, tuneboard_env, account, tmp_path):
    process, vllm_url = vllm_standin
    shared = tmp_path / "shared-adapters"
    env = {**tuneboard_env.env, "TUNEBOARD_VLLM_URLS": vllm_url, "TUNEBOARD_VLLM_ADAPTER_DIR": str(shared),
           "TUNEBOARD_INFERENCE_WAIT_SECONDS": "2"}
    server = ServerProcess(env, tmp_path / "server.log")
    server.wait_ready()
    try:
        sdk = sdk_client_factory(server.url, account.token)
        start_worker()
        job = trained_tiny_job(sdk, tiny_model_dir, tuneboard_env)
        adapter_zip = httpx.get(f"{server.url}/v1/fine_tuning/jobs/{job.id}/adapter", headers=account.headers,
                                timeout=60).content
        expected = _local_greedy_reply(tiny_model_dir, adapter_zip, tmp_path, 10)

        stream = sdk.chat.completions.create(model=job.fine_tuned_model, messages=QUESTION, max_tokens=10,
                                             temperature=0, stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        assert chunks[0].model == job.fine_tuned_model  # the id the caller used, not vLLM's name for the adapter
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
        assert chunks[-1].usage.completion_tokens >= 1
        whole = sdk.chat.completions.create(model=job.fine_tuned_model, messages=QUESTION, max_tokens=10,
                                            temperature=0)
        assert whole.choices[0].message.content == expected
        base = sdk.chat.completions.create(model=str(tiny_model_dir), messages=QUESTION, max_tokens=10,
                                           temperature=0)
        assert base.choices[0].message.content == _local_greedy_reply(tiny_model_dir, None, tmp_path / "b", 10)

        stats = httpx.get(f"{vllm_url}/standin/stats").json()
        assert stats["adapter_loads"] == 1 and len(stats["requests"]) == 3  # two replies, one load
        [loaded] = stats["adapters"]
        assert sorted(path.name for path in (shared / loaded).iterdir()) == ["adapter_config.json",
                                                                              "adapter_model.safetensors"]

        checkpoint = list(sdk.fine_tuning.jobs.checkpoints.list(job.id))[-1]
        sdk.chat.completions.create(model=checkpoint.fine_tuned_model_checkpoint, messages=QUESTION, max_tokens=4)
        assert httpx.get(f"{vllm_url}/standin/stats").json()["adapter_loads"] == 2

        httpx.post(f"{vllm_url}/standin/forget")  # as a restarted server: its adapters are gone
        again = sdk.chat.completions.create(model=job.fine_tuned_model, messages=QUESTION, max_tokens=10,
                                            temperature=0)
        assert again.choices[0].message.content == expected
        assert httpx.get(f"{vllm_url}/standin/stats").json()["adapter_loads"] == 3

        from app.db import new_session

        beta = make_account(new_session, "carol@example.com", "Beta")
        requests_before = len(httpx.get(f"{vllm_url}/standin/stats").json()["requests"])
        with pytest.raises(openai.NotFoundError):
            sdk_client_factory(server.url, beta.token).chat.completions.create(model=job.fine_tuned_model,
                                                                              messages=QUESTION)
        assert len(httpx.get(f"{vllm_url}/standin/stats").json()["requests"]) == requests_before

        # A base the server does not serve goes to the inference queue (no worker here: 503 after the wait).
        with pytest.raises(openai.InternalServerError) as caught:
            sdk.chat.completions.create(model="HuggingFaceTB/SmolLM2-135M-Instruct", messages=QUESTION)
        assert caught.value.code == "no_worker" and "tuneboard worker --inference" in caught.value.message

        process.terminate()
        process.wait(timeout=10)
        with pytest.raises(openai.InternalServerError) as caught:
            sdk.chat.completions.create(model=job.fine_tuned_model, messages=QUESTION, max_tokens=4)
        assert caught.value.status_code == 503 and vllm_url in caught.value.message
    finally:
        server.stop()


@pytest.fixture
def sdk_client_factory():
    made: list[openai.OpenAI] = []

    def make(url: str, token: str) -> openai.OpenAI:
        client = sdk_client(url, token)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def test_the_adapter_name_vllm_gets_is_stable_and_path_safe():
    from app.inference.vllm import adapter_name

    name = adapter_name("jobs/ftjob-x/attempt-1/adapter")
    assert name == adapter_name("jobs/ftjob-x/attempt-1/adapter") != adapter_name("jobs/ftjob-y/attempt-1/adapter")
    assert name.startswith("tb-") and Path(name).name == name and name.isascii() and "/" not in name
