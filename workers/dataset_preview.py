"""`python -m workers.dataset_preview`: a dataset as the trainer will see it, for the data card.

Tokenizes the file as the trainer does (TRL's preparation, `workers.training.supervised`), marks the tokens of
the first rows that carry loss, and counts tokens over the whole file (lengths as (length, count) pairs so the
page can tell how many exceed any max length). Writes JSON for `app.datasets.previews`; loads no model weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from itertools import groupby
from pathlib import Path

from app.datasets.validator import load_examples
from workers.training.supervised import IGNORE_INDEX, prepare_examples

ROWS_SHOWN = 3


def _segments(tokenizer, input_ids: list[int], labels: list[int]) -> list[dict]:
    # Label i is the target for position i (Trainer shifts inside the model), so token i is trained when
    # labels[i] is set.
    segments = []
    position = 0
    for trained, group in groupby(label != IGNORE_INDEX for label in labels):
        size = len(list(group))
        text = tokenizer.decode(input_ids[position:position + size], skip_special_tokens=False)
        segments.append({"text": text, "trained": trained})
        position += size
    return segments


def build_preview(path: Path, model: str, *, data_dir: Path, loss_on: str, column_mapping: dict | None) -> dict:
    """The preview JSON for one file and base model."""
    from workers.base_models import load_tokenizer

    tokenizer = load_tokenizer(model, data_dir)
    parsed = load_examples(path, column_mapping=column_mapping)
    if parsed.format == "preference":
        return _pairs_preview(parsed.examples, tokenizer, model)
    lengths: Counter[int] = Counter()
    rows, total, trainable = [], 0, 0
    has_chat = any(e.messages is not None for e in parsed.examples)
    # Untruncated: the page shows how many examples a sequence length would cut.
    tokenized = prepare_examples(list(parsed.examples), tokenizer, sequence_length=None, loss_on=loss_on).dataset
    for index, (example, input_ids, labels) in enumerate(zip(parsed.examples, tokenized["input_ids"],
                                                             tokenized["labels"], strict=True)):
        trained = sum(1 for label in labels if label != IGNORE_INDEX)
        lengths[len(input_ids)] += 1
        total += len(input_ids)
        trainable += trained
        if index < ROWS_SHOWN:
            rows.append({"line": example.line, "tokens": len(input_ids), "trained": trained,
                         "segments": _segments(tokenizer, input_ids, labels)})
    return {
        "model": model, "examples": len(parsed.examples), "rows": rows, "total_tokens": total,
        "trainable_tokens": trainable, "longest": max(lengths, default=0),
        "token_lengths": sorted(lengths.items()), "has_chat": has_chat,
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
    }


def _pairs_preview(examples, tokenizer, model: str) -> dict:
    """A preference file as DPO trains it: each pair's prompt with its chosen and its rejected answer (the answers
    carry the loss); token lengths count both sequences of every pair."""
    from workers.training.preference import tokenize_pairs

    lengths: Counter[int] = Counter()
    rows, total, trainable = [], 0, 0
    for index, pair in enumerate(tokenize_pairs(list(examples), tokenizer)):
        prompt = pair["prompt_ids"]
        sequences = []
        for answer in (pair["chosen_ids"], pair["rejected_ids"]):
            ids = prompt + answer
            lengths[len(ids)] += 1
            total += len(ids)
            trainable += len(answer)
            sequences.append({"tokens": len(ids), "trained": len(answer),
                              "segments": _segments(tokenizer, ids, [IGNORE_INDEX] * len(prompt) + answer)})
        if index < ROWS_SHOWN:
            rows.append({"line": pair["line"], **sequences[0], "rejected": sequences[1]})
    return {
        "model": model, "examples": len(examples), "rows": rows, "total_tokens": total, "trainable_tokens": trainable,
        "longest": max(lengths, default=0), "token_lengths": sorted(lengths.items()),
        "has_chat": any(e.messages is not None for e in examples), "pairs": True,
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry used by the web app."""
    parser = argparse.ArgumentParser(prog="python -m workers.dataset_preview", description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--loss-on", default="assistant", choices=["assistant", "all"])
    parser.add_argument("--column-mapping", type=json.loads, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from workers.training import TrainingFailure

    try:
        preview = build_preview(args.file, args.model, data_dir=args.data_dir, loss_on=args.loss_on,
                                column_mapping=args.column_mapping)
    except TrainingFailure as exc:
        print(f"PreviewFailure: {exc.reason}", file=sys.stderr)
        return 1
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(preview, separators=(",", ":")))
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
