"""One job on several GPUs, with real Celery workers: a worker that announces two GPUs starts two training
processes with torchrun, and they train one job together (DDP; the gloo backend on this machine's CPUs).

The workers announce their GPUs from `nvidia-smi`; this machine has none, so a worker gets a stand-in on its PATH
that answers as the real one does for a host with two GPUs. Training itself runs on the CPU, one process per
announced GPU, exactly as it would on GPUs but for the backend.
"""

from __future__ import annotations

import io
import math
import re
import zipfile

import psutil
import torch
from safetensors.torch import load as load_safetensors

from tests.jobs.helpers import (
    all_events,
    assert_resumed_by,
    cancel_and_assert_the_loop_stopped,
    chat_records,
    last_checkpoint_step,
    launch,
    metric_steps,
    stand_in_nvidia_smi,
    upload,
    wait_for,
    wait_until_finished,
)

LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}


def _training(**overrides) -> dict:
    base = {"max_steps": 12, "learning_rate": 5e-3, "sequence_length": 64, "precision": "fp32", "logging_steps": 1,
            "save_steps": 6, "warmup_ratio": 0.0, "lr_scheduler": "constant", "seed": 7}
    return {**base, **overrides}


H100 = ("NVIDIA H100 80GB HBM3", 81559)


def _gpus(tmp_path, count: int) -> str:
    """A PATH whose nvidia-smi reports `count` 80 GB GPUs."""
    return stand_in_nvidia_smi(tmp_path / f"smi-{count}", [H100] * count)


def _losses(client, job_id: str) -> dict[int, float]:
    return {p["step"]: p["loss"] for p in metric_steps(client, job_id) if p.get("loss") is not None}


def test_two_processes_train_the_same_losses_as_one_with_the_same_global_batch(client, start_worker, model_dir,
                                                                              tmp_path):
    start_worker(name="twogpu", PATH=_gpus(tmp_path, 2))
    train = upload(client, chat_records(48))
    one = launch(client, model_dir, train["id"], lora=LORA, training=_training(batch_size=4))
    two = launch(client, model_dir, train["id"], lora=LORA,
                 training=_training(batch_size=2, gpus=2, strategy="ddp"))
    assert two["estimate"]["memory"]["gpus"] == 2 and two["estimate"]["memory"]["strategy"] == "ddp"
    assert two["estimate"]["memory"]["effective_batch_size"] == 4
    for job in (one, two):
        finished = wait_until_finished(client, job["id"], timeout=300)
        assert finished["status"] == "succeeded", finished["error"]
    messages = [e["message"] for e in all_events(client, two["id"])]
    assert any("Starting 2 training processes" in m for m in messages), messages
    device = client.get(f"/v1/fine_tuning/jobs/{two['id']}").json()
    assert "x 2 processes (ddp)" in str(device), device
    single, double = _losses(client, one["id"]), _losses(client, two["id"])
    assert sorted(double) == list(range(1, 13)) == sorted(single)
    # The same examples make each global batch (Accelerate shards the one seeded order over the ranks), and the
    # gradients are averaged over the ranks: only the reduction order differs.
    for step in single:
        assert math.isclose(single[step], double[step], rel_tol=2e-3), (step, single, double)
    # Both processes together trained every real token once: the same count as one process.
    tokens = [client.get(f"/v1/fine_tuning/jobs/{j['id']}").json()["trained_tokens"] for j in (one, two)]
    assert tokens[0] == tokens[1] > 0, tokens
    adapter = client.get(f"/v1/fine_tuning/jobs/{two['id']}/adapter")
    assert adapter.status_code == 200 and len(adapter.content) > 1000


def _adapter_tensors(client, job_id: str) -> dict[str, torch.Tensor]:
    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/v1/fine_tuning/jobs/{job_id}/adapter").content))
    name = next(n for n in archive.namelist() if n.endswith("adapter_model.safetensors"))
    return load_safetensors(archive.read(name))


