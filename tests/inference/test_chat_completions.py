"""Chat completions through the official `openai` SDK, unchanged, against a live Tuneboard with a real training
worker and a real inference worker: a trained job's fine_tuned_model is listed and answers (streamed and whole, the
same greedy reply PEFT gives locally), a checkpoint's id answers on the same loaded base, another team's adapter is
a 404, settings past their limits a 422 naming them, no worker is a 503 that says what to start, and a reply whose
client left or whose worker died stops.
"""

from __future__ import annotations

import re
import time

import httpx
import openai
import pytest

from tests.api.conftest import sdk_client
from tests.configure.conftest import wait_until
from tests.inference.conftest import trained_tiny_job
from tests.service_fixtures import make_account

QUESTION = [{"role": "user", "content": "The quick brown fox"}]


@pytest.fixture
def sdk(live_server, account):
    client = sdk_client(live_server.url, account.token)
    yield client
    client.close()


@pytest.fixture
def inference_worker(start_worker, tuneboard_env):
    return start_worker(queues=[tuneboard_env.settings.inference_queue], name="inference")


def _local_greedy_reply(tiny_model_dir, adapter_zip: bytes | None, tmp_path, max_new_tokens: int) -> str:
    """What PEFT answers on this machine with the downloaded adapter (or the base alone), greedy."""
    import io
    import zipfile

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    if adapter_zip is not None:
        zipfile.ZipFile(io.BytesIO(adapter_zip)).extractall(tmp_path / "adapter")
        model = PeftModel.from_pretrained(model, tmp_path / "adapter")
    model.eval()
    inputs = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(output[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_a_fine_tuned_model_is_listed_and_answers_streamed_and_whole_on_one_loaded_base(
        sdk, start_worker, inference_worker, tiny_model_dir, tuneboard_env, live_server, account, tmp_path):
    start_worker()
    job = trained_tiny_job(sdk, tiny_model_dir, tuneboard_env)

    listed = {model.id: model for model in sdk.models.list()}
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in listed  # the catalog first, then the team's models
    assert listed[job.fine_tuned_model].owned_by == "Alpha"
    assert listed[job.fine_tuned_model].to_dict()["parent"] == str(tiny_model_dir)

    stream = sdk.chat.completions.create(model=job.fine_tuned_model, messages=QUESTION, max_tokens=10,
                                         temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].model == job.fine_tuned_model
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] in ("stop", "length")
    usage = chunks[-1].usage
    assert usage.completion_tokens >= 1 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    whole = sdk.chat.completions.create(model=job.fine_tuned_model, messages=QUESTION, max_tokens=10, temperature=0)
    assert whole.choices[0].message.content == streamed and whole.object == "chat.completion"
    adapter_zip = httpx.get(f"{live_server.url}/v1/fine_tuning/jobs/{job.id}/adapter", headers=account.headers,
                            timeout=60).content
    assert streamed == _local_greedy_reply(tiny_model_dir, adapter_zip, tmp_path, 10)

    # The base itself, and the job's first checkpoint: another adapter on the base already loaded.
    base = sdk.chat.completions.create(model=str(tiny_model_dir), messages=QUESTION, max_tokens=10, temperature=0)
    assert base.choices[0].message.content == _local_greedy_reply(tiny_model_dir, None, tmp_path, 10)
    checkpoint = list(sdk.fine_tuning.jobs.checkpoints.list(job.id))[-1]
    assert checkpoint.step_number == 3
    early = sdk.chat.completions.create(model=checkpoint.fine_tuned_model_checkpoint, messages=QUESTION,
                                        max_tokens=10, temperature=0)
    loads = early.to_dict()["tuneboard"]
    assert loads["base_loads"] == 1 and loads["adapter_loads"] == 2 and loads["adapter_loaded"] is True


def test_another_teams_adapter_and_unknown_models_are_404_and_bad_settings_422(
        sdk, start_worker, inference_worker, tiny_model_dir, tuneboard_env, live_server):
    start_worker()
    job = trained_tiny_job(sdk, tiny_model_dir, tuneboard_env)
    from app.db import new_session

    beta = make_account(new_session, "carol@example.com", "Beta")
    other = sdk_client(live_server.url, beta.token)
    with pytest.raises(openai.NotFoundError) as caught:
        other.chat.completions.create(model=job.fine_tuned_model, messages=QUESTION)
    assert caught.value.code == "model_not_found" and caught.value.param == "model"
    assert job.fine_tuned_model not in {model.id for model in other.models.list()}
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model=f"{tiny_model_dir}:ft-never", messages=QUESTION)
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="../../etc/passwd", messages=QUESTION)
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        sdk.chat.completions.create(model=job.fine_tuned_model, messages=QUESTION, max_tokens=10**9)
    assert caught.value.param == "max_tokens" and "TUNEBOARD_INFERENCE_MAX_NEW_TOKENS" in caught.value.message
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        sdk.chat.completions.create(model=job.fine_tuned_model, messages=QUESTION, stop=["x" * 65])
    assert caught.value.param == "stop" and "1 to 64 characters" in caught.value.message
    other.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the web side's wait: no database in it
