"""Module inventories: build a model from its config on the meta device and record every module.

Owns the torch side of the estimator. The web app reads the JSON this writes and never imports
torch; this module may import torch, transformers and peft (lazily, so `--help` stays fast).

    python -m workers.inventory --catalog          # regenerate the committed catalog data
    python -m workers.inventory SOURCE --out FILE  # a Hugging Face id or a local directory
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from app.base_models.model_ids import UnknownModel
from app.estimator import catalog
from app.estimator.config_limits import FAILURE_PREFIX, ConfigTooLarge, check_config_size
from app.estimator.inventory import INVENTORY_FORMAT


def _module_kind(module: Any) -> str:
    """Classify a module the way PEFT's LoRA dispatchers do."""
    import torch
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, Conv1D):
        return "conv1d"
    if isinstance(module, torch.nn.Linear):
        return "linear"
    if isinstance(module, torch.nn.Embedding):
        return "embedding"
    if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
        return "conv"
    if isinstance(module, torch.nn.MultiheadAttention):
        return "mha"
    return "other"


def _features(module: Any, kind: str) -> tuple[int | None, int | None]:
    if kind == "linear":
        return module.in_features, module.out_features
    if kind == "conv1d":
        # GPT-2's Conv1D stores its weight as (in, out)
        in_features, out_features = module.weight.shape
        return int(in_features), int(out_features)
    if kind == "embedding":
        return module.num_embeddings, module.embedding_dim
    return None, None


def _peft_default_targets(model_type: str) -> list[str] | None:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    return sorted(targets) if targets else None


def _peft_moe_conversion(model: Any) -> dict[str, Any] | None:
    """How PEFT rewrites a LoRA config for this model type (transformers 5 fused its MoE experts), if it does.

    Recorded so the torch-free estimator can replay peft's `_convert_peft_config_moe` for the same type."""
    from peft.utils import transformers_weight_conversion as conversion
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    model_type = getattr(model.config, "model_type", None)
    pattern = conversion._MODEL_TO_CONVERSION_PATTERN.get(model_type)
    mapping = conversion._MOE_TARGET_MODULE_MAPPING.get(pattern) if pattern else None
    fused = conversion._MOE_FUSED_TARGETS.get(pattern) if pattern else None
    if not mapping or not fused or get_checkpoint_conversion_mapping(model_type) is None:
        return None
    return {"mapping": dict(mapping), "fused": {name: list(old) for name, old in fused.items()}}


