"""One transformer block of a model, laid out for the module picker: sections of projection boxes.

Each box carries the shortest `target_modules` entry that selects exactly that projection in every
layer (GPT-2's `c_proj` needs `attn.c_proj` / `mlp.c_proj`). A mixture-of-experts block adds its stacked
expert weights (one box standing for all experts) and its router, which LoRA reaches through
`target_parameters`. Pure stdlib; no torch, no `workers`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.estimator.inventory import ADAPTABLE_KINDS, Inventory, Module, layer_group_name


@dataclass(frozen=True, slots=True)
class Box:
    target: str  # the target_modules entry that selects this projection in every layer
    path: str  # name relative to the block
    type: str
    in_features: int
    out_features: int
    count: int  # modules across the model that the target selects
    has_bias: bool
    field: str = "target_modules"  # or "target_parameters" for an expert weight or a router
    experts: int = 1  # a stacked expert weight: LoRA of rank r for each expert

    @property
    def per_rank(self) -> int:
        return self.experts * (self.in_features + self.out_features)


@dataclass
class Section:
    title: str
    container: str
    inputs: list[Box] = field(default_factory=list)
    output: Box | None = None


@dataclass
class BlockDiagram:
    block_pattern: str
    layer_count: int
    sections: list[Section]
    norms: list[str]
    outside: list[Box]  # targetable modules outside the blocks: embeddings, output head
    other_towers: int = 0  # adaptable modules outside the language model (a vision tower), not drawn

    @property
    def boxes(self) -> list[Box]:
        """The boxes target_modules can name (expert weights and routers are target_parameters)."""
        inside = [b for s in self.sections for b in (*s.inputs, *([s.output] if s.output else []))]
        return [b for b in inside + self.outside if b.field == "target_modules"]


def _section_title(container: str) -> str:
    lowered = container.lower()
    if "attn" in lowered or "attention" in lowered:
        return "Attention"
    if "mlp" in lowered or "feed_forward" in lowered or "ffn" in lowered:
        return "MLP"
    return container


def _shortest_target(module: Module, adaptable: list[Module]) -> tuple[str, int]:
    pattern = layer_group_name(module.name)
    same_pattern = {m.name for m in adaptable if layer_group_name(m.name) == pattern}
    parts = module.name.split(".")
    for k in range(1, len(parts) + 1):
        suffix = ".".join(parts[-k:])
        hits = {m.name for m in adaptable if m.name == suffix or m.name.endswith("." + suffix)}
        if hits == same_pattern:
            return suffix, len(hits)
    # No name selects exactly this projection's layers: a multimodal model's vision tower has its own q_proj. The
    # shortest name that selects all of them selects the others too, as it would in PEFT, and counts them.
    for k in range(1, len(parts) + 1):
        suffix = ".".join(parts[-k:])
        hits = {m.name for m in adaptable if m.name == suffix or m.name.endswith("." + suffix)}
        if hits >= same_pattern and len(same_pattern) > 1:
            return suffix, len(hits)
    return module.name, 1


# Names architectures give the projection that leads back into the residual stream. Registration order is
# no guide: Phi-3 registers o_proj before qkv_proj.
_OUTPUT_NAMES = ("o_proj", "out_proj", "c_proj", "down_proj", "dense", "fc2", "wo", "dense_4h_to_h", "proj")


def _output_index(boxes: list[Box]) -> int:
    for name in _OUTPUT_NAMES:
        for index, box in enumerate(boxes):
            if box.path.rsplit(".", 1)[-1] == name:
                return index
    return len(boxes) - 1


def _box(module: Module, block_prefix: str, adaptable: list[Module]) -> Box:
    target, count = _shortest_target(module, adaptable)
    return Box(
        target=target, path=module.name.removeprefix(block_prefix), type=module.type,
        in_features=module.in_features, out_features=module.out_features, count=count,
        has_bias=module.bias is not None,
    )


def _is_router(module: Module) -> bool:
    return module.kind == "other" and ("router" in module.type.lower() or module.short_name in ("gate", "router"))


def _parameter_boxes(module: Module, block_prefix: str, inventory: Inventory) -> list[Box]:
    """Boxes for a block module's own weights that LoRA reaches only as parameters: stacked experts, routers."""
    if module.kind != "other" or not module.params:
        return []
    count = sum(1 for m in inventory.modules if m.group_name == module.group_name)
    boxes = []
    for param in module.params:
        name = param.full_name.rpartition(".")[2]
        shape = param.shape
        if len(shape) == 3:
            experts, first, second = shape
            in_features, out_features = (first, second) if module.transposed else (second, first)
        elif len(shape) == 2 and name == "weight" and _is_router(module):
            experts, in_features, out_features = 1, shape[1], shape[0]
        else:
            continue
        boxes.append(Box(
            target=f"{module.short_name}.{name}", path=f"{module.name.removeprefix(block_prefix)}.{name}",
            type="Router" if experts == 1 else f"{experts} experts", in_features=in_features,
            out_features=out_features, count=count, has_bias=False, field="target_parameters", experts=experts,
        ))
    return boxes


def block_diagram(inventory: Inventory) -> BlockDiagram:
    """The first decoder block's projections grouped by their parent (attention, MLP)."""
    block = inventory.first_block()
    adaptable = [m for m in inventory.modules if m.kind in ADAPTABLE_KINDS]
    if not block:
        return BlockDiagram("", 0, [], [], [_box(m, "", adaptable) for m in adaptable])
    block_prefix = block[0].name.rsplit(".", 1)[0] + "."
    sections: dict[str, Section] = {}
    norms = []
    for module in block:
        relative = module.name.removeprefix(block_prefix)
        if module.kind in ADAPTABLE_KINDS:
            container = relative.rsplit(".", 1)[0] if "." in relative else ""
            section = sections.setdefault(container, Section(_section_title(container or "block"), container))
            section.inputs.append(_box(module, block_prefix, adaptable))
        elif parameter_boxes := _parameter_boxes(module, block_prefix, inventory):
            container = relative.rsplit(".", 1)[0] if "." in relative else ""
            section = sections.setdefault(container, Section(_section_title(container or "block"), container))
            section.inputs.extend(parameter_boxes)
        elif "norm" in module.type.lower() or "norm" in module.short_name or module.short_name.startswith("ln"):
            if module.params:
                norms.append(relative)
    for section in sections.values():
        if len(section.inputs) > 1:
            section.output = section.inputs.pop(_output_index(section.inputs))
    block_root = block_prefix.rstrip(".")
    stack = block_root.rsplit(".", 1)[0] + "."
    text = [m for m in adaptable if inventory.in_language_model(m)]
    outside = [_box(m, "", adaptable) for m in text if not m.name.startswith(stack)]
    return BlockDiagram(
        block_pattern=layer_group_name(block_root),
        layer_count=inventory.num_layers or 0,
        sections=list(sections.values()),
        norms=norms,
        outside=outside,
        other_towers=len(adaptable) - len(text),
    )