def test_without_an_inference_worker_the_request_fails_saying_what_to_start(account, tuneboard_env, monkeypatch,
                                                                              tmp_path):
    from app.settings import get_settings
    from tests.services import ServerProcess

    env = {**tuneboard_env.env, "TUNEBOARD_INFERENCE_WAIT_SECONDS": "2"}
    server = ServerProcess(env, tmp_path / "server.log")
    server.wait_ready()
    try:
        client = sdk_client(server.url, account.token)
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="HuggingFaceTB/SmolLM2-135M-Instruct", messages=QUESTION)
        assert caught.value.status_code == 503 and caught.value.code == "no_worker"
        assert "tuneboard worker --inference" in caught.value.message and time.monotonic() - started < 30
    finally:
        server.stop()
    get_settings.cache_clear()


def test_a_client_that_leaves_mid_reply_stops_the_generation(sdk, inference_worker, long_context_model_dir):
    stream = sdk.chat.completions.create(model=str(long_context_model_dir), messages=QUESTION, max_tokens=4000,
                                         temperature=0, stream=True, extra_body={"min_tokens": 4000})
    for index, _chunk in enumerate(stream):
        if index == 3:
            break
    stream.close()
    stopped = re.compile(r"the client left after (\d+) tokens; stopped")
    wait_until(lambda: stopped.search(inference_worker.log()), timeout=30, shown=lambda: inference_worker.log()[-2000:])
    assert int(stopped.search(inference_worker.log())[1]) < 4000
    # The worker is free at once for the next request.
    reply = sdk.chat.completions.create(model=str(long_context_model_dir), messages=QUESTION, max_tokens=3,
                                        temperature=0)
    assert reply.usage.completion_tokens <= 3


def test_a_worker_killed_mid_reply_ends_the_stream_with_an_error_not_a_hang(
        sdk, inference_worker, long_context_model_dir, start_worker, tuneboard_env):
    stream = sdk.chat.completions.create(model=str(long_context_model_dir), messages=QUESTION, max_tokens=4000,
                                         temperature=0, stream=True, extra_body={"min_tokens": 4000})
    chunks = iter(stream)
    next(chunks)
    inference_worker.kill()
    started = time.monotonic()
    with pytest.raises(openai.APIError) as caught:
        for _chunk in chunks:
            pass
    assert "stopped before it finished" in str(caught.value) and time.monotonic() - started < 60
    # A new worker answers the next request; nothing of the killed one's request runs there.
    replacement = start_worker(queues=[tuneboard_env.settings.inference_queue], name="inference2")
    reply = sdk.chat.completions.create(model=str(long_context_model_dir), messages=QUESTION, max_tokens=3,
                                        temperature=0)
    assert reply.usage.completion_tokens <= 3
    # Acked when received, the killed worker's request is not delivered again: the new worker got one request.
    assert len(re.findall(r"Task tuneboard\.generate_reply\[[^]]+\] received", replacement.log())) == 1
