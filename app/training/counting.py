"""Exact trainable / all parameter counts and adapter file size for a LoRA config on an inventory.

The numbers equal `PeftModel.get_nb_trainable_parameters()` and the size of the
`adapter_model.safetensors` that `save_pretrained` writes. Pure stdlib; must not import torch,
peft or `workers`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from app.training.inventory import Inventory, layer_group_name
from app.training.lora_settings import LoraSettings
from app.training.matching import AdaptedModule, Selection
from app.training.modules_to_save import replay

_PREFIX = "base_model.model."


@dataclass(frozen=True, slots=True)
class AdapterTensor:
    name: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        total = 1
        for dim in self.shape:
            total *= dim
        return total


@dataclass(frozen=True, slots=True)
class ModuleGroup:
    """Adapted modules that share a name pattern across layers and the same rank."""

    pattern: str
    type: str
    in_features: int
    out_features: int
    r: int
    count: int
    params_each: int
    layers: tuple[int, ...]

    @property
    def params_total(self) -> int:
        return self.params_each * self.count


@dataclass(frozen=True, slots=True)
class Counts:
    trainable: int
    all: int
    adapter_params: int  # LoRA A/B (+ DoRA magnitudes)
    saved_params: int  # full copies for modules_to_save
    bias_params: int  # base biases set trainable by `bias`
    groups: tuple[ModuleGroup, ...]
    tensors: tuple[AdapterTensor, ...]

    @property
    def trainable_percent(self) -> float:
        return 100 * self.trainable / self.all

    def peft_line(self) -> str:
        """The line `print_trainable_parameters()` prints."""
        return (
            f"trainable params: {self.trainable:,d} || all params: {self.all:,d} || "
            f"trainable%: {self.trainable_percent:.4f}"
        )


def _adapter_tensors(adapted: AdaptedModule, use_dora: bool) -> list[AdapterTensor]:
    module, r = adapted.module, adapted.r
    base = _PREFIX + module.name
    if module.kind == "embedding":
        tensors = [
            AdapterTensor(f"{base}.lora_embedding_A", (r, module.in_features)),
            AdapterTensor(f"{base}.lora_embedding_B", (module.out_features, r)),
        ]
    else:
        tensors = [
            AdapterTensor(f"{base}.lora_A.weight", (r, module.in_features)),
            AdapterTensor(f"{base}.lora_B.weight", (module.out_features, r)),
        ]
    if use_dora:
        tensors.append(AdapterTensor(f"{base}.lora_magnitude_vector", (module.out_features,)))
    return tensors


def _layer_number(name: str) -> int | None:
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


def _groups(adapted: list[AdaptedModule], use_dora: bool) -> tuple[ModuleGroup, ...]:
    grouped: dict[tuple[str, int], list[AdaptedModule]] = {}
    for item in adapted:
        grouped.setdefault((layer_group_name(item.module.name), item.r), []).append(item)
    groups = []
    for (pattern, r), items in grouped.items():
        module = items[0].module
        each = r * (module.in_features + module.out_features) + (module.out_features if use_dora else 0)
        layers = tuple(sorted({n for n in (_layer_number(i.module.name) for i in items) if n is not None}))
        groups.append(
            ModuleGroup(pattern, module.type, module.in_features, module.out_features, r, len(items), each, layers)
        )
    return tuple(groups)


def _freed_biases(inventory: Inventory, settings: LoraSettings, adapted: list[AdaptedModule]) -> set[str]:
    """Base biases that `bias` makes trainable before modules_to_save wraps anything."""
    if settings.bias == "all":
        return {p.full_name for p in inventory.bias_params}
    if settings.bias == "lora_only":
        return {b.full_name for b in (a.module.bias for a in adapted) if b is not None}
    return set()


def count(inventory: Inventory, settings: LoraSettings, selection: Selection) -> Counts:
    """Exact parameter counts, the per-module breakdown and the adapter's tensors."""
    files: dict[str, tuple[int, ...]] = {}
    adapter_params = 0
    for item in selection.adapted:
        for tensor in _adapter_tensors(item, settings.use_dora):
            files[tensor.name] = tensor.shape
            adapter_params += tensor.numel

    # Full copies, the biases `bias` frees, and how wrapping freezes the originals they sit in.
    saves = replay(
        inventory,
        settings.modules_to_save if selection.saved else None,
        _freed_biases(inventory, settings, selection.adapted),
    )
    adapted_names = {a.module.name for a in selection.adapted}
    if settings.bias == "all":
        for key, shape in saves.bias_keys:
            files[_PREFIX + _adapted_bias_name(key, adapted_names)] = shape
    elif settings.bias == "lora_only":
        for item in selection.adapted:
            if item.module.bias is not None:
                files[f"{_PREFIX}{item.module.name}.base_layer.bias"] = item.module.bias.shape
    for key, shape in saves.saved_tensors:
        files[_PREFIX + key] = shape
    for tensor in _saved_embedding_weights(inventory, selection):
        files[tensor.name] = tensor.shape

    return Counts(
        trainable=adapter_params + saves.trainable_copy_params + saves.trainable_base_params,
        all=inventory.base_params + adapter_params + saves.copy_params,
        adapter_params=adapter_params,
        saved_params=saves.trainable_copy_params,
        bias_params=saves.trainable_base_params,
        groups=_groups(selection.adapted, settings.use_dora),
        tensors=tuple(AdapterTensor(name, shape) for name, shape in files.items()),
    )


