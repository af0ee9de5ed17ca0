"""Which modules a LoRA config adapts and which it saves in full, by PEFT's own matching rules.

Mirrors peft 0.21 `check_target_module_exists`, `_maybe_include_all_linear_layers`,
`get_pattern_key` and `_set_trainable` over a module inventory. Pure stdlib; must not import
torch, peft or `workers`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.training.inventory import ADAPTABLE_KINDS, Inventory, Module
from app.training.lora_settings import LoraSettings

_DEFAULT_LAYER_INDEX = re.compile(r".*?\.[^.]*\.(?P<idx>\d+)\.")


class EstimateError(ValueError):
    """A LoRA config that PEFT would reject for this model; `field` names the offending setting."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class AdaptedModule:
    module: Module
    r: int
    alpha: float


@dataclass(frozen=True, slots=True)
class Selection:
    adapted: list[AdaptedModule]
    saved: list[Module]  # modules_to_save: each gets a full trainable copy
    targets: frozenset[str] | str  # target_modules as PEFT resolves them


def _layer_index_matcher(settings: LoraSettings):
    indexes = settings.layers_to_transform
    if indexes is None or (isinstance(indexes, list) and not indexes):
        return None
    wanted = {indexes} if isinstance(indexes, int) else set(indexes)
    patterns = settings.layers_pattern
    if patterns:
        compiled = [re.compile(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.") for p in ([patterns] if isinstance(patterns, str) else patterns)]
    else:
        compiled = [_DEFAULT_LAYER_INDEX]

    def in_wanted_layer(key: str) -> bool:
        match = None
        for pattern in compiled:
            match = pattern.match(key)
            if match is not None:
                break
        return match is not None and int(match.group("idx")) in wanted

    return in_wanted_layer


def _exclusion_matcher(settings: LoraSettings):
    exclude = settings.exclude_modules
    tests = []
    if isinstance(exclude, str):
        exclude_regex = re.compile(exclude)
        tests.append(lambda key: exclude_regex.fullmatch(key) is not None)
    elif exclude:
        names = frozenset(exclude)
        suffixes = tuple("." + e for e in exclude)
        tests.append(lambda key: key in names or key.endswith(suffixes))
    if settings.modules_to_save:
        # PEFT never adapts anything inside a module it saves in full.
        saved = [re.compile(rf"(^|.*\.){m}($|\..*)") for m in settings.modules_to_save]
        tests.append(lambda key: any(p.match(key) for p in saved))
    return lambda key: any(test(key) for test in tests)


def resolve_targets(inventory: Inventory, settings: LoraSettings) -> frozenset[str] | str:
    """PEFT's effective target_modules: the architecture default, 'all-linear' expanded, or as given."""
    targets = settings.target_modules
    if targets is None:
        if not inventory.peft_default_targets:
            raise EstimateError(
                "target_modules",
                f"PEFT has no default target_modules for model type {inventory.model_type!r}; "
                "please specify `target_modules`.",
            )
        return frozenset(inventory.peft_default_targets)
    if settings.is_all_linear:
        return inventory.linear_names
    if isinstance(targets, str):
        return targets
    return frozenset(targets)


def _target_matcher(targets: frozenset[str] | str, settings: LoraSettings):
    if isinstance(targets, str):
        target_regex = re.compile(targets)
        return lambda key: target_regex.fullmatch(key) is not None
    suffixes = tuple("." + t for t in targets)
    in_layer = _layer_index_matcher(settings)

    def matches(key: str) -> bool:
        if key in targets:
            # PEFT skips the layer filter for exact names, which is why all-linear ignores it.
            return True
        if not key.endswith(suffixes):
            return False
        return in_layer is None or in_layer(key)

    return matches


def _pattern_lookup(patterns: dict, default):
    compiled = [(re.compile(rf"(.*\.)?({key})$"), value) for key, value in patterns.items()]

    def lookup(key: str):
        for pattern, value in compiled:
            if pattern.match(key):
                return value
        return default

    return lookup


def _unsupported(module: Module) -> EstimateError:
    if module.kind in ("conv", "mha"):
        reason = f"{module.type} layers are supported by PEFT but not yet by Tuneboard's estimator"
    else:
        reason = (
            f"{module.type} is not a layer LoRA can adapt (PEFT supports Linear, Embedding, Conv1d/2d/3d, "
            "MultiheadAttention and transformers' Conv1D)"
        )
    return EstimateError("target_modules", f"Target module {module.name!r} matched, but {reason}.")


def _select_saved(inventory: Inventory, settings: LoraSettings, adapted_names: set[str]) -> list[Module]:
    if not settings.modules_to_save:
        return []
    saved: list[Module] = []
    for entry in settings.modules_to_save:
        # PEFT's _set_trainable matches a plain suffix here, without a '.' boundary.
        hits = [m for m in inventory.modules if m.name and m.name.endswith(entry)]
        if not hits:
            raise EstimateError("modules_to_save", f"modules_to_save entry {entry!r} matches no module of the model.")
        for module in hits:
            if module not in saved:
                saved.append(module)
    for module in saved:
        prefix = module.name + "."
        for other in saved:
            if other is not module and other.name.startswith(prefix):
                raise EstimateError(
                    "modules_to_save",
                    f"modules_to_save selects {other.name!r} inside {module.name!r}; choose one of the two.",
                )
        inside = sorted(n for n in adapted_names if n == module.name or n.startswith(prefix))
        if inside:
            raise EstimateError(
                "modules_to_save",
                f"modules_to_save selects {module.name!r}, which contains LoRA-targeted {inside[0]!r}; "
                "a module cannot be both adapted and saved in full.",
            )
    return saved


def select_modules(inventory: Inventory, settings: LoraSettings) -> Selection:
    """The modules LoRA adapts (with their rank and alpha) and the modules saved in full."""
    targets = resolve_targets(inventory, settings)
    is_excluded = _exclusion_matcher(settings)
    is_target = _target_matcher(targets, settings)
    rank_of = _pattern_lookup(settings.rank_pattern, settings.r)
    alpha_of = _pattern_lookup(settings.alpha_pattern, settings.lora_alpha)

    adapted: list[AdaptedModule] = []
    excluded = unmatched = 0
    for module in inventory.modules:
        key = module.name
        if not key:
            continue
        if is_excluded(key):
            excluded += 1
        elif not is_target(key):
            unmatched += 1
        else:
            if module.kind not in ADAPTABLE_KINDS:
                raise _unsupported(module)
            adapted.append(AdaptedModule(module, rank_of(key), alpha_of(key)))

    if not adapted:
        raise _no_match_error(settings, targets, excluded, unmatched)
    saved = _select_saved(inventory, settings, {a.module.name for a in adapted})
    return Selection(adapted, saved, targets)


def _no_match_error(settings: LoraSettings, targets, excluded: int, unmatched: int) -> EstimateError:
    if excluded and not unmatched:
        return EstimateError(
            "exclude_modules",
            "All modules were excluded. Check your `target_modules`, `exclude_modules` and `modules_to_save`.",
        )
    shown = targets if isinstance(targets, str) else sorted(targets)
    if not excluded:
        message = f"Target modules {shown} not found in the base model."
        field = "target_modules"
    else:
        message = (
            "No modules were targeted for adaptation: the target modules that matched are all excluded "
            "by `exclude_modules` or `modules_to_save`."
        )
        field = "exclude_modules" if settings.exclude_modules else "modules_to_save"
    if settings.layers_to_transform is not None:
        message += f" Note: you specified layers_to_transform={settings.layers_to_transform}."
        field = "layers_to_transform"
    if settings.layers_pattern is not None:
        message += f" You also specified layers_pattern={settings.layers_pattern!r}."
    return EstimateError(field, message)