def test_fsdp_on_two_processes_trains_what_one_process_trains_and_saves_a_normal_adapter(client, start_worker,
                                                                                         model_dir, tmp_path):
    start_worker(name="twogpu", PATH=_gpus(tmp_path, 2))
    train = upload(client, chat_records(48))
    one = launch(client, model_dir, train["id"], lora=LORA, training=_training(batch_size=4))
    sharded = launch(client, model_dir, train["id"], lora=LORA,
                     training=_training(batch_size=2, gpus=2, strategy="fsdp"))
    assert sharded["estimate"]["memory"]["strategy"] == "fsdp"
    for job in (one, sharded):
        finished = wait_until_finished(client, job["id"], timeout=300)
        assert finished["status"] == "succeeded", finished["error"]
    single, split = _losses(client, one["id"]), _losses(client, sharded["id"])
    assert sorted(split) == list(range(1, 13))
    for step in single:
        assert math.isclose(single[step], split[step], rel_tol=2e-3), (step, single, split)
    # The shards were gathered into one PEFT adapter: the same tensors, by name and value, as one process saved.
    alone, gathered = _adapter_tensors(client, one["id"]), _adapter_tensors(client, sharded["id"])
    assert sorted(alone) == sorted(gathered) and len(alone) == 2 * 2 * 2  # A and B of q and v in 2 layers
    for name, tensor in alone.items():
        assert torch.allclose(tensor, gathered[name], atol=1e-4), name


def test_cancelling_a_two_process_job_stops_both_and_leaves_no_process(client, start_worker, model_dir, tmp_path):
    worker = start_worker(name="twogpu", PATH=_gpus(tmp_path, 2))
    train = upload(client, chat_records(48))
    job = launch(client, model_dir, train["id"], lora=LORA,
                 training=_training(batch_size=2, gpus=2, strategy="ddp", max_steps=5000, save_steps=10))
    wait_for(client, job["id"], lambda j: j["progress"]["step"] >= 12, timeout=300, what="step 12")
    cancel_and_assert_the_loop_stopped(client, job["id"])
    ranks = [p for p in psutil.Process(worker.process.pid).children(recursive=True)
             if "workers.training.rank" in " ".join(p.cmdline())]
    assert not ranks, ranks


def test_a_job_needing_more_gpus_than_any_live_worker_has_is_refused_naming_the_field(client, start_worker,
                                                                                      model_dir, tmp_path):
    start_worker(name="twogpu", PATH=_gpus(tmp_path, 2))
    train = upload(client, chat_records(8))
    response = client.post("/v1/fine_tuning/jobs", json={
        "model": model_dir, "training_file": train["id"], "lora": LORA, "training": _training(gpus=4)})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "training.gpus" and error["code"] == "exceeds_worker_gpus"
    assert "4 GPUs" in error["message"] and "2 (NVIDIA H100 80GB HBM3 on twogpu" in error["message"]
    assert client.get("/v1/fine_tuning/jobs").json()["data"] == []


