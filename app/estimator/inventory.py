"""Module inventories as the estimator sees them: every module of a model with its type and parameters.

Owns loading the JSON that `workers.inventory` writes. Pure stdlib: must not import torch,
transformers, peft, or anything from `workers`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

INVENTORY_FORMAT = 2  # 2: MoE conversion rules and transposed expert weights

# Kinds the estimator counts. PEFT also wraps Conv and MultiheadAttention, which LLMs do not use.
ADAPTABLE_KINDS = frozenset({"linear", "conv1d", "embedding"})
LINEAR_KINDS = frozenset({"linear", "conv1d"})

_LAYER_INDEX = re.compile(r"\.(\d+)(?=\.|$)")


@dataclass(frozen=True, slots=True)
class Param:
    full_name: str
    shape: tuple[int, ...]
    alias_of: str | None  # set when this tensor is tied to an earlier one

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_bias(self) -> bool:
        return self.full_name == "bias" or self.full_name.endswith(".bias")


@dataclass(slots=True)
class Module:
    name: str
    type: str
    kind: str
    in_features: int | None
    out_features: int | None
    params: tuple[Param, ...]
    transposed: bool = False  # stacked expert weights stored (experts, in, out) rather than (experts, out, in)
    subtree_params: int = 0  # unique parameters under this module, i.e. what a deep copy holds
    children: list[str] = field(default_factory=list)
    # Derived from the name once at load, because every estimate asks for them on every adapted module.
    group_name: str = ""  # the name with its layer index as '*'
    layer: int | None = None  # the first numbered part of the name

    @property
    def short_name(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    @property
    def bias(self) -> Param | None:
        return next((p for p in self.params if p.full_name.endswith(".bias") and p.alias_of is None), None)

    @property
    def weight_numel(self) -> int:
        return sum(p.numel for p in self.params if p.full_name.endswith(".weight"))


class Inventory:
    """A model's modules in `named_modules()` order, with derived totals precomputed once."""

    def __init__(self, data: dict[str, Any]):
        if data.get("format") != INVENTORY_FORMAT:
            raise ValueError(f"inventory format {data.get('format')!r} is not {INVENTORY_FORMAT}")
        self.model_id: str = data["model_id"]
        self.architecture: str = data["architecture"]
        self.model_type: str = data["model_type"]
        self.config: dict[str, Any] = data["config"]
        self.peft_default_targets: list[str] | None = data.get("peft_default_targets")
        # PEFT's transformers-5 rewrite of LoRA configs for this model type: {"mapping": old name -> new target,
        # "fused": stacked parameter -> the old names fused into it}, or None.
        self.peft_moe_conversion: dict[str, Any] | None = data.get("peft_moe_conversion")
        self.input_embedding: str | None = data.get("input_embedding")
        self.output_embedding: str | None = data.get("output_embedding")
        self.generated_with: dict[str, str] = data.get("generated_with", {})
        self.modules: list[Module] = [
            Module(
                name=m["name"],
                type=m["type"],
                kind=m["kind"],
                in_features=m.get("in"),
                out_features=m.get("out"),
                transposed=m.get("transposed", False),
                params=tuple(
                    Param(f"{m['name']}.{pname}" if m["name"] else pname, tuple(shape), alias)
                    for pname, shape, alias in m["params"]
                ),
            )
            for m in data["modules"]
        ]
        for module in self.modules:
            module.group_name = layer_group_name(module.name)
            module.layer = next((int(part) for part in module.name.split(".") if part.isdigit()), None)
        self.by_name: dict[str, Module] = {m.name: m for m in self.modules}
        self.base_params: int = sum(p.numel for m in self.modules for p in m.params if p.alias_of is None)
        self.bias_params: tuple[Param, ...] = tuple(
            p for m in self.modules for p in m.params if p.alias_of is None and p.is_bias
        )
        # Every state_dict key ending in "bias" (tied copies included), as the adapter file names them.
        self.bias_keys: tuple[tuple[str, tuple[int, ...]], ...] = tuple(
            (p.full_name, p.shape) for m in self.modules for p in m.params if p.is_bias
        )
        self.linear_names: frozenset[str] = frozenset(
            m.name for m in self.modules if m.kind in LINEAR_KINDS and m.name != self.output_embedding
        )
        self._compute_subtrees()

    def _compute_subtrees(self) -> None:
        # named_modules() is a pre-order walk, so a module's subtree is the run of names under its prefix.
        for index, module in enumerate(self.modules):
            prefix = module.name + "." if module.name else ""
            seen: set[str] = set()
            total = 0
            for other in self.modules[index:]:
                if other is not module and not other.name.startswith(prefix):
                    break
                if other is not module and "." not in other.name[len(prefix):]:
                    module.children.append(other.name)
                for p in other.params:
                    canonical = p.alias_of or p.full_name
                    if canonical not in seen:
                        seen.add(canonical)
                        total += p.numel
            module.subtree_params = total

    @property
    def hidden_size(self) -> int | None:
        return self.config.get("hidden_size")

    @property
    def num_layers(self) -> int | None:
        return self.config.get("num_hidden_layers")

    def first_block(self) -> list[Module]:
        """The modules of the language model's first numbered block (decoder layer 0), for drawing one block."""
        name = self._first_block_name
        return [m for m in self.modules if m.name.startswith(name + ".")] if name else []

    @cached_property
    def _first_block_name(self) -> str | None:
        # A multimodal model has other numbered stacks first (a vision tower's encoder layers): the decoder's is the
        # one with `num_hidden_layers` blocks whose linear layers read the text model's hidden size.
        candidates = []
        for module in self.modules:
            match = _LAYER_INDEX.search(module.name)
            if match and match.group(1) == "0" and module.name.endswith(".0"):
                prefix = module.name + "."
                candidates.append((module.name, [m for m in self.modules if m.name.startswith(prefix)]))
        if not candidates:
            return None
        return max(candidates, key=lambda candidate: self._decoder_likeness(*candidate))[0]

    @cached_property
    def language_model_prefix(self) -> str:
        """Where the text model's modules live: "model." on a causal LM, "model.language_model." on a multimodal
        one (whose vision tower a text-only run never calls); "" when no decoder stack is found."""
        name = self._first_block_name
        if not name:
            return ""
        model = name.rsplit(".", 2)[0]  # model.language_model.layers.0 -> model.language_model
        return model + "." if "." in name.rpartition(".")[0] else ""

    def in_language_model(self, module: Module) -> bool:
        """Whether a text-only training step runs this module (the output head included)."""
        prefix = self.language_model_prefix
        return not prefix or module.name.startswith(prefix) or module.name == self.output_embedding

    def _decoder_likeness(self, name: str, block: list[Module]) -> tuple[bool, bool]:
        stack = self.by_name.get(name.rpartition(".")[0])
        layers_match = stack is not None and len(stack.children) == self.num_layers
        reads_hidden = any(m.kind in LINEAR_KINDS and m.in_features == self.hidden_size for m in block)
        return layers_match, reads_hidden


def layer_group_name(module_name: str) -> str:
    """The name with its first layer index replaced by '*', e.g. model.layers.*.mlp.up_proj."""
    return _LAYER_INDEX.sub(".*", module_name, count=1)


@lru_cache(maxsize=64)
def _load_cached(path: str, mtime_ns: int) -> Inventory:
    return Inventory(json.loads(Path(path).read_text()))


def load_inventory(path: Path) -> Inventory:
    """Load an inventory file, reusing the parsed copy until the file changes."""
    return _load_cached(str(path), path.stat().st_mtime_ns)
