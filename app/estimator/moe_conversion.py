"""PEFT's rewrite of a LoRA config for mixture-of-experts models whose experts transformers 5 fused.

On transformers 5, Mixtral-style and Qwen-MoE-style models hold each layer's experts as stacked 3-D
parameters (`experts.gate_up_proj`, `experts.down_proj`) and the router as a custom module, where older
checkpoints had one `nn.Linear` per expert (`w1`/`w2`/`w3` or `gate_proj`/`up_proj`/`down_proj`) and a
Linear `gate`. Before matching anything, peft 0.21 (`_convert_peft_config_moe`) moves the old names from
`target_modules` to `target_parameters`, doubles rank and alpha for a fused pair, resolves a regex or
"all-linear" to leaf names first, and drops the architecture's default targets. This module replays that
on the inventory's record of the rules. Pure stdlib; must not import torch, peft or `workers`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from app.estimator.inventory import Inventory
from app.estimator.lora_settings import LoraSettings


class ConversionRefused(ValueError):
    """PEFT refuses to convert these targets (one half of a fused pair)."""


def _resolved_string_targets(
    inventory: Inventory, settings: LoraSettings, mapping: dict[str, str], matches: Callable[[str], bool]
) -> set[str]:
    """peft's `_resolve_string_target_modules`: the leaf names a regex or "all-linear" stands for."""
    if settings.is_all_linear:
        return {name.rsplit(".", 1)[-1] for name in inventory.linear_names} | set(mapping)
    module_keys = [m.name for m in inventory.modules]
    param_keys = [p.full_name for m in inventory.modules for p in m.params if p.alias_of is None]
    matched = {key.rsplit(".", 1)[-1] for key in module_keys + param_keys if matches(key)}
    # The pre-fusion expert names live inside a stacked parameter, so a regex naming them matches no real key:
    # probe the old name under each container that holds the new one.
    containers: dict[str, list[str]] = {}
    for key in param_keys:
        container, _, leaf = key.rpartition(".")
        containers.setdefault(leaf, []).append(container)
    for old_name, new_name in mapping.items():
        if old_name in matched:
            continue
        if any(matches(f"{container}.{old_name}") for container in containers.get(new_name, ())):
            matched.add(old_name)
    return matched


def convert(inventory: Inventory, settings: LoraSettings, matches: Callable[[str], bool]) -> LoraSettings:
    """The settings PEFT actually applies to this model; unchanged for models it does not convert.

    `matches(key)` is PEFT's `check_target_module_exists` for the unconverted settings."""
    rules = inventory.peft_moe_conversion
    if not rules:
        return settings
    mapping: dict[str, str] = rules["mapping"]
    fused: dict[str, list[str]] = rules["fused"]
    targets = settings.target_modules
    if isinstance(targets, str):
        resolved = _resolved_string_targets(inventory, settings, mapping, matches)
        if not resolved:
            return settings  # nothing matched: PEFT leaves it for its usual "not found" error
        targets = sorted(resolved)

    rank_pattern = dict(settings.rank_pattern)
    alpha_pattern = dict(settings.alpha_pattern)
    parameters = list(dict.fromkeys(settings.target_parameters or []))
    remaining: list[str] = []
    present: dict[str, set[str]] = {new_name: set() for new_name in fused}
    for target in dict.fromkeys(targets or []):
        found = next(((old, new) for old, new in mapping.items() if target == old or target.endswith(f".{old}")),
                     None)
        if found is None:
            remaining.append(target)
            continue
        old_name, new_name = found
        if new_name not in parameters:
            parameters.append(new_name)
        if new_name in fused:
            present.setdefault(new_name, set()).add(old_name)

    for new_name, required in fused.items():
        have = present.get(new_name, set())
        if 0 < len(have) < len(required):
            missing = ", ".join(sorted(set(required) - have))
            raise ConversionRefused(
                f"PEFT cannot convert target(s) {', '.join(sorted(have))} without also targeting {missing}: on "
                f"transformers 5 they are fused into the stacked expert parameter {new_name!r}. Name both, or "
                f"target the parameter itself with target_parameters=[{new_name!r}]."
            )
        if len(have) == len(required) > 1:
            key = rf".*\.{re.escape(new_name)}"
            rank_pattern[key] = settings.r * len(required)
            alpha_pattern[key] = settings.lora_alpha * len(required)

    return settings.model_copy(update={
        "target_modules": remaining,
        "target_parameters": parameters,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
    })
