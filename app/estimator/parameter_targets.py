"""LoRA on parameters (`target_parameters`): which parameters PEFT adapts and how big their LoRA matrices are.

Mirrors peft 0.21 `BaseTuner._inject_parameters` and `lora.ParamWrapper`: a parameter whose
`module.param` name equals an entry or ends with `.entry` gets a ParamWrapper around its module; a second
parameter of the same module wraps that wrapper again. A stacked 3-D expert weight (experts, a, b) gets
LoRA matrices of rank r per expert: A is (r·experts, in), B is (out, r·experts). Pure stdlib; must not import
torch, peft or `workers`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.estimator.inventory import Inventory, Module


class ParameterRefused(ValueError):
    """A target_parameters entry PEFT refuses; the message says why."""


@dataclass(frozen=True, slots=True)
class AdaptedParameter:
    module: Module
    name: str  # the parameter's own name within its module, e.g. "gate_up_proj"
    r: int
    alpha: float
    experts: int  # 1 for a 2-D weight
    in_features: int
    out_features: int
    nesting: int  # how many wrappers PEFT stacks on this module after this one (0 = outermost)

    @property
    def key(self) -> str:
        return f"{self.module.name}.{self.name}"

    @property
    def params(self) -> int:
        return self.r * self.experts * (self.in_features + self.out_features)

    @property
    def wrapper_path(self) -> str:
        """Where this parameter's ParamWrapper sits once every wrapper on the module is in place."""
        return self.module.name + ".base_layer" * self.nesting


def _matcher(targets: list[str]):
    # A set and a suffix tuple: thousands of entries against thousands of parameters stay a C-level scan.
    names, suffixes = set(targets), tuple(f".{target}" for target in targets)
    return lambda key: key in names or key.endswith(suffixes)


def _features(module: Module, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(experts, in, out) as ParamWrapper reads them: (experts, out, in) unless the module says transposed."""
    if len(shape) == 3:
        experts, first, second = shape
        return (experts, first, second) if module.transposed else (experts, second, first)
    return 1, shape[1], shape[0]


def select_parameters(
    inventory: Inventory,
    targets: list[str],
    adapted_modules: set[str],
    rank_of: Callable[[str], int],
    alpha_of: Callable[[str], float],
    *,
    use_dora: bool,
    lora_dropout: float,
) -> list[AdaptedParameter]:
    """The parameters `target_parameters` adapts, in PEFT's wrapping order; ParameterRefused where PEFT raises."""
    if not targets:
        return []
    matches = _matcher(targets)
    found: list[tuple[Module, str, tuple[int, ...]]] = []
    for module in inventory.modules:
        for param in module.params:
            name = param.full_name.rpartition(".")[2] if module.name else param.full_name
            key = f"{module.name}.{name}"
            if matches(key):
                found.append((module, name, param.shape))
    if not found:
        return []
    adapted: list[AdaptedParameter] = []
    per_module: dict[str, int] = {}
    for module, _, _ in found:
        per_module[module.name] = per_module.get(module.name, 0) + 1
    seen: dict[str, int] = {}
    for module, name, shape in found:
        key = f"{module.name}.{name}"
        if not module.name:
            raise ParameterRefused(f"target_parameters selects {name!r}, a parameter of the model itself; PEFT can "
                                   "only adapt parameters that belong to a submodule.")
        if module.name in adapted_modules:
            raise ParameterRefused(f"target_parameters selects {key!r}, but its module {module.name!r} is already "
                                   "adapted through target_modules; PEFT refuses to adapt both. Drop one of them.")
        if len(shape) not in (2, 3):
            raise ParameterRefused(f"target_parameters selects {key!r} of shape {list(shape)}; PEFT adapts only "
                                   "2-D weights and 3-D stacked expert weights.")
        if use_dora:
            raise ParameterRefused("use_dora: PEFT's LoRA on parameters (target_parameters) does not work with DoRA.")
        if lora_dropout > 0:
            raise ParameterRefused(f"lora_dropout: PEFT's LoRA on parameters (target_parameters, here {key!r}) "
                                   f"needs lora_dropout 0, not {lora_dropout}.")
        experts, in_features, out_features = _features(module, shape)
        order = seen.get(module.name, 0)
        seen[module.name] = order + 1
        adapted.append(AdaptedParameter(module, name, rank_of(key), alpha_of(key), experts, in_features,
                                        out_features, nesting=per_module[module.name] - 1 - order))
    return adapted
