"""Hypothesis strategies for the exactness tests: tiny model configs per family and LoRA option sets.

The option sets use peft.LoraConfig's field names, so the same dict feeds both `LoraConfig(**options)`
and `LoraSettings(**options)`. They mix the common choices with the odd ones PEFT's matching rules
make interesting: suffix vs exact names, regexes, dotted qualifiers, layer filters, containers and
norms that PEFT refuses, names that match nothing.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from tests.estimator.peft_reference import (
    ATTENTION_PARENT,
    EMBEDDING_NAMES,
    FAMILIES,
    LAYERS_PATTERN,
    LINEAR_NAMES,
    MODEL_PREFIX,
    OTHER_NAMES,
    inventory_for,
    small_config,
)


@st.composite
def random_family_configs(draw, families=FAMILIES) -> Any:
    """A tiny config of one family: random depth, width, heads, KV heads, vocab, tying and bias flags."""
    family = draw(st.sampled_from(families))
    heads = draw(st.sampled_from([1, 2, 4]))
    kv_heads = heads if family == "gpt2" else draw(st.sampled_from([k for k in (1, 2, 4) if heads % k == 0]))
    return small_config(
        family,
        layers=draw(st.integers(1, 3)),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=draw(st.sampled_from([2, 4, 8])),
        intermediate=draw(st.integers(4, 40)),
        vocab=draw(st.integers(8, 80)),
        tie=draw(st.booleans()),
        attention_bias=draw(st.booleans()),
        mlp_bias=draw(st.booleans()),
        cross_attention=family == "gpt2" and draw(st.booleans()),
    )


def family_of(config: Any) -> str:
    return config.model_type


def _subset(draw, names, min_size=1):
    return draw(st.lists(st.sampled_from(list(names)), min_size=min_size, max_size=len(names), unique=True))


def _target_list(draw, family: str, layers: int) -> list[str]:
    linear = LINEAR_NAMES[family]
    chosen = _subset(draw, linear)
    extra = draw(
        st.lists(
            st.sampled_from(
                [
                    *EMBEDDING_NAMES[family],
                    f"{ATTENTION_PARENT[family]}.{linear[0]}",  # a dotted qualifier: suffix match on two parts
                    f"mlp.{linear[-1]}" if family != "gpt2" else "mlp.c_proj",
                    f"{MODEL_PREFIX[family]}.{LAYERS_PATTERN[family]}.0.{ATTENTION_PARENT[family]}.{linear[0]}",
                    "dense",  # matches nothing
                ]
            ),
            max_size=2,
            unique=True,
        )
    )
    rare = draw(st.sampled_from([None] * 12 + list(OTHER_NAMES[family])))  # a container or a norm: PEFT refuses
    return chosen + extra + ([rare] if rare else [])


def _target_regex(draw, family: str, layers: int) -> str:
    names = _subset(draw, LINEAR_NAMES[family] + EMBEDDING_NAMES[family][:1])
    alternatives = "|".join(names)
    form = draw(st.sampled_from(["any", "layer", "prefix", "embeddings", "nothing"]))
    if form == "any":
        return rf".*\.({alternatives})"
    if form == "layer":
        return rf".*\.{draw(st.integers(0, layers))}\..*\.({alternatives})"
    if form == "prefix":
        return rf"{MODEL_PREFIX[family]}\.{LAYERS_PATTERN[family]}\.\d+\.\w+\.({alternatives})"
    if form == "embeddings":
        return rf"(.*\.)?({'|'.join(EMBEDDING_NAMES[family])})"
    return r".*\.no_such_layer"


def _layer_options(draw, layers: int) -> dict[str, Any]:
    if draw(st.integers(0, 2)) != 0:
        return {}
    options: dict[str, Any] = {}
    if draw(st.booleans()):
        options["layers_to_transform"] = draw(st.integers(0, layers))
    else:
        options["layers_to_transform"] = draw(st.lists(st.integers(0, layers), max_size=layers + 1, unique=True))
    return options


def _layers_pattern(draw, family: str) -> dict[str, Any]:
    pattern = draw(st.sampled_from([None, None, LAYERS_PATTERN[family], "blocks", [LAYERS_PATTERN[family], "blocks"]]))
    return {} if pattern is None else {"layers_pattern": pattern}


def _exclusions(draw, family: str, layers: int) -> dict[str, Any]:
    kind = draw(st.sampled_from(["none", "none", "list", "regex"]))
    if kind == "list":
        names = list(LINEAR_NAMES[family]) + ["lm_head", f"{ATTENTION_PARENT[family]}.{LINEAR_NAMES[family][0]}"]
        return {"exclude_modules": _subset(draw, names)}
    if kind == "regex":
        return {"exclude_modules": rf".*\.{draw(st.integers(0, layers))}\..*"}
    return {}


def _saves(draw, family: str) -> dict[str, Any]:
    if draw(st.integers(0, 2)) != 0:
        return {}
    other_embedding = "embed_tokens" if family == "gpt2" else "wte"  # matches nothing: PEFT ignores it
    candidates = [
        "lm_head",
        EMBEDDING_NAMES[family][0],
        OTHER_NAMES[family][-1],  # the final norm (and, by suffix, every norm for the llama-like families)
        "mlp",
        ATTENTION_PARENT[family],  # on GPT-2 "attn" also hits "attn.c_attn": nested saves
        f"{LAYERS_PATTERN[family]}.0",  # a whole block, nesting everything saved inside it
        LINEAR_NAMES[family][-1],
        other_embedding,
        # Matching runs after LoRA injection, so entries also reach what PEFT inserted: the original weights it
        # keeps as base_layer (wrapped and copied), its ModuleDicts and their adapter-named entries (refused).
        "base_layer",
        "layer",
        "lora_A",
        "dropout",
        "magnitude_vector",
        "default",
        LAYERS_PATTERN[family],  # the ModuleList of blocks: refused
    ]
    return {"modules_to_save": draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=3, unique=True))}


def _patterns(draw, family: str, layers: int, field: str, values) -> dict[str, Any]:
    if draw(st.integers(0, 2)) != 0:
        return {}
    keys = [
        *LINEAR_NAMES[family],
        rf"{LAYERS_PATTERN[family]}\.{draw(st.integers(0, layers))}\..*",
        rf"{LAYERS_PATTERN[family]}\.0\.{ATTENTION_PARENT[family]}\.{LINEAR_NAMES[family][0]}",
        "nonexistent",  # matches nothing: even a zero rank on it is accepted
    ]
    chosen = draw(st.lists(st.sampled_from(keys), min_size=1, max_size=2, unique=True))
    return {field: {key: draw(values) for key in chosen}}


@st.composite
def lora_options(draw, config: Any) -> dict[str, Any]:
    """A LoRA option set for `config`'s family, with peft.LoraConfig's field names."""
    family = family_of(config)
    layers = config.get_text_config().num_hidden_layers  # a multimodal model's blocks are its text model's
    options: dict[str, Any] = {
        "r": draw(st.integers(1, 16)),
        "lora_alpha": draw(st.one_of(st.integers(1, 64), st.floats(0.5, 64, allow_nan=False))),
        "lora_dropout": draw(st.sampled_from([0.0, 0.05, 0.1])),
        "bias": draw(st.sampled_from(["none", "none", "all", "lora_only"])),
        "use_rslora": draw(st.booleans()),
        "use_dora": draw(st.booleans()),
    }
    mode = draw(st.sampled_from(["list", "list", "list", "full names", "regex", "all-linear", "default"]))
    if mode in ("list", "full names"):
        if mode == "list":
            options["target_modules"] = _target_list(draw, family, layers)
        else:
            # Full module names; 20 or more make PEFT condense them to suffixes, which changes how
            # layers_to_transform applies to them.
            names = sorted(m.name for m in inventory_for(config).modules if m.kind in ("linear", "conv1d"))
            options["target_modules"] = draw(st.lists(st.sampled_from(names), min_size=len(names) // 2, unique=True))
        options |= _layer_options(draw, layers)
        if "layers_to_transform" in options:
            options |= _layers_pattern(draw, family)
        elif draw(st.integers(0, 15)) == 0:
            options["layers_pattern"] = LAYERS_PATTERN[family]  # without layers_to_transform: both refuse
    elif mode == "regex":
        options["target_modules"] = _target_regex(draw, family, layers)
        if draw(st.integers(0, 15)) == 0:
            options["layers_to_transform"] = 0  # with a regex: both refuse
    elif mode == "all-linear":
        options["target_modules"] = draw(st.sampled_from(["all-linear", "ALL-LINEAR"]))
    options |= _exclusions(draw, family, layers)
    options |= _saves(draw, family)
    # A zero rank is refused only where it reaches an adapted module; a rank written 4.0 is refused always.
    ranks = st.one_of(st.integers(1, 32), st.integers(1, 32), st.integers(1, 32), st.just(0), st.just(4.0))
    options |= _patterns(draw, family, layers, "rank_pattern", ranks)
    if draw(st.integers(0, 30)) == 0:
        options["r"] = float(options["r"])
    options |= _patterns(draw, family, layers, "alpha_pattern", st.integers(1, 64))
    return options
