"""Exact trainable / all parameter counts and adapter file size for a LoRA config on an inventory.

The numbers equal `PeftModel.get_nb_trainable_parameters()` and the size of the
`adapter_model.safetensors` that `save_pretrained` writes. Pure stdlib; must not import torch,
peft or `workers`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from app.estimator.inventory import Inventory, Param
from app.estimator.lora_settings import LoraSettings
from app.estimator.matching import AdaptedModule, Selection
from app.estimator.modules_to_save import replay
from app.estimator.parameter_targets import AdaptedParameter
from app.estimator.peft_tree import injected_name

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
    experts: int = 1  # a stacked expert weight adapted through target_parameters: LoRA of rank r per expert
    parameter: bool = False  # adapted through target_parameters (a ParamWrapper), not target_modules

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
    files: dict[str, tuple[int, ...]]  # the adapter file's tensors: name -> shape

    @property
    def tensors(self) -> tuple[AdapterTensor, ...]:
        return tuple(AdapterTensor(name, shape) for name, shape in self.files.items())

    @property
    def trainable_percent(self) -> float:
        return 100 * self.trainable / self.all

    def peft_line(self) -> str:
        """The line `print_trainable_parameters()` prints."""
        return (
            f"trainable params: {self.trainable:,d} || all params: {self.all:,d} || "
            f"trainable%: {self.trainable_percent:.4f}"
        )


def _adapter_files(adapted: AdaptedModule, use_dora: bool, files: dict[str, tuple[int, ...]]) -> None:
    module, r = adapted.module, adapted.r
    base = _PREFIX + module.name
    if module.kind == "embedding":
        files[base + ".lora_embedding_A"] = (r, module.in_features)
        files[base + ".lora_embedding_B"] = (module.out_features, r)
    else:
        files[base + ".lora_A.weight"] = (r, module.in_features)
        files[base + ".lora_B.weight"] = (module.out_features, r)
    if use_dora:
        files[base + ".lora_magnitude_vector"] = (module.out_features,)


def _adapter_params(adapted: AdaptedModule, use_dora: bool) -> int:
    module = adapted.module
    return adapted.r * (module.in_features + module.out_features) + (module.out_features if use_dora else 0)


def _groups(adapted: list[AdaptedModule], use_dora: bool) -> tuple[ModuleGroup, ...]:
    grouped: dict[tuple[str, int], list[AdaptedModule]] = {}
    for item in adapted:
        grouped.setdefault((item.module.group_name, item.r), []).append(item)
    groups = []
    for (pattern, r), items in grouped.items():
        module = items[0].module
        layers = tuple(sorted({i.module.layer for i in items if i.module.layer is not None}))
        groups.append(ModuleGroup(pattern, module.type, module.in_features, module.out_features, r, len(items),
                                  _adapter_params(items[0], use_dora), layers))
    return tuple(groups)


def _parameter_groups(selection: Selection) -> tuple[ModuleGroup, ...]:
    grouped: dict[tuple[str, int], list[AdaptedParameter]] = {}
    for item in selection.adapted_parameters:
        grouped.setdefault((f"{item.module.group_name}.{item.name}", item.r), []).append(item)
    groups = []
    for (pattern, r), items in grouped.items():
        first = items[0]
        layers = tuple(sorted({i.module.layer for i in items if i.module.layer is not None}))
        groups.append(ModuleGroup(pattern, f"{first.module.type}.{first.name}", first.in_features,
                                  first.out_features, r, len(items), first.params, layers, first.experts,
                                  parameter=True))
    return tuple(groups)


def _parameter_files(item: AdaptedParameter, files: dict[str, tuple[int, ...]]) -> None:
    base = _PREFIX + item.wrapper_path
    files[base + ".lora_A.weight"] = (item.r * item.experts, item.in_features)
    files[base + ".lora_B.weight"] = (item.out_features, item.r * item.experts)


def _lora_biases(inventory: Inventory, selection: Selection) -> list[Param]:
    """Biases of the modules LoRA wraps (module or parameter targets), which bias="lora_only" trains."""
    return [bias for name in selection.lora_stacks if (bias := inventory.by_name[name].bias) is not None]


def _freed_biases(inventory: Inventory, settings: LoraSettings, selection: Selection) -> set[str]:
    """Base biases that `bias` makes trainable before modules_to_save wraps anything."""
    if settings.bias == "all":
        return {p.full_name for p in inventory.bias_params}
    if settings.bias == "lora_only":
        return {b.full_name for b in _lora_biases(inventory, selection)}
    return set()


def count(inventory: Inventory, settings: LoraSettings, selection: Selection) -> Counts:
    """Exact parameter counts, the per-module breakdown and the adapter's tensors."""
    files: dict[str, tuple[int, ...]] = {}
    use_dora = settings.use_dora
    groups = _groups(selection.adapted, use_dora) + _parameter_groups(selection)
    adapter_params = sum(g.params_total for g in groups)
    for item in selection.adapted:
        _adapter_files(item, use_dora, files)
    for parameter in selection.adapted_parameters:
        _parameter_files(parameter, files)

    # Full copies, the biases `bias` frees, and how wrapping freezes the originals they sit in.
    stacks = selection.lora_stacks
    saves = replay(
        inventory,
        settings.modules_to_save if selection.saved else None,
        _freed_biases(inventory, settings, selection),
        stacks,
        use_dora,
    )
    if settings.bias == "all":
        for key, shape in saves.bias_keys:
            files[_PREFIX + key] = shape
    elif settings.bias == "lora_only":
        for bias in _lora_biases(inventory, selection):
            files[_PREFIX + injected_name(bias.full_name, stacks)] = bias.shape
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
        groups=groups,
        files=files,
    )


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
_DTYPE_NAMES = {4: "F32", 2: "BF16"}


def _json_strings_length(texts: list[str]) -> int:
    joined = "".join(texts)
    if joined.isascii() and '"' not in joined and "\\" not in joined and joined.isprintable():
        return len(joined) + 2 * len(texts)  # nothing to escape: each string is its text between two quotes
    return sum(len(json.dumps(text)) for text in texts)


def safetensors_sizes(files: dict[str, tuple[int, ...]], widths: tuple[int, ...] = (4, 2)) -> tuple[int, ...]:
    """Sizes of safetensors files holding these tensors at each byte width: 8-byte length, JSON header padded
    to 8, data.

    The header's length is added up field by field rather than by serialising it: building that JSON for
    a 70B model's thousand tensors was most of the estimate's time and garbage. Only the offsets differ
    between widths, so everything else is summed once.
    """
    names = sorted(files)
    shape_text: dict[tuple[int, ...], int] = {}
    numels = []
    fixed = _METADATA_JSON_LENGTH + (_TENSOR_JSON_LENGTH - 2) * len(names) + _json_strings_length(names)
    for name in names:
        shape = files[name]
        length = shape_text.get(shape)
        if length is None:
            length = shape_text[shape] = len(",".join(map(str, shape)))
        fixed += length
        numel = 1
        for dim in shape:
            numel *= dim
        numels.append(numel)
    sizes = []
    for width in widths:
        header = fixed + len(_DTYPE_NAMES[width]) * len(names)
        offset, offset_digits = 0, 1
        for numel in numels:
            offset += numel * width
            end_digits = len(str(offset))
            header += offset_digits + end_digits  # "data_offsets":[start,end]; this end is the next start
            offset_digits = end_digits
        header += -header % 8
        sizes.append(8 + header + offset)
    return tuple(sizes)

