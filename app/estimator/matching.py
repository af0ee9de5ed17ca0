"""Which modules a LoRA config adapts and which it saves in full, by PEFT's own matching rules.

Mirrors peft 0.21 `check_target_module_exists`, `_maybe_include_all_linear_layers`,
`get_pattern_key` and `_set_trainable` over a module inventory. Pure stdlib; must not import
torch, peft or `workers`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.estimator import moe_conversion
from app.estimator.inventory import ADAPTABLE_KINDS, Inventory, Module
from app.estimator.lora_settings import LoraSettings
from app.estimator.parameter_targets import AdaptedParameter, ParameterRefused, select_parameters
from app.estimator.pattern_cost import PatternCheck, PatternTooCostly, check_cost
from app.estimator.peft_tree import ADAPTER_NAME, CONTAINER_TYPES, TreeModule, injected_modules

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
    saved: list[Module]  # modules_to_save hits, in named_modules() order (nested hits included)
    targets: frozenset[str] | str  # target_modules as PEFT resolves them
    unmatched_saves: tuple[str, ...] = ()  # modules_to_save entries that match nothing; PEFT ignores them
    adapted_parameters: tuple[AdaptedParameter, ...] = ()  # target_parameters hits, in PEFT's wrapping order
    settings: LoraSettings | None = None  # the settings PEFT applies (an MoE model's converted ones)

    @property
    def lora_stacks(self) -> dict[str, int]:
        """How many LoRA layers PEFT stacks at each adapted module's path."""
        stacks = {a.module.name: 1 for a in self.adapted}
        for parameter in self.adapted_parameters:
            stacks[parameter.module.name] = stacks.get(parameter.module.name, 0) + 1
        return stacks


# peft.utils.constants.MIN_TARGET_MODULES_FOR_OPTIMIZATION
_MIN_TARGETS_FOR_CONDENSING = 20


def _layer_index_matcher(settings: LoraSettings):
    indexes = settings.layers_to_transform
    if indexes is None or (isinstance(indexes, list) and not indexes):
        return None
    wanted = {indexes} if isinstance(indexes, int) else set(indexes)
    patterns = settings.layers_pattern
    if patterns:
        names = [patterns] if isinstance(patterns, str) else patterns
        compiled = [re.compile(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.") for p in names]
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
    if not tests:
        return None
    if len(tests) == 1:
        return tests[0]
    return lambda key: any(test(key) for test in tests)


def resolve_targets(inventory: Inventory, settings: LoraSettings) -> frozenset[str] | str:
    """PEFT's effective target_modules: the architecture default, 'all-linear' expanded, or as given; a list of
    20 or more names condensed to the shortest suffixes that still single them out, as PEFT does."""
    targets = settings.target_modules
    if targets is None:
        if not inventory.peft_default_targets and settings.target_parameters:
            return frozenset()  # LoRA on parameters alone
        if not inventory.peft_default_targets:
            raise EstimateError(
                "target_modules",
                f"PEFT has no default target_modules for model type {inventory.model_type!r}; "
                "please specify `target_modules`.",
            )
        resolved = frozenset(inventory.peft_default_targets)
    elif settings.is_all_linear:
        resolved = inventory.linear_names
    elif isinstance(targets, str):
        return targets
    else:
        resolved = frozenset(targets)
    if len(resolved) >= _MIN_TARGETS_FOR_CONDENSING:
        resolved = _condensed(resolved, [m.name for m in inventory.modules])
    return resolved


def _suffixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[i:]) for i in range(len(parts))][::-1]


def _condensed(targets: frozenset[str], module_names: list[str]) -> frozenset[str]:
    """peft's `_find_minimal_target_modules`, applied when it shortens the list (it changes which names are
    exact matches, and exact matches skip the `layers_to_transform` filter)."""
    suffixes = tuple("." + t for t in targets)
    others = {n for n in module_names if n not in targets and not n.endswith(suffixes)}
    if "" in targets or not targets.isdisjoint(others):
        return targets
    other_suffixes = {suffix for name in others for suffix in _suffixes(name)}
    required: set[str] = set()
    for item, item_suffixes in sorted(((t, _suffixes(t)) for t in targets), key=lambda pair: pair[1]):
        for suffix in item_suffixes:
            if suffix in required or suffix in other_suffixes:
                continue
            if not any(item.endswith("." + r) for r in required):
                required.add(suffix)
                break
    if not required or len(required) >= len(targets):
        return targets
    return frozenset(required)


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


