"""Advice on a LoRA configuration, drawn from the practice summarised in shared LoRA guidance.

Each piece of advice names the field it concerns so the page can show it beside that field.
Pure stdlib + pydantic; must not import torch or `workers`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from app.estimator.inventory import Inventory
from app.estimator.lora_settings import LoraSettings
from app.estimator.matching import Selection

ALL_SEVEN = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})


class Advice(BaseModel):
    field: str
    level: Literal["info", "warning"]
    message: str


def _rank_vs_data(r: int, examples: int | None) -> list[Advice]:
    if examples is None:
        return []
    if examples < 500 and r > 16:
        return [Advice(field="r", level="warning", message=(
            f"r={r} with only {examples:,} examples risks overfitting; keep r at 4-16 below 500 examples."))]
    if examples <= 2000 and r > 32:
        return [Advice(field="r", level="warning", message=(
            f"r={r} is high for {examples:,} examples; r=16 is the safe choice for 500-2,000 examples."))]
    return []


def _rank_scale(r: int, hidden: int | None, adapted_names: set[str]) -> list[Advice]:
    advice = []
    if hidden and r >= hidden:
        advice.append(Advice(field="r", level="warning", message=(
            f"r={r} reaches the hidden size ({hidden}): the adapter saves nothing over full fine-tuning.")))
    elif hidden and r >= hidden // 2:
        advice.append(Advice(field="r", level="warning", message=(
            f"r={r} is close to the hidden size ({hidden}); LoRA's saving is mostly gone.")))
    elif r > 64:
        advice.append(Advice(field="r", level="info", message=(
            f"r={r} approaches full fine-tuning; above 32 rarely helps on most tasks.")))
    if r <= 4 and ALL_SEVEN <= adapted_names:
        advice.append(Advice(field="r", level="info", message=(
            "All seven projections at r<=4 suggests a complex task on a very low rank: watch for underfitting.")))
    return advice


def _alpha(settings: LoraSettings) -> list[Advice]:
    scale = settings.lora_alpha / (settings.r**0.5 if settings.use_rslora else settings.r)
    if settings.use_rslora:
        return [Advice(field="lora_alpha", level="info", message=(
            f"rsLoRA scales by alpha/sqrt(r) = {scale:.3g}; alpha = r gives sqrt(r) times the plain-LoRA scale."))]
    if scale > 2:
        return [Advice(field="lora_alpha", level="warning", message=(
            f"alpha/r = {scale:.3g}: more than 2x strengthens the update a lot; alpha = r (1.0) or 2r is usual."))]
    if scale < 0.5:
        return [Advice(field="lora_alpha", level="warning", message=(
            f"alpha/r = {scale:.3g}: below r/2 the adapter barely moves the model; alpha = r is the default."))]
    return []


def _dropout(dropout: float, examples: int | None) -> list[Advice]:
    if examples is None:
        return []
    if examples >= 500 and dropout > 0.05:
        return [Advice(field="lora_dropout", level="info", message=(
            f"With {examples:,} examples dropout 0.0 is usual; use 0.1 only if you see overfitting."))]
    if examples < 500 and dropout == 0:
        return [Advice(field="lora_dropout", level="info", message=(
            f"With {examples:,} examples a light dropout of 0.05 helps regularise."))]
    return []


def _saves(selection: Selection) -> list[Advice]:
    advice = [
        Advice(field="modules_to_save", level="warning", message=(
            f"modules_to_save entry {entry!r} matches no module of this model; PEFT silently ignores it."))
        for entry in selection.unmatched_saves
    ]
    names = [m.name for m in selection.saved]
    nested = next(((inner, outer) for inner in names for outer in names if inner.startswith(outer + ".")), None)
    if nested:
        advice.append(Advice(field="modules_to_save", level="warning", message=(
            f"{nested[0]!r} lies inside {nested[1]!r}, which is already saved in full; PEFT may keep an extra "
            "copy of it. Name only the outer module (entries match by suffix: GPT-2's 'attn' also hits "
            "'c_attn'; write '.attn').")))
    base_layer = next((name for name in names if name.endswith(".base_layer")), None)
    if base_layer:
        layer = base_layer.removesuffix(".base_layer")
        advice.append(Advice(field="modules_to_save", level="warning", message=(
            f"{base_layer!r} is the original weight PEFT keeps inside the LoRA layer {layer!r}: saving it trains "
            "a full copy of that weight beside the adapter. To train the layer in full instead, take it out of "
            "target_modules and name it in modules_to_save.")))
    return advice


def advise(
    inventory: Inventory,
    settings: LoraSettings,
    selection: Selection,
    *,
    dataset_examples: int | None,
    has_validation_set: bool,
) -> list[Advice]:
    """Warnings and tips for this configuration, each tied to a field."""
    adapted_names = {a.module.short_name for a in selection.adapted}
    advice = _rank_vs_data(settings.r, dataset_examples)
    advice += _rank_scale(settings.r, inventory.hidden_size, adapted_names)
    advice += _alpha(settings)
    advice += _dropout(settings.lora_dropout, dataset_examples)
    if adapted_names <= {"q_proj", "v_proj"} and adapted_names:
        advice.append(Advice(field="target_modules", level="info", message=(
            "Attention-only (q, v) suits style and format; add the MLP projections for domain adaptation.")))
    if settings.bias != "none":
        advice.append(Advice(field="bias", level="info", message=(
            f'bias="{settings.bias}" also trains biases, and the model then differs from the base even with '
            'the adapter disabled; "none" is almost always right.')))
    advice += _saves(selection)
    if not has_validation_set:
        advice.append(Advice(field="validation", level="warning", message=(
            "No validation set: hold some examples out, or you cannot tell learning from memorising.")))
    return advice
