"""One loaded base model per inference process, with several LoRA adapters on it, swapped per request.

This is what LoRA is for at inference: adapters are megabytes, the base is gigabytes, so a process loads the base
once and keeps up to `max_adapters` adapters beside it (PEFT's `load_adapter` / `set_adapter`; the least recently
used one is deleted when another is needed). A base reply runs with the adapters disabled, on the same weights.
A request for another base replaces the loaded one. Counts of loads are kept, so a test or an operator can see
that two adapters of one base cost one base load.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.base_models import load_base, resolve_device

log = logging.getLogger(__name__)


@dataclass
class EngineStats:
    """What the engine loaded since it started: loads are the costly part, switches are not."""

    base_loads: int = 0
    adapter_loads: int = 0
    adapter_evictions: int = 0
    base_load_seconds: float = 0.0
    adapter_load_seconds: float = 0.0
    loaded_adapters: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Loaded:
    """What a request found or had to load, for its `start` entry."""

    base_model: str
    adapter: str | None
    base_loaded: bool  # this request loaded the base
    adapter_loaded: bool  # this request loaded the adapter
    seconds: float  # spent loading for this request


class InferenceEngine:
    """The process's base model and adapters; one request at a time uses it (`lock`)."""

    def __init__(self, data_dir: Path, max_adapters: int = 8):
        self.data_dir = Path(data_dir)
        self.max_adapters = max(1, max_adapters)
        self.base_model: str | None = None
        self.model: Any = None
        self.tokenizer: Any = None
        self.device = "cpu"
        self._adapters: OrderedDict[str, Path] = OrderedDict()  # name -> folder, least recently used first
        self._adapted_layers: list[tuple[Any, bool]] | None = None  # (module, is a modules_to_save copy)
        self.stats = EngineStats()
        self.lock = threading.Lock()

    def prepare(self, base_model: str, adapter: tuple[str, Path] | None) -> Loaded:
        """Make `base_model` the loaded base and `adapter` (name, folder), if any, its active adapter."""
        started = time.perf_counter()
        base_loaded = self._ensure_base(base_model)
        adapter_loaded = False
        if adapter is not None:
            adapter_loaded = self._ensure_adapter(*adapter)
        return Loaded(base_model, adapter[0] if adapter else None, base_loaded, adapter_loaded,
                      time.perf_counter() - started)

    def _ensure_base(self, base_model: str) -> bool:
        if self.base_model == base_model and self.model is not None:
            return False
        self.unload()
        started = time.perf_counter()
        self.device = resolve_device()
        precision = "bf16" if self.device == "cuda" else "fp32"
        loaded = load_base(base_model, data_dir=self.data_dir, precision=precision)
        model = loaded.model
        model.config.use_cache = True  # load_base turns it off for training; generation wants it
        if self.device == "cuda":
            model = model.to("cuda")
        model.eval()
        self.model, self.tokenizer, self.base_model = model, loaded.tokenizer, base_model
        seconds = time.perf_counter() - started
        self.stats.base_loads += 1
        self.stats.base_load_seconds += seconds
        log.info("inference: loaded base %s in %.1f s (base load %d)", base_model, seconds, self.stats.base_loads)
        return True

    def _ensure_adapter(self, name: str, folder: Path) -> bool:
        if name in self._adapters:
            self._adapters.move_to_end(name)
            self._activate(name)
            return False
        from peft import PeftModel

        started = time.perf_counter()
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(folder), adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name)
            self.model.eval()
        self.model.set_adapter(name)
        self._adapters[name] = folder
        # Evicted after the new one is active: PEFT will not delete the adapter in use.
        while len(self._adapters) > self.max_adapters:
            oldest, _ = self._adapters.popitem(last=False)
            self.model.delete_adapter(oldest)
            self.stats.adapter_evictions += 1
            log.info("inference: evicted adapter %s (least recently used)", oldest)
        self._adapted_layers = None  # the new adapter may adapt other modules: find them again
        seconds = time.perf_counter() - started
        self.stats.adapter_loads += 1
        self.stats.adapter_load_seconds += seconds
        self.stats.loaded_adapters = list(self._adapters)
        log.info("inference: loaded adapter %s on %s in %.2f s", name, self.base_model, seconds)
        return True

    def _activate(self, name: str) -> None:
        """Make a loaded adapter the active one, for generation only.

        PEFT's `set_adapter` walks every module of the model twice and sets requires_grad on every LoRA parameter,
        which training needs and serving does not: 12 ms on the 135M demo model, 2 % of its load. Each adapted layer
        (and each modules_to_save copy) reads its active adapter from one attribute, set here on the layers found
        once per adapter load, as PEFT's own set_adapter sets them."""
        if self._adapted_layers is None:
            from peft.tuners.tuners_utils import BaseTunerLayer
            from peft.utils.other import AuxiliaryTrainingWrapper

            self._adapted_layers = [(module, isinstance(module, AuxiliaryTrainingWrapper))
                                    for module in self.model.modules()
                                    if isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper))]
        for module, is_copy in self._adapted_layers:
            # A modules_to_save copy without this adapter falls back to the original module, as in PEFT.
            module._active_adapter = (name if name in module._adapters else []) if is_copy else [name]
        self.model.base_model.active_adapter = name

    def adapters(self) -> list[str]:
        """The adapters loaded now, least recently used first."""
        return list(self._adapters)

    def unload(self) -> None:
        """Drop the base and its adapters (another base is wanted, or the process winds down)."""
        if self.model is None:
            return
        self.model = self.tokenizer = self.base_model = None
        self._adapters.clear()
        self._adapted_layers = None
        self.stats.loaded_adapters = []
        import gc

        gc.collect()
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()