def _select_saved(
    inventory: Inventory, settings: LoraSettings, lora_stacks: dict[str, int]
) -> tuple[list[Module], tuple[str, ...]]:
    if not settings.modules_to_save:
        return [], ()
    # PEFT's _set_trainable matches a plain suffix here, without a '.' boundary, over the model as LoRA left it,
    # and skips entries that hit nothing.
    entries = settings.modules_to_save
    saved: list[Module] = []
    hit: set[str] = set()
    for tree_module in injected_modules(inventory, lora_stacks, settings.use_dora):
        name = tree_module.name
        entry = next((e for e in entries if name.endswith(e)), None)
        if entry is None:
            continue
        hit.update(e for e in entries if name.endswith(e))
        _check_savable(tree_module, entry, set(lora_stacks))
        saved.append(tree_module.module)  # type: ignore[arg-type]  # _check_savable refused the module-less ones
    return saved, tuple(e for e in entries if e not in hit)


def _check_savable(tree_module: TreeModule, entry: str, adapted_names: set[str]) -> None:
    """Refuse a modules_to_save hit PEFT refuses (or, for a module holding LoRA layers, Tuneboard does)."""
    name = tree_module.name
    selects = f"modules_to_save entry {entry!r} selects {name!r}"
    if tree_module.grandparent_is_lora:
        raise EstimateError(
            "modules_to_save",
            f"{selects}, the adapter-named entry PEFT puts inside the LoRA layer {tree_module.lora_layer!r}; PEFT "
            "refuses to save part of a LoRA layer (entries match a plain suffix, so the adapter's name "
            f"{ADAPTER_NAME!r} hits it).",
        )
    if tree_module.type in CONTAINER_TYPES:
        inserted = f"which PEFT inserted into the LoRA layer {tree_module.lora_layer!r}" if tree_module.lora_layer \
            else "a container"
        raise EstimateError(
            "modules_to_save",
            f"{selects}, a {tree_module.type} {inserted}; PEFT can only save a module with a forward of its own, "
            "not a ModuleDict, ModuleList, ParameterDict or ParameterList. Name the modules inside it instead.",
        )
    if tree_module.lora_layer is not None:
        raise EstimateError(
            "modules_to_save",
            f"{selects}, which LoRA also adapts; PEFT refuses to save an adapted layer in full.",
        )
    inside = sorted(n for n in adapted_names if n.startswith(name + "."))
    if inside:
        # PEFT accepts this one (unlike the cases above) but builds a model nobody wants, so Tuneboard refuses.
        raise EstimateError(
            "modules_to_save",
            f"{selects} (entries match a plain suffix), which contains LoRA-targeted {inside[0]!r}: PEFT would "
            "copy it together with its LoRA layers, freeze the original adapter and train the copy's full weights "
            f"plus a duplicate adapter. To train the module in full, name it exactly ({name.rsplit('.', 1)[-1]!r}); "
            "otherwise drop this entry.",
        )