def _build_on_meta(config: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _config_summary(config: Any) -> dict[str, Any]:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text_config, "hidden_size", None)
    heads = getattr(text_config, "num_attention_heads", None)
    summary = {
        "hidden_size": hidden,
        "intermediate_size": getattr(text_config, "intermediate_size", None)
        or getattr(text_config, "n_inner", None)
        or (4 * hidden if hidden else None),
        "num_hidden_layers": getattr(text_config, "num_hidden_layers", None),
        "num_attention_heads": heads,
        "num_key_value_heads": getattr(text_config, "num_key_value_heads", None) or heads,
        "head_dim": getattr(text_config, "head_dim", None) or (hidden // heads if hidden and heads else None),
        "vocab_size": getattr(text_config, "vocab_size", None),
        "max_position_embeddings": getattr(text_config, "max_position_embeddings", None),
        "tie_word_embeddings": bool(getattr(text_config, "tie_word_embeddings", False)),
    }
    # A mixture-of-experts model runs only some experts per token: the training-time estimate needs how many.
    experts_per_token = getattr(text_config, "num_experts_per_tok", None)
    if experts_per_token:
        summary["num_experts_per_tok"] = int(experts_per_token)
    return summary


def build_inventory(config: Any, model_id: str) -> dict[str, Any]:
    """Return the JSON-ready module inventory of the causal LM that `config` describes."""
    import peft
    import torch
    import transformers

    model = _build_on_meta(config)
    seen: dict[int, str] = {}
    modules = []
    for name, module in model.named_modules():
        kind = _module_kind(module)
        in_features, out_features = _features(module, kind)
        params = []
        for param_name, param in module.named_parameters(recurse=False):
            full_name = f"{name}.{param_name}" if name else param_name
            alias_of = seen.get(id(param))
            if alias_of is None:
                seen[id(param)] = full_name
            params.append([param_name, [int(d) for d in param.shape], alias_of])
        entry: dict[str, Any] = {"name": name, "type": type(module).__name__, "kind": kind, "params": params}
        if in_features is not None:
            entry["in"], entry["out"] = int(in_features), int(out_features)
        if getattr(module, "is_transposed", False) is True:
            entry["transposed"] = True  # stacked expert weights stored (experts, in, out): PEFT sizes LoRA by it
        modules.append(entry)

    output_embedding = model.get_output_embeddings()
    input_embedding = model.get_input_embeddings()
    names_by_id = {id(m): n for n, m in model.named_modules()}
    return {
        "format": INVENTORY_FORMAT,
        "model_id": model_id,
        "architecture": type(model).__name__,
        "model_type": config.model_type,
        "config": _config_summary(config),
        "peft_default_targets": _peft_default_targets(config.model_type),
        "peft_moe_conversion": _peft_moe_conversion(model),
        "input_embedding": names_by_id.get(id(input_embedding)),
        "output_embedding": names_by_id.get(id(output_embedding)) if output_embedding is not None else None,
        "generated_with": {
            "torch": torch.__version__.split("+")[0],
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "modules": modules,
    }


def inventory_from_source(source: str) -> dict[str, Any]:
    """Load a config from a Hugging Face id or a local directory and build its inventory.

    UnknownModel for a folder outside the model roots; ConfigTooLarge, before anything is built, when the
    config declares absurd sizes."""
    from transformers import AutoConfig

    from app.base_models.model_ids import resolve_model_id
    from app.settings import get_settings

    ref = resolve_model_id(source, get_settings())  # the web app's rule for local folders, applied here too
    config = AutoConfig.from_pretrained(ref.local_dir or ref.model_id)
    check_config_size(config.to_dict())
    return build_inventory(config, source)


def _load_catalog_config(model_id: str) -> Any:
    from transformers import AutoConfig

    raw = json.loads(catalog.config_path(model_id).read_text())
    config_class = AutoConfig.for_model(raw["model_type"]).__class__
    return config_class.from_dict(raw)


def write_catalog_inventories() -> list[Path]:
    """Regenerate every committed catalog inventory from the committed configs."""
    written = []
    for entry in catalog.entries():
        inventory = build_inventory(_load_catalog_config(entry.id), entry.id)
        path = catalog.inventory_path(entry.id)
        path.write_text(json.dumps(inventory, separators=(",", ":")) + "\n")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: regenerate the catalog or compute one model's inventory."""
    parser = argparse.ArgumentParser(prog="python -m workers.inventory", description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", help="Hugging Face model id or local directory with config.json")
    parser.add_argument("--out", type=Path, help="where to write the inventory JSON")
    parser.add_argument("--catalog", action="store_true", help="regenerate the committed catalog inventories")
    args = parser.parse_args(argv)
    if args.catalog:
        for path in write_catalog_inventories():
            print(path)
        return 0
    if not args.source or not args.out:
        parser.error("give SOURCE and --out, or --catalog")
    # Bounded waits on the hub (huggingface_hub reads these when first imported): an unreachable hub fails in
    # seconds rather than retrying for half a minute.
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    try:
        inventory = inventory_from_source(args.source)
    except ConfigTooLarge as exc:
        print(f"{FAILURE_PREFIX} {exc}", file=sys.stderr)
        return 2
    except UnknownModel as exc:
        print(f"UnknownModelError: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:  # transformers' wording for a missing repo, a missing config or no network
        print(f"ModelLookupError: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(inventory, separators=(",", ":")) + "\n")
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    status = main()
    # The result is written and the web host is waiting on this process: the interpreter's teardown of torch
    # only adds seconds (many on a loaded host) before the next model's turn, so end here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
