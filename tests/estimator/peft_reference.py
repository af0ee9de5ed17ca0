"""The reference side of the estimator exactness tests: real PEFT beside Tuneboard's torch-free estimator.

Builds causal LMs from configs (on the meta device unless real weights are needed), applies
`peft.get_peft_model(model, LoraConfig(**options))` and runs the estimator on the same options, and puts
both outcomes in one comparable shape. Shared by the test modules of this package; not a test module.
"""

from __future__ import annotations

import contextlib
import copy
import json
import warnings
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

from pydantic import ValidationError

from app.estimator import catalog
from app.estimator.estimate import EstimateRequest, EstimateResponse, estimate
from app.estimator.inventory import Inventory
from app.estimator.lora_settings import LoraSettings
from app.estimator.matching import EstimateError
from workers.inventory import _build_on_meta, _load_catalog_config, build_inventory

CATALOG_IDS = tuple(entry.id for entry in catalog.entries())


class quiet_warnings:
    """Ignore every warning inside: PEFT and transformers are loud about deliberately odd configs."""

    def __enter__(self):
        self._context = warnings.catch_warnings()
        self._context.__enter__()
        warnings.simplefilter("ignore")
        return self

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)


@dataclass(frozen=True)
class Outcome:
    """What one side made of a LoRA config: the two counts, or why it refused the config."""

    trainable: int | None = None
    all: int | None = None
    error: str | None = None
    saved_module_holds_lora: bool = False  # PEFT only: a modules_to_save copy contains LoRA layers

    @property
    def rejected(self) -> bool:
        return self.error is not None


# ---------------------------------------------------------------------------------------------------------------
# Models and inventories


@cache
def catalog_config(model_id: str) -> Any:
    """The transformers config of a catalog model, from its committed config.json."""
    return _load_catalog_config(model_id)


@cache
def catalog_inventory(model_id: str) -> Inventory:
    """The committed inventory of a catalog model, exactly as the web app loads it."""
    return Inventory(json.loads(catalog.inventory_path(model_id).read_text()))


_configs: dict[str, Any] = {}


def _key(config: Any) -> str:
    key = config.to_json_string(use_diff=False)
    _configs.setdefault(key, config)
    return key


@lru_cache(maxsize=64)
def _meta_model(key: str) -> Any:
    with quiet_warnings():
        return _build_on_meta(_configs[key])


def fresh_meta_model(config: Any) -> Any:
    """A model for `config` on the meta device that PEFT may modify: a copy of one cached build per config."""
    return copy.deepcopy(_meta_model(_key(config)))


@lru_cache(maxsize=256)
def _inventory(key: str, model_id: str) -> Inventory:
    with quiet_warnings():
        return Inventory(build_inventory(_configs[key], model_id))


def inventory_for(config: Any, model_id: str = "test/random") -> Inventory:
    """The estimator's inventory of `config`, made by `workers.inventory.build_inventory` (cached per config)."""
    return _inventory(_key(config), model_id)


def real_model(config: Any) -> Any:
    """A randomly initialised float32 model on the CPU, for tests that save real adapter files."""
    import torch
    from transformers import AutoModelForCausalLM

    with quiet_warnings():
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------------------
# The two sides


def peft_model(model: Any, options: dict[str, Any]) -> Any:
    """`get_peft_model(model, LoraConfig(**options))`; the option names are LoraConfig's own.

    On a meta model the LoRA weights PEFT adds are made on the meta device too: PEFT creates them on the CPU,
    initialises them there and only then moves them beside their base weight, which for a 32B model's r=16
    adapter is half a gigabyte of random numbers per call, thrown away. Nothing PEFT counts or checks changes."""
    import torch
    from peft import LoraConfig, get_peft_model

    on_meta = any(p.is_meta for p in model.parameters())
    with quiet_warnings(), torch.device("meta") if on_meta else contextlib.nullcontext():
        return get_peft_model(model, LoraConfig(**copy.deepcopy(options)))


