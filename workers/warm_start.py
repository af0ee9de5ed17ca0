"""A worker process's warm start: import the ML stack before it takes its first job, then freeze the collector.

Without it a worker's first job imports torch, transformers and peft after its claim (seconds of a job's
time, lease ticking), and every job's first full garbage collection (the Trainer runs one as training
starts) walks the hundreds of thousands of objects those imports leave behind. Imported here instead,
then moved out of the collector's view with `gc.freeze()`, neither lands on a job.

Celery's signals call `preload` in the process that runs tasks: the prefork pool's child (not its parent,
which must not touch CUDA before forking), or the worker itself for the solo and thread pools.
"""

from __future__ import annotations

import gc
import importlib
import logging
import time

log = logging.getLogger(__name__)

# What a job's claim-to-first-step path imports: the libraries, the parts of them that transformers
# and peft load lazily, and our own training modules. The demo model's architecture (Llama) too.
ML_MODULES = (
    "torch",
    "transformers",
    "transformers.trainer",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
    "transformers.models.llama.modeling_llama",
    "peft",
    "workers.base_models",
    "workers.training.supervised",
    "workers.lora_config",
    "workers.training.arguments",
    "workers.training.callbacks",
    "workers.training.run",
    "workers.job_runner",
)


def preload() -> None:
    """Import the ML stack into this process, then freeze what exists so later collections skip it."""
    started = time.perf_counter()
    try:
        for name in ML_MODULES:
            importlib.import_module(name)
    except Exception:  # a broken install fails its jobs with their own message; start anyway
        log.warning("could not preload the ML stack; jobs will import it themselves", exc_info=True)
        return
    imported = time.perf_counter() - started
    gc.collect()
    gc.freeze()
    import torch

    log.info("ML stack preloaded in %.1f s (torch %s); %d objects frozen out of the garbage collector",
             imported, torch.__version__, gc.get_freeze_count())
