"""Measuring the tensor memory of real LoRA training steps, by what holds it, to check the memory estimate against.

Owns the measurement side of `bench/memory.py` and of the estimator's memory test: small random-weight models of a
catalog architecture, wrapped and trained on the worker's own path (`_wrap_with_lora`, `training_arguments`, the
Tuneboard Trainer and padding collator), under torch's memory profiler. Each live tensor is put in the bucket of the
estimate component it belongs to, so `app.estimator.memory`'s terms can be compared one by one.

Imports torch, transformers and peft lazily; nothing in `app` may import this module.
"""

from __future__ import annotations

import gc
import json
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.estimator import catalog
from app.estimator.job_config import JobConfig

# The estimate's components that a measurement fills; `cuda_overhead` is measured apart, on a GPU only.
COMPONENTS = ("base_weights", "adapter_weights", "gradients", "optimizer_states", "activations", "logits")

# The values of a config that describe sizes; everything else (type, tying, biases, activation, soft-capping) is kept.
LARGEST = 12  # tensors listed from the peak, biggest first
_DROPPED_KEYS = ("layer_types", "max_window_layers", "rope_scaling", "quantization_config", "torch_dtype", "dtype")


@dataclass(frozen=True)
class Shape:
    """The size of a scaled-down model: the catalog model's vocabulary stays unless `vocab` is given."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int | None = None

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def scaled_catalog_config(model_id: str, shape: Shape, *, max_positions: int = 2048) -> Any:
    """A catalog model's committed config resized to `shape`, keeping its type, tying, biases and soft-capping."""
    from transformers import AutoConfig

    raw = json.loads(catalog.config_path(model_id).read_text())
    for key in _DROPPED_KEYS:
        raw.pop(key, None)
    vocab = shape.vocab or raw["vocab_size"]
    if raw["model_type"] == "gpt2":
        raw.update(n_embd=shape.hidden, n_layer=shape.layers, n_head=shape.heads, n_inner=shape.intermediate,
                   n_positions=max_positions, n_ctx=max_positions, vocab_size=vocab)
    else:
        raw.update(hidden_size=shape.hidden, intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
                   num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads, vocab_size=vocab,
                   max_position_embeddings=max_positions)
        for key, value in (("head_dim", shape.head_dim), ("query_pre_attn_scalar", shape.head_dim),
                           ("original_max_position_embeddings", max_positions)):
            if key in raw:
                raw[key] = value
        if raw.get("sliding_window"):
            raw["sliding_window"] = max_positions  # a window wider than every sequence, as in the full model
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if isinstance(raw.get(key), int) and raw[key] >= vocab:
            raw[key] = 0
        if isinstance(raw.get(key), list):
            raw[key] = [t for t in raw[key] if t < vocab] or 0
    return AutoConfig.for_model(raw["model_type"]).__class__.from_dict(raw)


@dataclass
class Measurement:
    """What one measured run held: the peak, each component at its own maximum, and what was live at the peak."""

    device: str
    peak: int  # most tensor bytes live at once (torch.cuda.max_memory_allocated on a GPU)
    components: dict[str, int]  # estimate component -> the most bytes its tensors held at any one time
    at_peak: dict[str, int]  # estimate component -> bytes live at the peak
    # (bytes, op that allocated it, component) of the biggest tensors live at the peak and at the activations' maximum
    largest: dict[str, list[tuple[int, str, str]]]
    seconds: float
    cuda_overhead: int | None = None  # device memory in use beyond tensors: CUDA context, allocator cache
    notes: list[str] = field(default_factory=list)


def _dtypes(precision: str) -> tuple[Any, str | None]:
    """Weight dtype and Trainer mixed precision of the worker's GPU recipe for `precision` (4bit computes in bf16)."""
    import torch

    if precision == "fp32":
        return torch.float32, None
    if precision == "fp16":
        return torch.float16, "fp16"
    return torch.bfloat16, "bf16"


def build_model(config: Any, job: JobConfig, device: str, scratch: Path) -> Any:
    """A random-weight model of `config`, loaded as `workers.base_models.load_base` loads a base for this job."""
    import torch
    from transformers import AutoModelForCausalLM

    from workers.base_models import _four_bit_config

    settings = job.training
    dtype, _ = _dtypes(settings.precision)
    torch.manual_seed(settings.seed)
    if settings.load_in_4bit:
        # Quantisation happens while loading, so the random model goes through a checkpoint as a real base does.
        AutoModelForCausalLM.from_config(config, dtype=dtype).save_pretrained(scratch / "base")
        model = AutoModelForCausalLM.from_pretrained(
            scratch / "base", dtype=dtype, quantization_config=_four_bit_config(dtype, device),
            device_map={"": torch.cuda.current_device()})
    else:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device)
    model.config.use_cache = False  # as load_base does
    return model


