"""Hypothesis strategies for mixture-of-experts models and the LoRA options people try on them.

Families: Mixtral and the Qwen3-MoE / OLMoE style (whose configs PEFT rewrites on transformers 5: the
old per-expert names become `target_parameters` on the stacked expert weights, a fused pair doubles its
rank), Qwen2-MoE (shared expert, not rewritten) and gpt-oss (experts stored transposed, router with a bias,
not rewritten). Options mix the old expert names, the new parameter names, routers, regexes,
"all-linear", rank and alpha patterns, biases, dropout, DoRA, layer filters, exclusions and
modules_to_save. Shared by the MoE exactness tests; not a test module.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

MOE_FAMILIES = ("mixtral", "qwen3_moe", "olmoe", "qwen2_moe", "gpt_oss")

# The names a user of each family would reach for: attention, the old per-expert Linear names, the router.
MODULE_NAMES = {
    "mixtral": ("q_proj", "k_proj", "v_proj", "o_proj", "w1", "w2", "w3", "gate"),
    "qwen3_moe": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "gate"),
    "olmoe": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "gate"),
    "qwen2_moe": ("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "shared_expert_gate"),
    "gpt_oss": ("q_proj", "k_proj", "v_proj", "o_proj"),
}
ROUTER = {"gpt_oss": "router"} | {family: "gate" for family in MOE_FAMILIES if family != "gpt_oss"}
PARAMETER_NAMES = ("gate_up_proj", "down_proj", "experts.gate_up_proj", "mlp.experts.down_proj")


def moe_config(family: str, *, layers: int, heads: int, kv_heads: int, head_dim: int, experts: int,
               intermediate: int, vocab: int, tie: bool) -> Any:
    """A tiny config of one MoE family."""
    from transformers import GptOssConfig, MixtralConfig, OlmoeConfig, Qwen2MoeConfig, Qwen3MoeConfig

    common = dict(vocab_size=vocab, hidden_size=heads * head_dim, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=64,
                  tie_word_embeddings=tie, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if family == "mixtral":
        return MixtralConfig(intermediate_size=intermediate, num_local_experts=experts, num_experts_per_tok=1,
                             head_dim=head_dim, **common)
    if family == "qwen3_moe":
        return Qwen3MoeConfig(intermediate_size=intermediate, moe_intermediate_size=intermediate, num_experts=experts,
                              num_experts_per_tok=1, head_dim=head_dim, **common)
    if family == "olmoe":
        return OlmoeConfig(intermediate_size=intermediate, num_experts=experts, num_experts_per_tok=1, **common)
    if family == "qwen2_moe":
        return Qwen2MoeConfig(intermediate_size=intermediate, moe_intermediate_size=intermediate,
                              shared_expert_intermediate_size=intermediate + 4, num_experts=experts,
                              num_experts_per_tok=1, **common)
    return GptOssConfig(intermediate_size=intermediate, num_local_experts=experts, num_experts_per_tok=1,
                        head_dim=head_dim, **common)


@st.composite
def random_moe_configs(draw) -> Any:
    """A tiny MoE config: random family, depth, width, heads, experts, vocabulary and tying."""
    family = draw(st.sampled_from(MOE_FAMILIES))
    heads = draw(st.sampled_from([2, 4]))
    return moe_config(
        family,
        layers=draw(st.integers(1, 3)),
        heads=heads,
        kv_heads=draw(st.sampled_from([k for k in (1, 2) if heads % k == 0])),
        head_dim=draw(st.sampled_from([4, 8])),
        experts=draw(st.integers(2, 5)),
        intermediate=draw(st.integers(4, 24)),
        vocab=draw(st.integers(16, 64)),
        tie=draw(st.booleans()),
    )


@st.composite
def moe_lora_options(draw, config: Any) -> dict[str, Any]:
    """LoRA options for an MoE model, including what PEFT refuses (the estimator must refuse it too)."""
    family = config.model_type
    names = MODULE_NAMES[family]
    options: dict[str, Any] = {"r": draw(st.sampled_from([1, 2, 4, 8])),
                               "lora_alpha": draw(st.sampled_from([4, 8, 16]))}
    form = draw(st.sampled_from(["list", "list", "all-linear", "regex", "omitted", "empty"]))
    if form == "list":
        options["target_modules"] = draw(st.lists(st.sampled_from(names), min_size=1, max_size=5, unique=True))
    elif form == "all-linear":
        options["target_modules"] = "all-linear"
    elif form == "regex":
        options["target_modules"] = draw(st.sampled_from([
            r".*\.(q_proj|v_proj)", r"(?!.*\.1\.).*\.v_proj", r".*\.mlp\..*", r".*experts.*", r".*\.(w1|w3)",
            r".*(gate_proj|up_proj)", r".*\.gate",
        ]))
    elif form == "empty":
        options["target_modules"] = []
    if draw(st.booleans()):
        options["target_parameters"] = draw(st.lists(
            st.sampled_from(PARAMETER_NAMES + (f"{ROUTER[family]}.weight", "gate_up_proj_bias", "norm.weight")),
            min_size=1, max_size=3, unique=True))
    if draw(st.integers(0, 2)) == 0:
        options["rank_pattern"] = {draw(st.sampled_from([".*_proj", "gate_up_proj", "v_proj", "down_proj", "gate"])):
                                   draw(st.sampled_from([1, 3, 16]))}
    if draw(st.integers(0, 3)) == 0:
        options["alpha_pattern"] = {draw(st.sampled_from([".*_proj", "down_proj"])): 32}
    options["bias"] = draw(st.sampled_from(["none", "none", "all", "lora_only"]))
    if draw(st.integers(0, 4)) == 0:
        options["lora_dropout"] = 0.05
    if draw(st.integers(0, 5)) == 0:
        options["use_dora"] = True
    if draw(st.integers(0, 4)) == 0 and isinstance(options.get("target_modules"), list):
        options["layers_to_transform"] = [0]
    if draw(st.integers(0, 4)) == 0:
        options["exclude_modules"] = draw(st.sampled_from([["v_proj"], ["mlp"], r".*\.0\..*"]))
    if draw(st.integers(0, 4)) == 0:
        options["modules_to_save"] = draw(st.lists(
            st.sampled_from(["lm_head", "experts", ROUTER[family], "norm", "base_layer", "embed_tokens"]),
            min_size=1, max_size=2, unique=True))
    return options
