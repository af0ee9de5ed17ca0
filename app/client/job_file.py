"""The job file `tuneboard submit` reads: one YAML mapping that describes one fine-tuning job.

    model: HuggingFaceTB/SmolLM2-135M-Instruct   # Hugging Face id, or a path on the worker machines
    training_file: data/train.jsonl              # a local file (uploaded first) or a file id (file-...)
    validation_file: data/valid.jsonl            # optional, same rules
    suffix: colours                              # optional, up to 64 characters
    queue: gpu-80g                               # optional worker queue; the server's default otherwise
    metadata: {project: demo}                    # optional, string values only
    lora:                                        # optional, peft.LoraConfig field names
      r: 16
      lora_alpha: 32
      target_modules: [q_proj, v_proj]
    training:                                    # optional, Tuneboard's TrainingSettings field names
      max_steps: 600
      learning_rate: 2.0e-4
      batch_size: 4

Only these top-level keys are accepted; any other key is an error naming it and its line, before
anything is sent. A `training_file` / `validation_file` value that names an existing file (relative
paths are taken from the job file's directory, `~` is expanded) is uploaded; a value that looks like a
path but names no file is an error; anything else is passed on as a file id. `lora` and `training`
go to the server unchanged: the server validates them (`lora.r: ...`), and its error is reported with
the line of the key at fault. Stdlib + PyYAML, and app.estimator's pydantic models for hints only.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TOP_LEVEL_KEYS = ("model", "training_file", "validation_file", "suffix", "metadata", "queue", "lora", "training")
FILE_KEYS = ("training_file", "validation_file")
_MAPPING_KEYS = ("metadata", "lora", "training")
_STRING_KEYS = ("model", "training_file", "validation_file", "suffix", "queue")
_DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".txt", ".tsv", ".parquet")


class JobFileError(ValueError):
    """A job file that cannot be submitted; the message starts with 'PATH line N:' when a line is known."""


@dataclass
class JobFile:
    """A parsed job file: its values and the line of every key, for messages that point at the line."""

    path: Path
    values: dict[str, Any]
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)

    def line_of(self, param: str | None) -> int | None:
        """The line of a dotted param such as 'lora.r' (or of its nearest enclosing key in the file)."""
        if not param:
            return None
        parts = tuple(param.split("."))
        while parts:
            if parts in self.lines:
                return self.lines[parts]
            parts = parts[:-1]
        return None

    def where(self, param: str | None) -> str | None:
        """'config.yaml line 8' for a param the file sets, else None."""
        line = self.line_of(param)
        return f"{self.path.name} line {line}" if line else None

    def local_file(self, key: str) -> Path | None:
        """The local path to upload for training_file / validation_file, or None when it is a file id."""
        value = self.values.get(key)
        if value is None:
            return None
        candidate = Path(value).expanduser()
        if not candidate.is_absolute():
            candidate = self.path.parent / candidate
        if candidate.is_file():
            return candidate
        if _looks_like_path(value):
            raise JobFileError(f"{self.path} line {self.lines[(key,)]}: {key}: no such file {str(candidate)!r}")
        return None

    def request_body(self, file_ids: dict[str, str]) -> dict[str, Any]:
        """The POST /v1/fine_tuning/jobs body, with uploaded files replaced by their ids."""
        body = {key: self.values[key] for key in TOP_LEVEL_KEYS if self.values.get(key) is not None}
        body.update(file_ids)
        return body


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.startswith((".", "~")) or value.lower().endswith(_DATA_SUFFIXES)


def load_job_file(path: Path) -> JobFile:
    """Parse and check a job file; JobFileError names the file, the line and the key at fault."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise JobFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise JobFileError(f"{path} is empty; it needs at least `model` and `training_file`")
        # Lines are read before construction, which folds `<<` merge keys into the mappings.
        lines: dict[tuple[str, ...], int] = {}
        _collect_lines(path, node, (), lines)
        values = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f" line {mark.line + 1}" if mark else ""
        raise JobFileError(f"{path}{line}: not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise JobFileError(f"{path}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    if not isinstance(values, dict):
        raise JobFileError(f"{path} line {node.start_mark.line + 1}: the job file must be a mapping of keys "
                           f"({', '.join(TOP_LEVEL_KEYS)})")
    job_file = JobFile(path, values, lines)
    _check(job_file)
    return job_file


def _collect_lines(path: Path, node: yaml.Node, prefix: tuple[str, ...], lines: dict[tuple[str, ...], int]) -> None:
    # PyYAML keeps the last of two equal keys without a word; in a job file that is always a mistake.
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = (*prefix, str(key_node.value))
            if key in lines:
                raise JobFileError(f"{path} line {key_node.start_mark.line + 1}: {'.'.join(key)} is given twice "
                                   f"(first on line {lines[key]})")
            lines[key] = key_node.start_mark.line + 1
            _collect_lines(path, value_node, key, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            key = (*prefix, str(index))
            lines[key] = item.start_mark.line + 1
            _collect_lines(path, item, key, lines)


def _section_of(key: str) -> str | None:
    """'training' for a TrainingSettings field written at the top level, 'lora' for a LoraConfig one."""
    # Only for the hint: the server, which may be newer than this client, decides what the sections accept.
    from app.estimator.job_config import TrainingSettings
    from app.estimator.lora_settings import LoraSettings

    for section, model in (("training", TrainingSettings), ("lora", LoraSettings)):
        if key in model.model_fields:
            return section
    return None


def _check(job_file: JobFile) -> None:
    path, values, lines = job_file.path, job_file.values, job_file.lines
    for key in values:
        if key not in TOP_LEVEL_KEYS:
            section = _section_of(str(key))
            close = difflib.get_close_matches(str(key), TOP_LEVEL_KEYS, n=1)
            if section:
                hint = f"; it belongs under `{section}:`"
            elif close:
                hint = f"; did you mean {close[0]!r}?"
            else:
                hint = f"; the keys are {', '.join(TOP_LEVEL_KEYS)}"
            raise JobFileError(f"{path} line {lines[(str(key),)]}: unknown key {key!r}{hint}")
    for key in ("model", "training_file"):
        if values.get(key) in (None, ""):
            raise JobFileError(f"{path}: `{key}` is required")
    for key in _STRING_KEYS:
        if key in values and values[key] is not None and not isinstance(values[key], str):
            raise JobFileError(f"{path} line {lines[(key,)]}: {key} must be a string, not "
                               f"{type(values[key]).__name__}")
    for key in _MAPPING_KEYS:
        if key in values and values[key] is not None and not isinstance(values[key], dict):
            raise JobFileError(f"{path} line {lines[(key,)]}: {key} must be a mapping of field: value")
    for key in FILE_KEYS:
        job_file.local_file(key)  # a path that names no file is reported now, before anything is uploaded