def _features(vocab: int, job: JobConfig, steps: int, seed: int) -> list[dict[str, list[int]]]:
    """Full-length random sequences that train on every token: the largest batches the settings allow."""
    import torch

    settings = job.training
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(settings.batch_size * settings.gradient_accumulation_steps * steps):
        ids = torch.randint(3, vocab, (settings.sequence_length,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": ids})
    return rows


def _bare_tokenizer(vocab: int) -> Any:
    """A word-level tokenizer of three tokens (padding 0, end 1, unknown 2): the trainer wants one, the probe's
    batches are ids already."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    return Tokenizer(WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2}, unk_token="<unk>"))


def _lm_head_tile_sized(nbytes: int, tokens: int, batch: int, vocab: int) -> bool:
    """Whether a tensor of `nbytes` has the shape of one of the LM head's logit tiles (TRL's chunked head: up to
    TILE_TOKENS of the micro-batch's scored positions by up to TILE_VOCAB entries), in any dtype or as a mask."""
    from app.estimator.memory import TILE_TOKENS, TILE_VOCAB

    columns = min(vocab, TILE_VOCAB)
    for itemsize in (1, 2, 4):
        rows, rest = divmod(nbytes, columns * itemsize)
        if not rest and min(tokens - batch, TILE_TOKENS) <= rows <= min(tokens, TILE_TOKENS):
            return True
    return False


def _classify(profile: Any, device: Any, parameters: list[Any], tokens: int, batch: int, vocab: int,
              explain: bool):
    """Walk the profiler's timeline; return (peak, component maxima, components at the peak, biggest tensors)."""
    from torch.profiler._memory_profiler import Action, Category, TensorKey, _EventType

    trainable = [p for p in parameters if p.requires_grad]
    trainable_ptrs = {p.data_ptr() for p in trainable}
    trainable_sizes = {p.numel() * p.element_size() for p in trainable}  # a weight's gradient has its dtype
    parameter_ptrs = {p.data_ptr() for p in parameters}

    def copies_a_weight(op: Any) -> bool:
        inputs = op.typed[1].inputs if op.typed[0] == _EventType.TorchOp else []
        source = inputs[0] if inputs else None
        return op.name == "aten::_to_copy" and getattr(source, "storage_data_ptr", None) in parameter_ptrs

    made_by: dict[int, str] = {}  # allocation id -> the outermost aten op that allocated it (linear, not mm)
    weight_copies: set[int] = set()  # allocation ids of autocast's compute-dtype copies of weights
    for event in profile._op_tree.dfs():
        if event.typed[0] == _EventType.Allocation and event.typed[1].alloc_size > 0:
            key = TensorKey.from_allocation(event.typed[1])
            if key is None:
                continue
            op = event.parent
            while op is not None and op.parent is not None and op.parent.name.startswith("aten::"):
                if copies_a_weight(op):
                    weight_copies.add(key.storage.allocation_id)
                op = op.parent
            made_by[key.storage.allocation_id] = op.name if op is not None else "?"

    def component(key: Any, version: int, nbytes: int) -> str:
        category = profile._categories.get(key, version) if isinstance(key, TensorKey) else None
        # The profiler infers categories from how tensors flow; it takes a tile TRL's LM head allocates for a
        # parameter, so a parameter is only what the model holds.
        if category == Category.PARAMETER and key.storage.ptr in parameter_ptrs:
            return "adapter_weights" if key.storage.ptr in trainable_ptrs else "base_weights"
        if category == Category.GRADIENT and nbytes in trainable_sizes:
            return "gradients"
        # Other gradients the profiler sees accumulate are an activation's (checkpointing makes the embeddings'
        # output require one); they are checked with the activations.
        if category == Category.OPTIMIZER_STATE:
            return "optimizer_states"
        # A weight's compute-dtype copy can have a logits tensor's size (a vocab x hidden head when the micro-batch
        # has as many tokens as the hidden size): it is told apart by where it came from.
        copy = isinstance(key, TensorKey) and key.storage.allocation_id in weight_copies
        if not copy and _lm_head_tile_sized(nbytes, tokens, batch, vocab):
            return "logits"
        return "activations"

    live: Counter[str] = Counter()
    tensors: dict[tuple[Any, int], tuple[int, str]] = {}  # (key, version) -> (bytes, component), for the listings
    maxima: Counter[str] = Counter()
    peak, at_peak = 0, {}
    largest: dict[str, list[tuple[int, str, str]]] = {"peak": [], "activations": []}

    def snapshot() -> list[tuple[int, str, str]]:
        found = [(n, made_by.get(k.storage.allocation_id, "?") if isinstance(k, TensorKey) else "?", c)
                 for (k, _v), (n, c) in tensors.items()]
        return sorted(found, reverse=True)[:LARGEST]

    seen: set[int] = set()  # storages the profiled step touched
    for _, action, (key, version), nbytes in profile.timeline:
        if key.device != device:
            continue
        if isinstance(key, TensorKey):
            seen.add(key.storage.ptr)
        if action in (Action.PREEXISTING, Action.CREATE):
            name = component(key, version, nbytes)
            live[name] += nbytes
            tensors[(key, version)] = (nbytes, name)
        elif action == Action.INCREMENT_VERSION:
            old = component(key, version, nbytes)
            new = component(key, version + 1, nbytes)
            live[old] -= nbytes
            live[new] += nbytes
            tensors.pop((key, version), None)
            tensors[(key, version + 1)] = (nbytes, new)
        elif action == Action.DESTROY:
            live[component(key, version, nbytes)] -= nbytes
            tensors.pop((key, version), None)
        if live["activations"] > maxima["activations"]:
            largest["activations"] = snapshot() if explain else []
        for name, value in live.items():
            if value > maxima[name]:
                maxima[name] = value
        total = sum(live.values())
        if total > peak:
            peak, at_peak = total, dict(live)
            largest["peak"] = snapshot() if explain else []
    # Weights no operator read in the step (the frozen original of a modules_to_save copy) never show in the
    # profile, but hold their memory throughout.
    unseen: dict[int, Any] = {p.data_ptr(): p for p in parameters if p.device == device and p.data_ptr() not in seen}
    for param in unseen.values():
        name = "adapter_weights" if param.requires_grad else "base_weights"
        nbytes = param.untyped_storage().nbytes()
        peak += nbytes
        at_peak[name] = at_peak.get(name, 0) + nbytes
        maxima[name] += nbytes
    return peak, dict(maxima), at_peak, largest


def _profile_last_step(prof: Any, steps: int, device: str) -> Any:
    """A Trainer callback that profiles only the last optimizer step, when the optimizer states exist.

    The weights, the states and the inputs made before it show in the profile as pre-existing tensors, as its
    operators read them; profiling one step instead of all halves the profiler's cost."""
    import torch
    from transformers import TrainerCallback

    class ProfileLastStep(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == steps - 1:
                if device == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                prof.start()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == steps:
                prof.stop()

    return ProfileLastStep()


def measure_training_memory(config: Any, job: JobConfig, *, steps: int = 2, device: str = "cpu",
                            explain: bool = False) -> Measurement:
    """Run `steps` optimizer steps of `job` on a random-weight model of `config` under the memory profiler."""
    import torch
    from datasets import Dataset
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfile
    from transformers import PreTrainedTokenizerFast
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig

    from workers.training.arguments import training_arguments
    from workers.training.contract import TrainingRun
    from workers.training.run import _wrap_with_lora
    from workers.training.supervised import SupervisedData, sft_settings, sft_trainer

    settings = job.training.model_copy(update={"max_steps": steps, "save_steps": steps + 1, "logging_steps": 1})
    job = job.model_copy(update={"training": settings})
    _, mixed = _dtypes(settings.precision)
    vocab = config.vocab_size
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tuneboard-memory-") as scratch:
        scratch_dir = Path(scratch)
        run = TrainingRun(job_id="memory-probe", config=job, train_examples=[], eval_examples=None,
                          output_dir=scratch_dir / "run", resume_from=None, data_dir=scratch_dir)
        model = _wrap_with_lora(build_model(config, job, device, scratch_dir), run)
        parameters = list(model.parameters())
        args = training_arguments(settings, checkpoints_dir=run.checkpoints_dir, mixed_precision=mixed,
                                  device=device, has_eval=False, arguments_class=SFTConfig, **sft_settings(settings))
        rows = _features(vocab, job, steps, settings.seed)
        data = SupervisedData(Dataset.from_list(rows), len(rows), 0, 0, sum(len(r["input_ids"]) for r in rows))
        # The random ids need no vocabulary: a tokenizer that only names its padding and end tokens.
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=_bare_tokenizer(vocab), pad_token="<pad>",
                                            eos_token="</s>")
        trainer = sft_trainer(model, tokenizer, args, data, None, [],
                              pad_to_multiple_of=8 if device == "cuda" else None)
        trainer.remove_callback(PrinterCallback)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        prof = profile(activities=activities, profile_memory=True, record_shapes=True, with_stack=True)
        trainer.add_callback(_profile_last_step(prof, steps, device))
        trainer.train()
        cuda_peak = cuda_overhead = None
        if device == "cuda":
            torch.cuda.synchronize()
            cuda_peak = torch.cuda.max_memory_allocated()
            free, total = torch.cuda.mem_get_info()
            # What the process holds beyond its largest set of live tensors: context, kernels, cuBLAS workspaces
            # and the caching allocator's unused blocks (nothing was released since the peak).
            cuda_overhead = (total - free) - cuda_peak
        memory_profile = MemoryProfile(prof.profiler.kineto_results)
        tokens = settings.batch_size * settings.sequence_length
        if device == "cuda":
            tokens = settings.batch_size * (-(-settings.sequence_length // 8) * 8)
        peak, maxima, at_peak, largest = _classify(memory_profile, torch.device(device, 0) if device == "cuda"
                                                   else torch.device(device), parameters, tokens,
                                                   settings.batch_size, vocab, explain)
        del trainer, model, prof, memory_profile
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return Measurement(device=device, peak=cuda_peak if cuda_peak is not None else peak,
                       components={name: maxima.get(name, 0) for name in COMPONENTS},
                       at_peak={name: at_peak.get(name, 0) for name in COMPONENTS}, largest=largest,
                       seconds=time.perf_counter() - started, cuda_overhead=cuda_overhead)
