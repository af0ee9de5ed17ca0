"""PEFT's `modules_to_save` wrapping replayed on an inventory: the full copies it makes, which parameters end up
trainable, and the tensors `save_pretrained` writes for the saved modules and freed biases.

Mirrors peft 0.21 `_set_trainable`, `ModulesToSaveWrapper` and `get_peft_model_state_dict` on a small model
of the module tree. The replay matters when entries nest (GPT-2's "attn" also hits "attn.c_attn", or
["mlp", "up_proj"]): PEFT then wraps the inner module again inside the outer copy, or only refreshes the
outer wrapper when it is the inner module's grandparent, and each case changes the counts differently.
Pure stdlib; must not import torch, peft or `workers`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.estimator.inventory import Inventory
from app.estimator.peft_tree import ADAPTER_NAME, BASE_LAYER, injected_modules, injected_name


class _Tensor:
    __slots__ = ("shape", "numel", "trainable", "is_copy")

    def __init__(self, shape: tuple[int, ...], numel: int, trainable: bool = False, is_copy: bool = False):
        self.shape = shape
        self.numel = numel
        self.trainable = trainable
        self.is_copy = is_copy


class _Node:
    """One module: its registered children and parameters; `copy` is set on a ModulesToSaveWrapper."""

    __slots__ = ("children", "params", "copy")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.params: dict[str, _Tensor] = {}
        self.copy: _Node | None = None


def _child(node: _Node, name: str) -> _Node | None:
    # nn.Module looks in its registered children first; a wrapper forwards other names to its active copy.
    found = node.children.get(name)
    if found is None and node.copy is not None:
        return _child(node.copy, name)
    return found


def _resolve(root: _Node, parts: list[str]) -> _Node | None:
    node: _Node | None = root
    for part in parts:
        node = _child(node, part)
        if node is None:
            return None
    return node


def _named_modules(node: _Node, prefix: str = "", seen: set[int] | None = None):
    """`named_modules()`: every module once, at the first path that reaches it."""
    seen = set() if seen is None else seen
    if id(node) in seen:
        return
    seen.add(id(node))
    yield prefix, node
    for name, child in node.children.items():
        yield from _named_modules(child, f"{prefix}.{name}" if prefix else name, seen)


def _state_dict(node: _Node, prefix: str = ""):
    """`state_dict()` keys: every path, shared modules and tied tensors included more than once."""
    for name, tensor in node.params.items():
        yield f"{prefix}{name}", tensor
    for name, child in node.children.items():
        yield from _state_dict(child, f"{prefix}{name}.")


def _unique_tensors(node: _Node) -> list[_Tensor]:
    seen: dict[int, _Tensor] = {}
    for _, module in _named_modules(node):
        for tensor in module.params.values():
            seen.setdefault(id(tensor), tensor)
    return list(seen.values())


def _deepcopy(node: _Node, memo: dict[int, object]) -> _Node:
    if id(node) in memo:
        return memo[id(node)]  # type: ignore[return-value]
    clone = _Node()
    memo[id(node)] = clone
    for name, tensor in node.params.items():
        if id(tensor) not in memo:
            memo[id(tensor)] = _Tensor(tensor.shape, tensor.numel, is_copy=True)
        clone.params[name] = memo[id(tensor)]  # type: ignore[assignment]
    for name, child in node.children.items():
        clone.children[name] = _deepcopy(child, memo)
    if node.copy is not None:
        clone.copy = clone.children["modules_to_save"].children[ADAPTER_NAME]
    return clone


def _set_trainable(node: _Node, trainable: bool) -> None:
    for tensor in _unique_tensors(node):
        tensor.trainable = trainable


def _wrap(target: _Node) -> _Node:
    """ModulesToSaveWrapper(target): freeze the original, add a trainable deep copy."""
    copy = _deepcopy(target, {})
    _set_trainable(target, False)
    _set_trainable(copy, True)
    holder = _Node()
    holder.children[ADAPTER_NAME] = copy
    wrapper = _Node()
    wrapper.children["original_module"] = target
    wrapper.children["modules_to_save"] = holder
    wrapper.copy = copy
    return wrapper


def _refresh(wrapper: _Node) -> None:
    """`wrapper.update(adapter)` on an existing wrapper: original frozen, the whole copy trainable again."""
    _set_trainable(wrapper.children["original_module"], False)
    _set_trainable(wrapper.copy, True)  # type: ignore[arg-type]


def _build_tree(inventory: Inventory, trainable: set[str], adapted: dict[str, int]) -> _Node:
    nodes: dict[str, _Node] = {}  # base module name -> the node holding its parameters and children
    tensors: dict[str, _Tensor] = {}
    for module in inventory.modules:
        node = _Node()
        nodes[module.name] = node
        if module.name:
            parent, _, short = module.name.rpartition(".")
            # LoRA layers take an adapted module's place, each keeping what it replaced as its base_layer. Their
            # LoRA tensors stay out of this tree: the adapter's own counts come from elsewhere.
            place = node
            for _ in range(adapted.get(module.name, 0)):
                lora_layer = _Node()
                lora_layer.children[BASE_LAYER] = place
                place = lora_layer
            nodes[parent].children[short] = place
        for param in module.params:
            if param.alias_of is not None:
                tensor = tensors[param.alias_of]
            else:
                tensor = _Tensor(param.shape, param.numel, trainable=param.full_name in trainable)
                tensors[param.full_name] = tensor
            node.params[param.full_name.rpartition(".")[2]] = tensor
    return nodes[""]


def remove_adapter_name(key: str) -> str:
    """peft's `_remove_adapter_name_from_state_dict_key`: drop a trailing '.default' before the last part."""
    if "." not in key:
        return key
    if key.endswith(f".{ADAPTER_NAME}"):
        return key.removesuffix(f".{ADAPTER_NAME}")
    head, _, last = key.rpartition(".")
    head = re.sub(re.escape(f".{ADAPTER_NAME}") + r"$", "", head)
    return f"{head}.{last}"


