"""The training-FLOPs model against torch's own FLOP counter, and the run's compute before launch.

`torch.utils.flop_counter.FlopCounterMode` counts every matrix multiply of a real LoRA training step (forward
and backward through PEFT, with and without gradient checkpointing). On the CPU, SDPA's fused attention
kernel is not counted, so the comparison is on the model's matmul part (`fixed`); the attention term is
checked by its formula. A dispatch mode counts the values every op of the step writes, which the elementwise count
(the time model's memory-traffic term) must follow across shapes.
"""

from __future__ import annotations

import pytest

from app.estimator.job_config import TrainingSettings
from app.estimator.lora_settings import LoraSettings
from app.estimator.matching import select_modules
from app.estimator.training_flops import attention_width, elementwise_values_per_token, flops_per_token
from app.estimator.training_time import evaluations, training_time
from tests.estimator.peft_reference import inventory_for, quiet_warnings, small_config


def _lora_training_step(config, targets, *, checkpointing: bool, batch: int, length: int, watch) -> object:
    """One real LoRA training step (forward and backward through PEFT) run inside `watch`; the PEFT model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with quiet_warnings():
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=targets))
        peft_model.train()
        ids = torch.randint(0, config.vocab_size, (batch, length))
        with watch:
            peft_model(input_ids=ids, labels=ids).loss.backward()
    return peft_model


def _measured_matmul_flops(config, targets, *, checkpointing: bool, batch: int, length: int) -> tuple[float, int]:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    peft_model = _lora_training_step(config, targets, checkpointing=checkpointing, batch=batch, length=length,
                                     watch=counter)
    counts = counter.get_flop_counts()["Global"]
    matmul = sum(v for k, v in counts.items() if "mm" in str(k))
    return matmul, peft_model.get_nb_trainable_parameters()[0]


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_matmul_flops_of_a_lora_step_equal_torchs_count_within_ten_percent(family, checkpointing):
    config = small_config(family, layers=2, heads=4, kv_heads=2 if family != "gpt2" else 4, head_dim=32,
                          intermediate=344, vocab=1000, tie=False)
    targets = {"gpt2": ["c_attn"]}.get(family, ["q_proj", "v_proj", "down_proj"])
    batch, length = 4, 64  # small_config allows 64 positions
    measured, trainable = _measured_matmul_flops(config, targets, checkpointing=checkpointing, batch=batch,
                                                 length=length)
    estimate = flops_per_token(inventory_for(config), adapter_params=trainable, saved_params=0,
                               gradient_checkpointing=checkpointing)
    ratio = estimate.fixed * batch * length / measured
    assert 0.9 <= ratio <= 1.1, f"estimate / torch's count = {ratio:.3f}"


def _measured_values_per_token(config, targets, *, checkpointing: bool, batch: int, length: int) -> float:
    """Values written by every op of a real LoRA training step (views excepted), per token."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountWrites(TorchDispatchMode):
        values = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not func.is_view and torch.Tag.view_copy not in func.tags:
                tensors = out if isinstance(out, (tuple, list)) else [out]
                self.values += sum(t.numel() for t in tensors if isinstance(t, torch.Tensor))
            return out

    counter = CountWrites()
    _lora_training_step(config, targets, checkpointing=checkpointing, batch=batch, length=length, watch=counter)
    return counter.values / (batch * length)


ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize(("family", "hidden", "layers", "targets", "checkpointing"), [
    ("llama", 64, 2, ["q_proj", "v_proj"], False),
    ("llama", 256, 2, ["q_proj", "v_proj"], False),
    ("llama", 128, 4, ALL_LINEAR, False),
    ("llama", 128, 4, ["q_proj", "v_proj"], True),
    ("qwen2", 192, 3, ["q_proj", "v_proj", "down_proj"], False),
    ("gpt2", 128, 2, ["c_attn"], False),
])
def test_values_written_follow_what_torch_writes_across_shapes(family, hidden, layers, targets, checkpointing):
    heads = hidden // 32
    config = small_config(family, layers=layers, heads=heads, kv_heads=heads // 2 if family != "gpt2" else heads,
                          head_dim=32, intermediate=3 * hidden, vocab=1000, tie=False)
    measured = _measured_values_per_token(config, targets, checkpointing=checkpointing, batch=4, length=64)
    inventory = inventory_for(config)
    selection = select_modules(inventory, LoraSettings(r=8, target_modules=targets))
    counted = elementwise_values_per_token(inventory, [(a.module, a.r) for a in selection.adapted],
                                           lora_dropout=False, gradient_checkpointing=checkpointing)
    # One scale for every shape: a queue fits the cost of a value, so only the proportions matter (GPT-2's
    # dropout sends attention down the unfused path, whose scores are not counted).
    assert 0.8 <= counted.training / measured <= 1.2, f"counted / written = {counted.training / measured:.2f}"


