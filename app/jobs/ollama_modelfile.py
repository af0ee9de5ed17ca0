"""Ollama `Modelfile`s for a finished job: one that applies the adapter to its base, one for the merged model.

Ollama builds a model from a folder of safetensors weights (`FROM <folder>`) and applies a safetensors LoRA
adapter on top (`ADAPTER <folder>`), for the architectures it supports (Llama, Mistral, Gemma, Phi-3 and their
kin). The adapter's Modelfile travels in the adapter zip, the merged one in the merged model's folder, each saying
in comments how to use it. Must not import torch or `workers`.
"""

from __future__ import annotations

from app.jobs.adapter_card import adapter_name
from app.tables import Job


def merged_name(job: Job) -> str:
    """The merged model's folder and zip name, '<name>-merged'."""
    return adapter_name(job).removesuffix("-adapter") + "-merged"


def adapter_modelfile(job: Job) -> str:
    """A Modelfile that applies the job's adapter (unzipped beside it) to its base model's weights."""
    base, folder = job.model.strip(), adapter_name(job)
    name = folder.removesuffix("-adapter").lower()
    return (f"# Ollama: the LoRA adapter of Tuneboard job {job.id} applied to {base}.\n"
            f"# 1. Put {base}'s safetensors weights in ./base, e.g.:\n"
            f"#      huggingface-cli download {base} --local-dir base\n"
            f"# 2. Unzip {folder}.zip here, so that ./{folder}/adapter_config.json exists.\n"
            f"# 3. ollama create {name} -f Modelfile && ollama run {name}\n"
            f"# The base must be the weights the adapter was trained on; another base makes it answer erratically.\n"
            f"FROM ./base\n"
            f"ADAPTER ./{folder}\n")


def merged_modelfile(job: Job) -> str:
    """A Modelfile for the merged model, in the merged model's own folder."""
    name = merged_name(job).lower()
    return (f"# Ollama: {job.model.strip()} with the LoRA adapter of Tuneboard job {job.id} merged into its weights.\n"
            f"# From this folder: ollama create {name} -f Modelfile && ollama run {name}\n"
            f"FROM .\n")