def peft_outcome(model: Any, options: dict[str, Any]) -> Outcome:
    """`get_nb_trainable_parameters()` of the real PEFT model, or the error PEFT raised."""
    try:
        wrapped = peft_model(model, options)
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as exc:
        return Outcome(error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    trainable, total = wrapped.get_nb_trainable_parameters()
    return Outcome(trainable=trainable, all=total, saved_module_holds_lora=_saved_module_holds_lora(wrapped))


def _saved_module_holds_lora(wrapped: Any) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import ModulesToSaveWrapper

    return any(
        isinstance(inner, BaseTunerLayer)
        for module in wrapped.modules()
        if isinstance(module, ModulesToSaveWrapper)
        for inner in module.original_module.modules()
    )


def estimate_for(inventory: Inventory, options: dict[str, Any]) -> EstimateResponse:
    """The estimate exactly as the web app computes it."""
    request = EstimateRequest(model=inventory.model_id, lora=LoraSettings(**copy.deepcopy(options)))
    return estimate(inventory, request)


def estimator_outcome(inventory: Inventory, options: dict[str, Any]) -> Outcome:
    """The estimator's counts, or its refusal: an EstimateError or a LoraSettings validation error."""
    try:
        result = estimate_for(inventory, options)
    except EstimateError as exc:
        return Outcome(error=f"EstimateError[{exc.field}]: {exc.message}")
    except ValidationError as exc:
        return Outcome(error=f"ValidationError: {exc.errors()[0]['msg']}")
    return Outcome(trainable=result.trainable_params, all=result.all_params)


def assert_estimator_matches_peft(inventory: Inventory, model: Any, options: dict[str, Any]) -> Outcome:
    """Both sides accept the config with identical counts, or both refuse it. Returns PEFT's outcome."""
    expected = peft_outcome(model, options)
    actual = estimator_outcome(inventory, options)
    context = f"model={inventory.model_id} ({inventory.model_type}) options={options!r}"
    if expected.rejected:
        assert actual.rejected, (
            f"PEFT rejects the config ({expected.error}) but the estimator returned "
            f"trainable={actual.trainable:,} all={actual.all:,}; {context}"
        )
    elif expected.saved_module_holds_lora:
        # The one deliberate difference: a modules_to_save entry that selects (by plain suffix, e.g. "attn" for
        # "self_attn") a module containing LoRA targets. PEFT copies the LoRA layers along; Tuneboard refuses.
        assert actual.rejected and "contains LoRA-targeted" in actual.error, (
            f"PEFT saved a module that holds LoRA layers; the estimator should refuse that, got {actual}; {context}"
        )
    else:
        assert not actual.rejected, (
            f"PEFT accepts the config (trainable={expected.trainable:,} all={expected.all:,}) "
            f"but the estimator refused it: {actual.error}; {context}"
        )
        assert (actual.trainable, actual.all) == (expected.trainable, expected.all), (
            f"estimator trainable / all {actual.trainable:,} / {actual.all:,} != "
            f"PEFT {expected.trainable:,} / {expected.all:,}; {context}"
        )
    return expected


def compare_on_catalog_model(model_id: str, options: dict[str, Any]) -> Outcome:
    """Estimator on the committed inventory vs PEFT on the model built from the committed config."""
    model = fresh_meta_model(catalog_config(model_id))
    return assert_estimator_matches_peft(catalog_inventory(model_id), model, options)


def compare_on_config(config: Any, options: dict[str, Any]) -> Outcome:
    """Estimator on a freshly built inventory vs PEFT, both from the same config."""
    return assert_estimator_matches_peft(inventory_for(config), fresh_meta_model(config), options)


# ---------------------------------------------------------------------------------------------------------------
# Module names per architecture family, and small configs: random ones, and catalog configs shrunk

FAMILIES = ("llama", "mistral", "qwen2", "gemma2", "phi3", "gpt2")
# The families only catalog models bring (no random configs of their own; tests/estimator/moe_strategies.py
# makes random mixture-of-experts ones).
CATALOG_ONLY_FAMILIES = ("qwen3", "olmo2", "gemma3_text", "gemma3", "mixtral", "qwen3_moe", "gpt_oss")
LLAMA_LIKE_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Short names of the Linear / Conv1D layers of one block (GPT-2's q_attn exists with cross-attention only).
# For the mixture-of-experts families: the attention projections, then the per-expert names users know, which on
# transformers 5 are no Linear layers (experts are stacked 3-D parameters) and PEFT rewrites for Mixtral and
# Qwen3-MoE; gpt-oss's experts are reached through target_parameters only.
LINEAR_NAMES = {family: LLAMA_LIKE_LINEAR for family in ("llama", "mistral", "qwen2", "gemma2")} | {
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    "gpt2": ("c_attn", "c_proj", "c_fc", "q_attn"),
} | {family: LLAMA_LIKE_LINEAR for family in ("qwen3", "olmo2", "gemma3_text", "gemma3", "qwen3_moe")} | {
    "mixtral": ("q_proj", "k_proj", "v_proj", "o_proj", "w1", "w2", "w3"),
    "gpt_oss": ("q_proj", "k_proj", "v_proj", "o_proj"),
}
_ALL_FAMILIES = FAMILIES + CATALOG_ONLY_FAMILIES
EMBEDDING_NAMES = {family: ("embed_tokens", "lm_head") for family in _ALL_FAMILIES} | {
    "gpt2": ("wte", "wpe", "lm_head")
}
# Modules LoRA cannot adapt: containers and norms (the last one is the final norm).
OTHER_NAMES = {family: ("self_attn", "mlp", "input_layernorm", "norm") for family in _ALL_FAMILIES} | {
    "gpt2": ("attn", "mlp", "ln_1", "ln_f"),
    "olmo2": ("self_attn", "mlp", "post_attention_layernorm", "norm"),  # OLMo 2 normalises after, not before
}
ATTENTION_PARENT = {family: "self_attn" for family in _ALL_FAMILIES} | {"gpt2": "attn"}
LAYERS_PATTERN = {family: "layers" for family in _ALL_FAMILIES} | {"gpt2": "h"}
# Gemma 3 (multimodal, as AutoModelForCausalLM loads it) keeps its decoder under model.language_model.
MODEL_PREFIX = {family: "model" for family in _ALL_FAMILIES} | {"gpt2": "transformer", "gemma3": "model.language_model"}


def small_config(
    family: str,
    *,
    layers: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    intermediate: int,
    vocab: int,
    tie: bool,
    attention_bias: bool = False,
    mlp_bias: bool = False,
    cross_attention: bool = False,
) -> Any:
    """A tiny transformers config of one architecture family."""
    from transformers import Gemma2Config, GPT2Config, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config

    common = dict(
        vocab_size=vocab,
        hidden_size=heads * head_dim,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    if family == "llama":
        return LlamaConfig(**common, head_dim=head_dim, attention_bias=attention_bias, mlp_bias=mlp_bias)
    if family == "mistral":
        return MistralConfig(**common, head_dim=head_dim)
    if family == "qwen2":
        return Qwen2Config(**common)
    if family == "gemma2":
        return Gemma2Config(**common, head_dim=head_dim, attention_bias=attention_bias, query_pre_attn_scalar=head_dim)
    if family == "phi3":
        return Phi3Config(**common, original_max_position_embeddings=64)
    if family == "gpt2":
        return GPT2Config(
            vocab_size=vocab, n_embd=heads * head_dim, n_layer=layers, n_head=heads, n_inner=intermediate,
            n_positions=64, tie_word_embeddings=tie, add_cross_attention=cross_attention, bos_token_id=1,
            eos_token_id=2,
        )
    raise ValueError(f"unknown family {family!r}")


def shrunk_catalog_config(model_id: str, layers: int = 3) -> Any:
    """A catalog model's committed config with every size cut down, keeping its type, tying and bias flags."""
    from transformers import AutoConfig

    raw = json.loads(catalog.config_path(model_id).read_text())
    if "text_config" in raw:  # multimodal: the text model's sizes live in text_config, the vision tower's beside
        raw["text_config"] = _shrunk(raw["text_config"] | {"vocab_size": 96, "head_dim": 8}, layers)
        raw["vision_config"].update(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                    image_size=28, patch_size=14)
        raw.update(mm_tokens_per_image=4, image_token_index=95, boi_token_index=93, eoi_token_index=94)
        raw.pop("eos_token_id", None)
        return AutoConfig.for_model(raw["model_type"]).__class__.from_dict(raw)
    return AutoConfig.for_model(raw["model_type"]).__class__.from_dict(_shrunk(raw, layers))


def _shrunk(raw: dict[str, Any], layers: int) -> dict[str, Any]:
    for key in ("layer_types", "max_window_layers", "rope_scaling", "quantization_config"):
        raw.pop(key, None)
    if raw.get("model_type") == "gpt2":
        raw.update(n_embd=32, n_layer=layers, n_head=4, n_inner=48, n_positions=64, n_ctx=64, vocab_size=96)
    else:
        raw.update(
            hidden_size=32, intermediate_size=48, num_hidden_layers=layers, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=96, max_position_embeddings=64,
        )
        for key, value in (
            ("head_dim", 8), ("query_pre_attn_scalar", 8), ("original_max_position_embeddings", 64),
            # mixture of experts: 4 small experts, 2 a token
            ("moe_intermediate_size", 24), ("num_experts", 4), ("num_local_experts", 4), ("num_experts_per_tok", 2),
            ("experts_per_token", 2),
        ):
            if key in raw:
                raw[key] = value
        if raw.get("sliding_window"):
            raw["sliding_window"] = 32
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if isinstance(raw.get(key), int) and raw[key] >= raw["vocab_size"]:
            raw[key] = 0
        if isinstance(raw.get(key), list):
            raw[key] = [t for t in raw[key] if t < raw["vocab_size"]] or 0
    return raw
