"""A multimodal model as AutoModelForCausalLM loads it (Gemma 3 with its vision tower): the picture, the FLOPs and
the memory follow the language model, while the counts stay PEFT's, vision tower included.

A tiny Gemma 3 built from a config, on the meta device through `workers.inventory`, with the vision tower's
encoder layers first in the module order, as in the real model.
"""

from __future__ import annotations

import pytest

from app.estimator.block_diagram import block_diagram
from app.estimator.training_flops import matmul_weights_per_token
from tests.estimator.peft_reference import compare_on_config, inventory_for


def _gemma3(vision_layers: int = 3):
    from transformers import Gemma3Config

    text = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 512, "sliding_window": 16,
            "max_position_embeddings": 64}
    vision = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": vision_layers,
              "num_attention_heads": 2, "image_size": 28, "patch_size": 14, "vision_use_head": False}
    return Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=511,
                        boi_token_index=509, eoi_token_index=510)


def test_the_drawn_block_is_the_language_models_not_the_vision_towers():
    inventory = inventory_for(_gemma3())
    assert inventory.language_model_prefix == "model.language_model."
    assert inventory.first_block()[0].name.startswith("model.language_model.layers.0.")
    diagram = block_diagram(inventory)
    assert diagram.block_pattern == "model.language_model.layers.*" and diagram.layer_count == 2
    attention = next(section for section in diagram.sections if section.title == "Attention")
    # q_proj names both towers' projections, as it does for PEFT: 2 text layers and 3 vision layers.
    assert [(box.target, box.count) for box in attention.inputs] == [("q_proj", 5), ("k_proj", 5), ("v_proj", 5)]
    assert (attention.output.target, attention.output.count) == ("o_proj", 2)
    assert [box.target for box in diagram.outside] == ["embed_tokens", "lm_head"]
    # Each vision layer: q, k, v, out_proj, fc1, fc2; and the position embedding (the patch embedding is a Conv2d).
    assert diagram.other_towers == 3 * 6 + 1


def test_a_text_only_step_costs_the_language_models_flops_alone():
    from transformers import Gemma3TextConfig

    multimodal = _gemma3()
    text_only = Gemma3TextConfig(**multimodal.text_config.to_dict())
    assert matmul_weights_per_token(inventory_for(multimodal)) == matmul_weights_per_token(inventory_for(text_only))
    assert matmul_weights_per_token(inventory_for(_gemma3(vision_layers=6))) == \
        matmul_weights_per_token(inventory_for(multimodal))


@pytest.mark.parametrize("lora", [
    {"r": 8, "target_modules": ["q_proj", "v_proj"]},
    {"r": 4, "target_modules": "all-linear"},
    {"r": 4, "target_modules": ["o_proj", "down_proj"], "layers_to_transform": [1]},
])
def test_counts_equal_peft_on_the_whole_multimodal_model(lora):
    compare_on_config(_gemma3(), lora)
