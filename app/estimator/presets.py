"""Named LoRA presets (module sets and the three patterns users know), resolved per model.

Pure stdlib; must not import torch or `workers`.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.estimator.block_diagram import BlockDiagram


@dataclass(frozen=True, slots=True)
class Preset:
    key: str
    label: str
    description: str
    mode: str  # "modules" or "all-linear"
    targets: tuple[str, ...]
    r: int | None = None
    alpha: int | None = None
    dropout: float | None = None
    parameters: tuple[str, ...] = ()  # target_parameters: a mixture-of-experts block's stacked expert weights


def _attention(diagram: BlockDiagram):
    return next((s for s in diagram.sections if s.title == "Attention"), None)


def _query_value(diagram: BlockDiagram) -> tuple[str, ...]:
    attention = _attention(diagram)
    if attention is None:
        return ()
    named = [b.target for b in attention.inputs if b.target.split(".")[-1] in ("q_proj", "v_proj", "query", "value")]
    # Fused projections (GPT-2 c_attn, Phi-3 qkv_proj) hold q and v in one layer.
    return tuple(named) or tuple(b.target for b in attention.inputs[:1])


def _full_attention(diagram: BlockDiagram) -> tuple[str, ...]:
    attention = _attention(diagram)
    if attention is None:
        return ()
    return tuple(b.target for b in (*attention.inputs, *([attention.output] if attention.output else [])))


def _whole_block(diagram: BlockDiagram) -> tuple[str, ...]:
    return tuple(b.target for s in diagram.sections for b in (*s.inputs, *([s.output] if s.output else []))
                 if b.field == "target_modules")


def expert_parameters(diagram: BlockDiagram) -> tuple[str, ...]:
    """The stacked expert weights of a mixture-of-experts block (not its router): the MLP of such a model."""
    return tuple(b.target for s in diagram.sections for b in (*s.inputs, *([s.output] if s.output else []))
                 if b.field == "target_parameters" and b.experts > 1)


def presets_for(diagram: BlockDiagram) -> list[Preset]:
    """The module-set presets and the Conservative / Balanced / Maximum-capacity patterns for this model; on a
    mixture-of-experts model "MLP" means the experts, which LoRA reaches through target_parameters."""
    qv, attention, block = _query_value(diagram), _full_attention(diagram), _whole_block(diagram)
    experts = expert_parameters(diagram)
    return [
        Preset("attention-qv", "Attention only (q, v)", "Style and format changes.", "modules", qv),
        Preset("attention-all", "Full attention", "Instruction tuning.", "modules", attention),
        Preset("attention-mlp", "Attention + MLP", "Every projection: the common default.", "modules", block,
               parameters=experts),
        Preset("all-linear", "all-linear", "Every Linear layer except the output head.", "all-linear", ()),
        Preset("conservative", "Conservative", "r=8, alpha=8, q+v, dropout 0.05.", "modules", qv, 8, 8, 0.05),
        Preset("balanced", "Balanced", "r=16, alpha=16, attention + MLP, dropout 0.", "modules", block, 16, 16, 0.0,
               experts),
        Preset("maximum", "Maximum capacity", "r=64, alpha=64, attention + MLP, dropout 0.", "modules", block, 64,
               64, 0.0, experts),
    ]


# The offline demo (SmolLM2-135M-Instruct on app/datasets/demo_data/demo_chat.jsonl, every answer "Tuneboard tip: ...
# Happy tuning!"): the form's Balanced defaults (r=16, alpha=16, every projection) with a LoRA-sized learning rate,
# about 10x full fine-tuning's (Schulman et al., "LoRA Without Regret", 2025). 30 steps at the 2e-4 default never
# showed the format; at 2e-3 every held-out question gets it (tests/faults/test_demo_learns.py), on 2 CPU cores in
# 30 steps of 4 short conversations (about 250 tokens each step).
DEMO_MAX_STEPS = 30
DEMO_LEARNING_RATE = 2e-3
DEMO_JOB_SETTINGS: dict[str, dict] = {
    "lora": {"r": 16, "lora_alpha": 16, "lora_dropout": 0.0,
             "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
    "training": {"max_steps": DEMO_MAX_STEPS, "learning_rate": DEMO_LEARNING_RATE, "batch_size": 4,
                 "sequence_length": 1024, "gradient_checkpointing": True, "lr_scheduler": "linear"},
}
