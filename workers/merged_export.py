"""Building a job's merged model: the base with the adapter folded into its weights, stored for download.

PEFT's `merge_and_unload` adds each LoRA update (B·A·alpha/r) into the layer it adapts and drops the adapter, so
the result is a plain transformers checkpoint: safetensors shards, config and tokenizer, loadable with
`AutoModelForCausalLM.from_pretrained` alone (and by vLLM, llama.cpp's converter or Ollama). It is saved in the
job's training precision (fp32 stays fp32; bf16 and QLoRA runs give bf16, as their bases ship), merged in the
precision the base loads in on this worker. Progress goes to the export's row as it goes; the lease is renewed
meanwhile, so a worker that dies leaves an export that may be asked for again.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

from app.db import new_session
from app.estimator.job_config import JobConfig
from app.jobs import exports
from app.jobs.ollama_modelfile import merged_modelfile, merged_name
from app.settings import Settings, get_settings
from app.storage import artifacts
from app.tables import Job

log = logging.getLogger(__name__)
SHARD_SIZE = "2GB"  # what the hub's own checkpoints use: small enough to resume, few enough to list
_SAVED_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class _LeaseKeeper(threading.Thread):
    """Renews the export's lease while a long step (a load, a save) reports nothing."""

    def __init__(self, settings: Settings, export_id: str, worker: str):
        super().__init__(name=f"lease-{export_id}", daemon=True)
        self.settings, self.export_id, self.worker = settings, export_id, worker
        self.stopped, self.lost = threading.Event(), threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.settings.heartbeat_seconds):
            try:
                with new_session() as session:
                    if not exports.renew(session, self.export_id, self.worker, self.settings):
                        self.lost.set()
                        return
            except Exception:  # a brief DB outage must not end the build; the lease has slack
                log.exception("export %s: lease renewal failed", self.export_id)


class _Progress:
    def __init__(self, settings: Settings, export_id: str, worker: str, keeper: _LeaseKeeper):
        self.settings, self.export_id, self.worker, self.keeper = settings, export_id, worker, keeper

    def __call__(self, fraction: float, stage: str) -> None:
        log.info("export %s: %d %% %s", self.export_id, round(fraction * 100), stage)
        with new_session() as session:
            if not exports.report(session, self.export_id, self.worker, self.settings, fraction, stage):
                self.keeper.lost.set()
        if self.keeper.lost.is_set():
            raise _Lost()


class _Lost(Exception):
    """Another worker took the export over (this one's lease had expired)."""


def _readme(job: Job, dtype: str) -> str:
    folder = merged_name(job)
    return (f"# {folder}\n\n{job.model.strip()} with the LoRA adapter of Tuneboard job `{job.id}` merged into its "
            f"weights (PEFT `merge_and_unload`), saved in {dtype}. No PEFT is needed to use it:\n\n"
            f"```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"model = AutoModelForCausalLM.from_pretrained({folder!r})\n"
            f"tokenizer = AutoTokenizer.from_pretrained({folder!r})\n```\n\n"
            f"Ollama: `ollama create {folder.lower()} -f Modelfile` in this folder. The adapter's own card (data, "
            f"settings, losses) is in the adapter zip.\n")


def build_merged(settings: Settings, job: Job, out: Path, progress) -> None:
    """Write the merged model of a succeeded job into `out`: shards, config, tokenizer, README.md and Modelfile."""
    import torch
    from peft import PeftModel

    from workers.base_models import load_base

    config = JobConfig.model_validate(job.config)
    saved_as = _SAVED_DTYPE[config.training.precision]
    progress(0.02, f"Loading the base model {config.model.strip()}.")
    base = load_base(config.model, data_dir=settings.data_dir, precision=config.training.precision)
    progress(0.35, "Loading the adapter.")
    adapter_dir = artifacts.local_dir(settings, job.adapter_key)
    model = PeftModel.from_pretrained(base.model, str(adapter_dir))
    progress(0.45, "Merging the adapter into the base weights.")
    with torch.no_grad():
        merged = model.merge_and_unload()
    merged = merged.to(getattr(torch, saved_as))
    merged.config.use_cache = True  # training turned it off; whoever loads the merged model generates
    progress(0.55, f"Writing safetensors shards ({saved_as}).")
    merged.save_pretrained(out, safe_serialization=True, max_shard_size=SHARD_SIZE)
    base.tokenizer.save_pretrained(out)
    (out / "README.md").write_text(_readme(job, saved_as))
    (out / "Modelfile").write_text(merged_modelfile(job))


def _store(settings: Settings, out: Path, key: str, progress) -> list[dict]:
    """Store every file of `out` under `key`, reporting progress by bytes; returns [{name, bytes}]."""
    files = sorted(path for path in out.iterdir() if path.is_file())
    total = sum(path.stat().st_size for path in files) or 1
    done = 0
    listed = []
    for path in files:
        size = path.stat().st_size
        if artifacts.get_store(settings).local_path(f"{key}/{path.name}") != path:
            progress(0.6 + 0.4 * done / total, f"Storing {path.name} ({done * 100 // total} % of the bytes).")
            artifacts.save_file(settings, f"{key}/{path.name}", path)
        done += size
        listed.append({"name": path.name, "bytes": size})
    return listed


def run_export(export_id: str, worker: str) -> str:
    """Build one merged-model export to its end; returns the status it ended with, or 'skipped'."""
    settings = get_settings()
    with new_session() as session:
        export = exports.claim(session, export_id, worker, settings)
        if export is None:
            log.info("export %s: nothing to claim (duplicate delivery, or built meanwhile)", export_id)
            return "skipped"
        job = session.get(Job, export.job_id)
        # A build of its own: a worker that lost the export never writes into the folder its successor fills.
        key = f"{exports.export_key(job.id, export.kind)}/build-{time.time_ns()}"
        keeper = _LeaseKeeper(settings, export_id, worker)
        keeper.start()
        progress = _Progress(settings, export_id, worker, keeper)
        out = artifacts.work_dir(settings, key)
        try:
            build_merged(settings, job, out, progress)
            files = _store(settings, out, key, progress)
            if exports.succeed(session, export_id, worker, key, files):
                log.info("export %s: stored %d files under %s", export_id, len(files), key)
                return exports.SUCCEEDED
            return "lost"
        except _Lost:
            log.warning("export %s: another worker took it over; leaving it", export_id)
            return "lost"
        except Exception as exc:  # any failure ends the export with its reason, not a stuck "running"
            log.exception("export %s failed", export_id)
            reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
            if (store_failure := artifacts.store_failure(settings, exc)) is not None:
                reason = str(store_failure)
            exports.fail(session, export_id, worker, reason)
            shutil.rmtree(out, ignore_errors=True)
            return exports.FAILED
        finally:
            keeper.stopped.set()
            if artifacts.is_remote(settings):
                shutil.rmtree(out, ignore_errors=True)
