"""What each multi-GPU strategy asks of the Trainer and of the 4-bit loader (the runs themselves are proven in
tests/jobs/test_multi_gpu_jobs.py)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from workers.base_models import four_bit_quantization
from workers.training.contract import TrainingFailure
from workers.training.strategies import SHARDING_STRATEGIES, run_strategy, strategy_arguments, trainer_checkpointing


def test_one_gpu_is_a_single_process_run_and_auto_on_several_is_ddp():
    assert run_strategy(1, "auto") == "single"
    assert run_strategy(4, "auto") == "ddp"
    assert run_strategy(4, "fsdp") == "fsdp"
    assert strategy_arguments("single", gradient_checkpointing=True, no_split_modules=[]) == {}


def test_fsdp_wraps_the_models_decoder_blocks_and_checkpoints_them_itself():
    arguments = strategy_arguments("fsdp", gradient_checkpointing=True, no_split_modules=["LlamaDecoderLayer"])
    assert arguments["fsdp"] == "full_shard auto_wrap"
    assert arguments["fsdp_config"]["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    assert arguments["fsdp_config"]["activation_checkpointing"] is True
    assert trainer_checkpointing("fsdp", True) is False and trainer_checkpointing("ddp", True) is True


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="DeepSpeed is installed here")
@pytest.mark.parametrize("strategy", ["deepspeed_zero2", "deepspeed_zero3"])
def test_deepspeed_without_the_package_is_refused_saying_what_to_install(strategy):
    with pytest.raises(TrainingFailure) as caught:
        strategy_arguments(strategy, gradient_checkpointing=False, no_split_modules=[])
    assert caught.value.code == "unsupported" and "pip install deepspeed" in caught.value.reason


def test_qlora_under_a_sharding_strategy_stores_its_packed_weights_in_the_compute_dtype():
    """FSDP and ZeRO-3 shard floating-point tensors only: bitsandbytes' quant_storage makes the 4-bit weights one."""
    assert set(SHARDING_STRATEGIES) == {"fsdp", "deepspeed_zero3"}  # ZeRO-2 and DDP keep whole weights
    sharded = four_bit_quantization(torch.bfloat16, sharded=True)
    assert sharded.load_in_4bit and sharded.bnb_4bit_quant_type == "nf4"
    assert sharded.bnb_4bit_quant_storage == torch.bfloat16 and sharded.bnb_4bit_compute_dtype == torch.bfloat16
    assert four_bit_quantization(torch.bfloat16, sharded=False).bnb_4bit_quant_storage == torch.uint8