def _adapted_bias_name(name: str, adapted_names: set[str]) -> str:
    # An adapted layer keeps its original weights under `base_layer`.
    owner = name.rsplit(".", 1)[0]
    if owner in adapted_names:
        return f"{owner}.base_layer.bias"
    return name


# peft.utils.constants.EMBEDDING_LAYER_NAMES
_EMBEDDING_LAYER_NAMES = ("embed_tokens", "lm_head")
_EMBEDDING_NAME = re.compile(rf"(.*\.)?({'|'.join(_EMBEDDING_LAYER_NAMES)})$")


def _embedding_targeted(inventory: Inventory, targets: frozenset[str] | str) -> bool:
    # get_peft_model_state_dict's save_embedding_layers="auto" test; 'all-linear' is already expanded here.
    if isinstance(targets, str):
        pattern = re.compile(targets)
        return any(_EMBEDDING_NAME.match(m.name) and pattern.fullmatch(m.name) for m in inventory.modules)
    return any(n in targets for n in _EMBEDDING_LAYER_NAMES)


def _saved_embedding_weights(inventory: Inventory, selection: Selection) -> list[AdapterTensor]:
    # save_pretrained's save_embedding_layers="auto" also stores the base weights of adapted embedding layers
    # when target_modules names embed_tokens or lm_head.
    if not _embedding_targeted(inventory, selection.targets):
        return []
    adapted = {a.module.name: a.module for a in selection.adapted}
    tensors = []
    for name in dict.fromkeys((inventory.input_embedding, inventory.output_embedding)):
        module = adapted.get(name)
        if module is not None:
            for param in module.params:
                local = param.full_name.rpartition(".")[2]
                tensors.append(AdapterTensor(f"{_PREFIX}{name}.base_layer.{local}", param.shape))
    return tensors


# The fixed parts of the JSON header save_pretrained writes: {"__metadata__":{"format":"pt"}, then per tensor
# ,"name":{"dtype":"F32","shape":[..],"data_offsets":[a,b]} and a closing brace.
_METADATA_JSON_LENGTH = len('{"__metadata__":{"format":"pt"}}')
_TENSOR_JSON_LENGTH = len(',"":{"dtype":"","shape":[],"data_offsets":[,]}')


def _json_string_length(text: str) -> int:
    if text.isascii() and '"' not in text and "\\" not in text and text.isprintable():
        return len(text) + 2
    return len(json.dumps(text))


def safetensors_bytes(tensors: tuple[AdapterTensor, ...], bytes_per_value: int) -> int:
    """Size of a safetensors file holding these tensors: 8-byte length, JSON header padded to 8, data.

    The header's length is added up field by field rather than by serialising it: building that JSON for
    a 70B model's thousand tensors was most of the estimate's time and garbage.
    """
    dtype_length = len({4: "F32", 2: "BF16"}[bytes_per_value])
    header_len = _METADATA_JSON_LENGTH
    offset = 0
    for tensor in sorted(tensors, key=lambda t: t.name):
        size = tensor.numel * bytes_per_value
        shape_length = sum(len(str(d)) for d in tensor.shape) + max(0, len(tensor.shape) - 1)
        header_len += (_TENSOR_JSON_LENGTH + _json_string_length(tensor.name) - 2 + dtype_length + shape_length
                       + len(str(offset)) + len(str(offset + size)))
        offset += size
    header_len += -header_len % 8
    return 8 + header_len + offset