@dataclass(frozen=True, slots=True)
class Replay:
    wrapped: tuple[str, ...]  # modules PEFT wraps, in the order it wraps them
    copy_params: int  # parameters the full copies add to the model
    trainable_copy_params: int  # of those, the ones left trainable
    trainable_base_params: int  # base parameters left trainable (biases freed by `bias`)
    bias_keys: tuple[tuple[str, tuple[int, ...]], ...]  # every state_dict key ending in "bias", file naming
    saved_tensors: tuple[tuple[str, tuple[int, ...]], ...]  # what the wrappers contribute to the file


def replay(
    inventory: Inventory,
    entries: list[str] | None,
    initially_trainable: set[str],
    adapted: dict[str, int],
    use_dora: bool,
) -> Replay:
    """Wrap what `modules_to_save` selects exactly as PEFT does, on the model with LoRA layers in place,
    starting from the base parameters that `bias` left trainable; names in the result are relative to the
    base model. Entries PEFT refuses must have been refused before (`matching.select_modules`)."""
    if not entries:
        # Nothing to wrap: the base model as it is, with the freed biases trainable.
        return Replay(
            wrapped=(),
            copy_params=0,
            trainable_copy_params=0,
            trainable_base_params=sum(
                p.numel for m in inventory.modules for p in m.params
                if p.alias_of is None and p.full_name in initially_trainable
            ) if initially_trainable else 0,
            bias_keys=tuple((injected_name(key, adapted), shape) for key, shape in inventory.bias_keys),
            saved_tensors=(),
        )
    root = _build_tree(inventory, initially_trainable, adapted)
    wrapped: list[str] = []
    for tree_module in injected_modules(inventory, adapted, use_dora):  # named_modules() order, as PEFT walks it
        key = tree_module.name
        if not key or not any(key.endswith(entry) for entry in entries):
            continue
        parts = key.split(".")
        parent = _resolve(root, parts[:-1])
        grandparent = _resolve(root, parts[:-2])
        target = _resolve(root, parts)
        if parent is None or target is None:
            continue
        if grandparent is not None and grandparent.copy is not None:
            # PEFT's check for an already-wrapped layer looks at the grandparent (a transformers-5 workaround):
            # it refreshes that wrapper, making its whole copy trainable again, and leaves the target unwrapped.
            _refresh(grandparent)
        elif target.copy is not None:
            _refresh(target)
        else:
            parent.children[parts[-1]] = _wrap(target)
            wrapped.append(key)

    tensors = _unique_tensors(root)
    saved: dict[str, tuple[int, ...]] = {}
    for path, node in _named_modules(root):
        if node.copy is not None:
            for key, tensor in _state_dict(node.copy):
                saved[remove_adapter_name(f"{path}.{key}")] = tensor.shape
    bias_keys = tuple(
        (remove_adapter_name(key), tensor.shape)
        for key, tensor in _state_dict(root)
        if key == "bias" or key.endswith(".bias")
    )
    return Replay(
        wrapped=tuple(wrapped),
        copy_params=sum(t.numel for t in tensors if t.is_copy),
        trainable_copy_params=sum(t.numel for t in tensors if t.is_copy and t.trainable),
        trainable_base_params=sum(t.numel for t in tensors if not t.is_copy and t.trainable),
        bias_keys=bias_keys,
        saved_tensors=tuple(saved.items()),
    )