def _rank_processes() -> list[psutil.Process]:
    """Every training process of a multi-GPU job on this machine (torchrun's children)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "-m workers.training.rank" in cmdline and "torch.distributed.run" not in cmdline:
            found.append(process)
    return found


def _ranks_of(job_id: str) -> list[psutil.Process]:
    mine = []
    for process in _rank_processes():
        try:
            spec = process.cmdline()[-1]
        except psutil.Error:
            continue
        if job_id in spec:
            mine.append(process)
    return mine


def _gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return alive


def test_a_killed_rank_ends_the_whole_attempt_and_leaves_no_rank_running(client, start_worker, model_dir, tmp_path):
    start_worker(name="twogpu", PATH=_gpus(tmp_path, 2))
    train = upload(client, chat_records(48))
    job = launch(client, model_dir, train["id"], lora=LORA,
                 training=_training(batch_size=2, gpus=2, strategy="ddp", max_steps=5000, save_steps=10))
    wait_for(client, job["id"], lambda j: j["progress"]["step"] >= 8, timeout=300, what="step 8")
    ranks = _ranks_of(job["id"])
    assert len(ranks) == 2, ranks
    ranks[1].kill()
    job = wait_until_finished(client, job["id"], timeout=120)
    assert job["status"] == "failed"
    assert "a training process of the job ended without finishing" in job["error"]["message"], job["error"]
    assert not _gone(ranks, timeout=30), "a rank outlived its job"


def test_a_killed_worker_takes_its_ranks_with_it_and_the_job_resumes_on_another(client, start_worker, model_dir,
                                                                               tmp_path):
    doomed = start_worker(name="doomed", PATH=_gpus(tmp_path, 2))
    train = upload(client, chat_records(48))
    job = launch(client, model_dir, train["id"], lora=LORA,
                 training=_training(batch_size=2, gpus=2, strategy="ddp", max_steps=40, save_steps=10))
    wait_for(client, job["id"], lambda j: j["progress"]["step"] >= 15, timeout=300, what="step 15")
    ranks = _ranks_of(job["id"])
    assert len(ranks) == 2, ranks
    doomed.kill()  # the worker's process group; torchrun has a session of its own and learns it from its parent
    assert not _gone(ranks, timeout=60), "ranks outlived their worker"
    last_checkpoint = last_checkpoint_step(client, job["id"])
    start_worker(name="rescuer", PATH=_gpus(tmp_path, 2))
    assert_resumed_by(client, job["id"], "rescuer", last_checkpoint, timeout=400)
    assert sorted(_losses(client, job["id"])) == list(range(1, 41))


def test_a_one_gpu_worker_never_receives_a_two_gpu_job_which_waits_for_a_two_gpu_worker(client, start_worker,
                                                                                          tuneboard_env, model_dir,
                                                                                          tmp_path):
    from app import redis_client
    from app.fleet import worker_registry
    from app.fleet.queue import TRAIN_TASK, get_celery

    big = start_worker(name="twogpu", PATH=_gpus(tmp_path, 2))
    train = upload(client, chat_records(16))
    big.stop()  # the launch saw a worker with two GPUs; by the time the job is delivered only a smaller one is left
    small = start_worker(name="onegpu", PATH=_gpus(tmp_path, 1))
    job = launch(client, model_dir, train["id"], lora=LORA, training=_training(batch_size=2, gpus=2, max_steps=4))
    wait = f"Waiting for a worker with 2 GPUs on queue '{tuneboard_env.queue}'."
    job = wait_for(client, job["id"], lambda _j: any(e["message"] == wait for e in all_events(client, _j["id"])),
                   timeout=120, what="the waiting event")
    assert job["status"] == "queued" and job["attempts"] == 0
    # A message on the queue itself (as sent before per-size queues) reaches the idle one-GPU worker, which
    # forwards it to the two-GPU queue instead of claiming it.
    get_celery().send_task(TRAIN_TASK, args=[job["id"]], queue=tuneboard_env.queue)
    forwarded = f"job {job['id']}: needs 2 GPUs, this worker has 1; sent to {tuneboard_env.queue}@2gpus"
    wait_for(client, job["id"], lambda _j: forwarded in small.log(), timeout=60, what="the forward")
    start_worker(name="twogpu2", PATH=_gpus(tmp_path, 2))  # it consumes the two-GPU queue: the job's only way
    job = wait_until_finished(client, job["id"], timeout=300)
    assert job["status"] == "succeeded", job["error"]
    assert job["worker"].startswith("twogpu2@") and job["attempts"] == 1
    assert small.log().count("needs 2 GPUs") == 1, "the job's own message reached the one-GPU worker"
    assert sum(e["message"] == wait for e in all_events(client, job["id"])) == 1
    # Workers announce the queues users name; the per-size queues they consume stay out of every list.
    announced = {w.hostname.split("@")[0]: w.queues for w in worker_registry.live_workers(redis_client.get_redis())}
    assert announced["twogpu2"] == (tuneboard_env.queue,)


def test_a_job_whose_gpus_left_the_queue_fails_after_the_wait_saying_why(client, start_worker, model_dir, tmp_path):
    big = start_worker(name="twogpu", PATH=_gpus(tmp_path, 2))
    train = upload(client, chat_records(8))
    big.stop()  # it leaves before taking the job; its announcement, still live, lets the launch through
    job = launch(client, model_dir, train["id"], lora=LORA, training=_training(batch_size=2, gpus=2, max_steps=2))
    start_worker(name="onegpu", PATH=_gpus(tmp_path, 1), TUNEBOARD_GPU_WAIT_SECONDS="12")
    job = wait_until_finished(client, job["id"], timeout=180)
    assert job["status"] == "failed" and job["attempts"] == 0, job
    assert job["error"]["code"] == "no_worker_with_gpus"
    assert re.search(r"^it waited \d+ seconds for a worker with 2 GPUs, and no live worker of queue",
                     job["error"]["message"]), job["error"]["message"]
    assert "(the most is 1)" in job["error"]["message"]
    messages = [e["message"] for e in all_events(client, job["id"])]
    assert sum("Waiting for a worker with 2 GPUs" in m for m in messages) == 1
    assert messages[-1].startswith("Job failed: it waited")
