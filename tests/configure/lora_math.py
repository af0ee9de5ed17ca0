"""Expected LoRA counts for the web tests, worked out from a model's config.json: r * (in + out) * layers.

Independent of the estimator on purpose: shapes come from the committed configs and the formula in
LORA.md, never from the app's own output.
"""

from __future__ import annotations

import json

from app.settings import REPO_ROOT

CONFIGS = REPO_ROOT / "app" / "estimator" / "catalog_data" / "configs"
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
GPT2 = "openai-community/gpt2"
PHI3 = "microsoft/Phi-3-mini-4k-instruct"
LLAMA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def config(model_id: str) -> dict:
    """The committed config.json of a catalog model."""
    return json.loads((CONFIGS / f"{model_id.replace('/', '--')}.json").read_text())


def layers(cfg: dict) -> int:
    return cfg.get("num_hidden_layers") or cfg["n_layer"]


def llama_shapes(cfg: dict) -> dict[str, tuple[int, int]]:
    """(in, out) of each projection in a Llama-style block, grouped-query attention included."""
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or hidden // heads
    kv = cfg.get("num_key_value_heads") or heads
    inter = cfg["intermediate_size"]
    return {
        "q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv * head_dim), "v_proj": (hidden, kv * head_dim),
        "o_proj": (heads * head_dim, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }


def phi3_shapes(cfg: dict) -> dict[str, tuple[int, int]]:
    """Phi-3 fuses q, k, v into qkv_proj and gate, up into gate_up_proj."""
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = hidden // heads
    kv = cfg.get("num_key_value_heads") or heads
    inter = cfg["intermediate_size"]
    return {
        "qkv_proj": (hidden, (heads + 2 * kv) * head_dim), "o_proj": (heads * head_dim, hidden),
        "gate_up_proj": (hidden, 2 * inter), "down_proj": (inter, hidden),
    }


def gpt2_shapes(cfg: dict) -> dict[str, tuple[int, int]]:
    """GPT-2's Conv1D projections, named by the target that selects exactly one of them."""
    n = cfg["n_embd"]
    inner = cfg.get("n_inner") or 4 * n
    return {"c_attn": (n, 3 * n), "attn.c_proj": (n, n), "c_fc": (n, inner), "mlp.c_proj": (inner, n)}


def lora_params(r: int, shapes: dict[str, tuple[int, int]], targets, n_layers: int) -> int:
    """Trainable LoRA weights for `targets` adapted in every layer: r * (in + out) * layers."""
    return sum(r * (shapes[t][0] + shapes[t][1]) for t in targets) * n_layers


def peft_line(trainable: int, total: int) -> str:
    """The line PEFT's print_trainable_parameters() prints."""
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