def _pattern_checks(settings: LoraSettings, targets: frozenset[str] | str) -> list[PatternCheck]:
    """Every regular expression PEFT will run for these settings, as it builds them."""
    checks = []
    if isinstance(targets, str):
        checks.append(PatternCheck("target_modules", targets, targets, "fullmatch"))
    if isinstance(settings.exclude_modules, str):
        checks.append(PatternCheck("exclude_modules", settings.exclude_modules, settings.exclude_modules, "fullmatch"))
    for entry in settings.modules_to_save or []:
        checks.append(PatternCheck("modules_to_save", entry, rf"(^|.*\.){entry}($|\..*)", "match"))
    for field in ("rank_pattern", "alpha_pattern"):
        for key in getattr(settings, field):
            checks.append(PatternCheck(field, key, rf"(.*\.)?({key})$", "match"))
    layers = settings.layers_pattern
    if settings.layers_to_transform is not None and layers:
        for pattern in [layers] if isinstance(layers, str) else layers:
            checks.append(PatternCheck("layers_pattern", pattern, rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", "match"))
    return checks


def check_pattern_cost(settings: LoraSettings, module_names: list[str]) -> None:
    """PatternTooCostly when the settings' patterns would take PEFT too long against these module names.

    The estimate checks this with the model's inventory; a worker checks it again with the loaded model,
    since a job may have been launched before the inventory existed."""
    targets = settings.target_modules if isinstance(settings.target_modules, str) else frozenset()
    check_cost(_pattern_checks(settings, targets), [name for name in module_names if name])


def select_modules(inventory: Inventory, settings: LoraSettings) -> Selection:
    """The modules and parameters LoRA adapts (with their rank and alpha) and the modules saved in full."""
    if inventory.peft_moe_conversion and settings.target_modules is None and not settings.target_parameters:
        raise EstimateError(
            "target_modules",
            f"PEFT has no default target_modules for {inventory.model_type!r} on transformers 5 (it rewrites "
            "the config for the fused experts and drops the default): name the modules, e.g. "
            '["q_proj", "v_proj"], or "all-linear".',
        )
    if inventory.peft_moe_conversion:
        # The rewrite runs the user's patterns over every module and parameter name: bound their cost first.
        try:
            check_pattern_cost(settings, [m.name for m in inventory.modules] +
                               [p.full_name for m in inventory.modules for p in m.params])
        except PatternTooCostly as exc:
            raise EstimateError(exc.field, exc.message) from None
    try:
        settings = moe_conversion.convert(inventory, settings, _peft_target_check(inventory, settings))
    except moe_conversion.ConversionRefused as exc:
        raise EstimateError("target_modules", str(exc)) from None
    targets = resolve_targets(inventory, settings)
    try:
        check_cost(_pattern_checks(settings, targets), [m.name for m in inventory.modules if m.name])
    except PatternTooCostly as exc:
        raise EstimateError(exc.field, exc.message) from None
    is_excluded = _exclusion_matcher(settings)
    is_target = _target_matcher(targets, settings)
    rank_of = _pattern_lookup(settings.rank_pattern, settings.r)
    alpha_of = _pattern_lookup(settings.alpha_pattern, settings.lora_alpha)

    has_patterns = bool(settings.rank_pattern or settings.alpha_pattern)
    adapted: list[AdaptedModule] = []
    excluded = unmatched = 0
    for module in inventory.modules:
        key = module.name
        if not key:
            continue
        if is_excluded is not None and is_excluded(key):
            excluded += 1
        elif not is_target(key):
            unmatched += 1
        else:
            if module.kind not in ADAPTABLE_KINDS:
                raise _unsupported(module)
            rank = rank_of(key) if has_patterns else settings.r
            _check_layer_rank(settings, key, rank)
            adapted.append(AdaptedModule(module, rank, alpha_of(key)) if has_patterns
                           else AdaptedModule(module, settings.r, settings.lora_alpha))

    adapted_names = {a.module.name for a in adapted}
    try:
        parameters = select_parameters(
            inventory, settings.target_parameters or [], adapted_names, rank_of, alpha_of,
            use_dora=settings.use_dora, lora_dropout=settings.lora_dropout,
        )
    except ParameterRefused as exc:
        field = str(exc).split(":", 1)[0] if str(exc).startswith(("use_dora:", "lora_dropout:")) else \
            "target_parameters"
        raise EstimateError(field, str(exc)) from None
    for parameter in parameters:
        _check_layer_rank(settings, parameter.key, parameter.r)
    if not adapted and not parameters:
        raise _no_match_error(settings, targets, excluded, unmatched)
    selection = Selection(adapted, [], targets, (), tuple(parameters), settings)
    saved, unmatched_saves = _select_saved(inventory, settings, selection.lora_stacks)
    return Selection(adapted, saved, targets, unmatched_saves, tuple(parameters), settings)


def _peft_target_check(inventory: Inventory, settings: LoraSettings):
    """PEFT's `check_target_module_exists` for settings as given (exclusions first), before any conversion."""
    if not inventory.peft_moe_conversion or settings.target_modules is None:
        return lambda key: False
    targets = settings.target_modules if isinstance(settings.target_modules, str) else \
        frozenset(settings.target_modules)
    is_excluded = _exclusion_matcher(settings)
    is_target = _target_matcher(targets, settings)
    return lambda key: not (is_excluded is not None and is_excluded(key)) and is_target(key)


def _check_layer_rank(settings: LoraSettings, key: str, rank: int | float) -> None:
    """Refuse a rank PEFT's LoRA layer refuses, where it reaches the layer (unused, PEFT never looks at it)."""
    field = "r" if rank is settings.r or not settings.rank_pattern else "rank_pattern"
    where = f"{field} gives {key} rank {rank!r}"
    if isinstance(rank, float):
        raise EstimateError(field, f"a rank must be an integer: PEFT sizes the LoRA matrices with it and refuses "
                                   f"{rank!r} ({where}).")
    if rank < 1:  # the LoRA layer's own words
        raise EstimateError(field, f"`r` should be a positive integer value but the value passed is {rank} ({where}).")


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