def test_attention_term_is_causal_qk_and_av_forward_once_backward_twice():
    config = small_config("llama", layers=3, heads=4, kv_heads=2, head_dim=16, intermediate=64, vocab=100, tie=True)
    inventory = inventory_for(config)
    assert attention_width(inventory) == 64
    plain = flops_per_token(inventory, adapter_params=0, saved_params=0, gradient_checkpointing=False)
    recomputed = flops_per_token(inventory, adapter_params=0, saved_params=0, gradient_checkpointing=True)
    # Each token attends to L/2 tokens on average, in QKᵀ and in the weighted sum of V: 2·L·width per layer.
    assert plain.forward_per_length == 2 * 3 * 64
    assert plain.per_length == 3 * plain.forward_per_length
    assert recomputed.per_length == 4 * plain.forward_per_length


def test_run_compute_follows_the_trainers_steps_padding_and_evaluations():
    inventory = inventory_for(small_config("llama", layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=64,
                                           vocab=100, tie=False))
    training = TrainingSettings(num_epochs=2, batch_size=4, gradient_accumulation_steps=2, sequence_length=256)
    time = training_time(inventory, training, adapter_params=1000, saved_params=0, examples=100,
                         validation_examples=10, tokens_per_example=96.5, tokens_source="measured")
    assert time.steps == 2 * 13  # ceil(ceil(100 / 4) / 2) = 13 steps an epoch
    assert time.padded_tokens == round(26 * 4 * 2 * 96.5)
    assert time.evaluations == 1 + 26 // 3  # before training, then every tenth of the run (3 steps)
    model = time.flops_model
    expected = (model.fixed + model.per_length * 96.5) * 26 * 8 * 96.5 \
        + (model.forward_fixed + model.forward_per_length * 96.5) * time.evaluations * 10 * 96.5
    assert time.flops == pytest.approx(expected)
    assert evaluations(10, 4, has_validation=False) == 0 and evaluations(10, 4, has_validation=True) == 3

    unknown = training_time(inventory, training, adapter_params=1000, saved_params=0, examples=100,
                            validation_examples=0, tokens_per_example=None, tokens_source="measured")
    assert (unknown.tokens_per_example, unknown.tokens_source) == (256, "sequence_length")


def test_a_dpo_run_computes_two_sequences_an_example_and_a_reference_forward_of_each():
    inventory = inventory_for(small_config("llama", layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=64,
                                           vocab=100, tie=False))
    training = TrainingSettings(max_steps=10, batch_size=4, sequence_length=128)
    common = dict(adapter_params=1000, saved_params=0, examples=40, validation_examples=8, tokens_per_example=100.0,
                  tokens_source="measured")
    supervised = training_time(inventory, training, **common)
    preference = training_time(inventory, training, **common, preference=True)
    assert preference.padded_tokens == 2 * supervised.padded_tokens == 2 * 10 * 4 * 100
    plain, dpo = supervised.flops_model, preference.flops_model
    # Training: the policy's forward and backward, then the reference's forward; evaluation: both forwards.
    assert dpo.fixed == pytest.approx(plain.fixed + plain.forward_fixed)
    assert dpo.per_length == pytest.approx(plain.per_length + plain.forward_per_length)
    assert dpo.forward_fixed == pytest.approx(2 * plain.forward_fixed)
    assert preference.flops == pytest.approx(dpo.run_flops(8000, 8000 * 100, 2 * 8 * 100 * preference.evaluations,
                                                           2 * 8 * 100 * 100 * preference.evaluations))
