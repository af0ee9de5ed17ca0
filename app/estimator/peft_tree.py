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


def _wrapper_paths(name: str, depth: int) -> list[str]:
    """Paths of the LoRA layers stacked at `name`, outermost first: each parameter PEFT adapts directly on one
    module wraps the wrapper before it, which becomes its base_layer."""
    return [name + f".{BASE_LAYER}" * level for level in range(depth)]


def injected_name(name: str, adapted: dict[str, int]) -> str:
    """Where a base module's (or parameter's) path leads after injection: under an adapted module it moves below
    that module's stack of LoRA layers, one base_layer per layer."""
    parts = name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        depth = adapted.get(".".join(parts[:end]))
        if depth:
            return ".".join(parts[:end] + [BASE_LAYER] * depth + parts[end:])
    return name


def injected_modules(inventory: Inventory, adapted: dict[str, int], use_dora: bool) -> Iterator[TreeModule]:
    """Every module of the LoRA-injected model, named as `named_modules()` names them, in its order.

    `adapted` maps each adapted module to the number of LoRA layers stacked on it: 1 for a target module, one per
    adapted parameter for `target_parameters` (PEFT's ParamWrapper, which refuses DoRA)."""
    pending: list[tuple[str, Module, list[str]]] = []  # LoRA stacks whose inserted containers follow the original
    for module in inventory.modules:
        while pending and not module.name.startswith(pending[-1][0] + "."):
            yield from _close(*pending.pop(), use_dora)
        depth = adapted.get(module.name, 0) if module.name else 0
        if depth:
            wrappers = _wrapper_paths(module.name, depth)
            for path in wrappers:
                yield TreeModule(path, f"LoRA {module.type}", None, lora_layer=path)
            original = module.name + f".{BASE_LAYER}" * depth
            yield TreeModule(original, module.type, replace(module, name=original))
            pending.append((module.name, module, wrappers))
            continue
        name = injected_name(module.name, adapted) if pending else module.name
        yield TreeModule(name, module.type, module if name == module.name else replace(module, name=name))
    while pending:
        yield from _close(*pending.pop(), use_dora)


def _close(name: str, module: Module, wrappers: list[str], use_dora: bool) -> Iterator[TreeModule]:
    # Pre-order: the innermost LoRA layer's containers come right after the original module's subtree.
    for path in reversed(wrappers):
        yield from _inserted(path, module, use_dora)
