"""The module tree as PEFT's `modules_to_save` matching sees it: the base model after LoRA injection.

`_set_trainable` runs after the LoRA layers are in place, so its plain-suffix matching also reaches what
PEFT inserted: each adapted module becomes a LoRA layer holding the original as `base_layer` and its own
`lora_dropout`, `lora_A`, `lora_B`, `lora_embedding_A`, `lora_embedding_B` and `lora_magnitude_vector`
containers, each with an entry named after the adapter. Mirrors peft 0.21's `LoraLayer`. Pure stdlib; must
not import torch, peft or `workers`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from app.estimator.inventory import Inventory, Module

ADAPTER_NAME = "default"
BASE_LAYER = "base_layer"
# Types a ModulesToSaveWrapper refuses to wrap (they have no forward of their own).
CONTAINER_TYPES = frozenset({"ModuleDict", "ModuleList", "ParameterDict", "ParameterList"})


@dataclass(frozen=True, slots=True)
class TreeModule:
    """One module of the injected tree, in `named_modules()` order."""

    name: str
    type: str
    module: Module | None  # the base module living at this path (an adapted layer's original sits at base_layer)
    lora_layer: str | None = None  # set on the LoRA layer itself and on every module PEFT inserted into one
    grandparent_is_lora: bool = False  # an adapter-named entry of a LoRA container


def _inserted(owner: str, module: Module, use_dora: bool) -> list[TreeModule]:
    """The containers a LoRA layer adds after its base layer, with their adapter-named entries."""
    embedding = module.kind == "embedding"
    entries = [
        ("lora_dropout", "ModuleDict", "Dropout"),
        ("lora_A", "ModuleDict", None if embedding else "Linear"),
        ("lora_B", "ModuleDict", None if embedding else "Linear"),
        ("lora_embedding_A", "ParameterDict", None),  # holds parameters, not modules
        ("lora_embedding_B", "ParameterDict", None),
        ("lora_magnitude_vector", "ModuleDict", "DoraLayer" if use_dora else None),
    ]
    tree = []
    for name, container_type, child_type in entries:
        tree.append(TreeModule(f"{owner}.{name}", container_type, None, lora_layer=owner))
        if child_type is not None:
            tree.append(TreeModule(f"{owner}.{name}.{ADAPTER_NAME}", child_type, None, lora_layer=owner,
                                   grandparent_is_lora=True))
    return tree


def injected_name(name: str, adapted: set[str]) -> str:
    """Where a base module's path leads after injection: under an adapted layer it moves into base_layer."""
    parts = name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:end]) in adapted:
            return ".".join(parts[:end] + [BASE_LAYER] + parts[end:])
    return name


def injected_modules(inventory: Inventory, adapted: set[str], use_dora: bool) -> Iterator[TreeModule]:
    """Every module of the LoRA-injected model, named as `named_modules()` names them, in its order."""
    pending: list[tuple[str, Module]] = []  # LoRA layers whose inserted containers follow their base subtree
    for module in inventory.modules:
        while pending and not module.name.startswith(pending[-1][0] + "."):
            yield from _inserted(*pending.pop(), use_dora)
        if module.name in adapted:
            yield TreeModule(module.name, f"LoRA {module.type}", None, lora_layer=module.name)
            base_name = f"{module.name}.{BASE_LAYER}"
            yield TreeModule(base_name, module.type, replace(module, name=base_name))
            pending.append((module.name, module))
            continue
        name = injected_name(module.name, adapted) if pending else module.name
        yield TreeModule(name, module.type, module if name == module.name else replace(module, name=name))
    while pending:
        yield from _inserted(*pending.pop(), use_dora)
