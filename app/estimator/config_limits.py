"""Sane bounds on the sizes a model's config.json declares, checked before anything is built from it.

Building a model on the meta device costs no weights but one Python object per module: a config that
declares a million layers or experts would take the host's memory and minutes. The bounds sit far above
every real model (Llama 3.1 405B: 126 layers, hidden 16,384; the largest vocabularies ~262k; DeepSeek-V3:
256 routed experts). Pure stdlib: must not import torch, transformers, peft or `workers`.
"""

from __future__ import annotations

from typing import Any

_LAYERS, _HIDDEN, _FFN, _VOCAB, _HEADS, _EXPERTS = 1024, 65_536, 262_144, 2_097_152, 1024, 4096
# The field names transformers' configs use for each size (Llama-style first, then GPT-2, T5, OPT, MoE names).
LIMITS: dict[str, int] = {
    "num_hidden_layers": _LAYERS, "n_layer": _LAYERS, "num_layers": _LAYERS, "n_layers": _LAYERS,
    "hidden_size": _HIDDEN, "n_embd": _HIDDEN, "d_model": _HIDDEN,
    "intermediate_size": _FFN, "n_inner": _FFN, "ffn_dim": _FFN, "d_ff": _FFN, "moe_intermediate_size": _FFN,
    "vocab_size": _VOCAB,
    "num_attention_heads": _HEADS, "n_head": _HEADS, "num_key_value_heads": _HEADS,
    "num_experts": _EXPERTS, "num_local_experts": _EXPERTS, "n_routed_experts": _EXPERTS,
    "moe_num_experts": _EXPERTS,
}
_LAYER_FIELDS = frozenset({"num_hidden_layers", "n_layer", "num_layers", "n_layers"})
_EXPERT_FIELDS = frozenset({"num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"})
# Layers times experts is the number of expert blocks the build creates (DeepSeek-V3: 61 x 256).
MAX_EXPERT_BLOCKS = 131_072
# The line `python -m workers.inventory` prints when it refuses a config, so the web app can tell it apart.
FAILURE_PREFIX = "ConfigTooLargeError:"


class ConfigTooLarge(ValueError):
    """A config size above its bound; `field` names it (dotted for nested configs such as text_config)."""

    def __init__(self, field: str, value: float, limit: int):
        self.field, self.value, self.limit = field, value, limit
        super().__init__(f"the model's config.json sets {field} = {value:,}, above the {limit:,} Tuneboard "
                         "accepts (no real model comes close)")


def _sizes(config: dict[str, Any], prefix: str = "", depth: int = 0):
    for key, value in config.items():
        if isinstance(value, dict) and depth < 3:
            yield from _sizes(value, f"{prefix}{key}.", depth + 1)
        elif key in LIMITS and isinstance(value, int | float) and not isinstance(value, bool):
            yield prefix, key, value


def check_config_size(config: dict[str, Any]) -> None:
    """Raise ConfigTooLarge naming the first size above its bound; a config within every bound passes."""
    layers_by_prefix: dict[str, float] = {}
    experts_by_prefix: dict[str, float] = {}
    for prefix, key, value in _sizes(config):
        if value > LIMITS[key]:
            raise ConfigTooLarge(prefix + key, value, LIMITS[key])
        if key in _LAYER_FIELDS:
            layers_by_prefix[prefix] = max(value, layers_by_prefix.get(prefix, 0))
        if key in _EXPERT_FIELDS:
            experts_by_prefix[prefix] = max(value, experts_by_prefix.get(prefix, 0))
    for prefix, experts in experts_by_prefix.items():
        blocks = layers_by_prefix.get(prefix, 1) * experts
        if blocks > MAX_EXPERT_BLOCKS:
            raise ConfigTooLarge(f"{prefix}layers x experts", blocks, MAX_EXPERT_BLOCKS)
