"""How many tokens a run computes on per example, from what is known of its training file.

Every micro-batch is padded to its longest example, so the expected padded length of an example is the
expected longest of `batch_size` examples drawn at random (the Trainer shuffles). With the file's token
lengths (the tokenized preview) that expectation is exact for sampling with replacement; with only its
character counts, tokens are taken as characters ÷ 4 and lengths as spread evenly between the shortest and
the longest example. Must not import torch or `workers`.
"""

from __future__ import annotations

from app.datasets.previews import cached_preview
from app.estimator.run_plan import CHARACTERS_PER_TOKEN
from app.estimator.training_time import TokensSource
from app.settings import Settings
from app.tables import DataFile


def expected_longest(token_lengths: list[tuple[int, int]], batch_size: int, sequence_length: int) -> float:
    """E[max of batch_size lengths drawn from this histogram], each cut at sequence_length."""
    counts: dict[int, int] = {}
    for length, count in token_lengths:
        capped = min(int(length), sequence_length)
        counts[capped] = counts.get(capped, 0) + int(count)
    total = sum(counts.values())
    if not total:
        return float(sequence_length)
    expected, below, previous_power = 0.0, 0, 0.0
    for length in sorted(counts):
        below += counts[length]
        power = (below / total) ** batch_size
        expected += length * (power - previous_power)
        previous_power = power
    return expected


def _from_characters(summary: dict, batch_size: int, sequence_length: int) -> float | None:
    mean = summary.get("mean_characters")
    if not mean:
        return None
    shortest = summary.get("min_characters") or mean
    longest = summary.get("max_characters") or mean
    # The longest of b values spread evenly over [shortest, longest] is expected at b/(b+1) of the way.
    characters = shortest + (longest - shortest) * batch_size / (batch_size + 1)
    return min(characters / CHARACTERS_PER_TOKEN, float(sequence_length))


def padded_tokens_per_example(settings: Settings, data_file: DataFile, model: str, *, batch_size: int,
                              sequence_length: int, loss_on: str = "assistant") -> tuple[float | None, TokensSource]:
    """The expected padded length of an example and where it comes from; (None, "sequence_length") when the
    file tells nothing."""
    preview = cached_preview(settings, data_file, model, loss_on)  # type: ignore[arg-type]
    if preview is not None and preview.data.get("token_lengths"):
        return expected_longest(preview.data["token_lengths"], batch_size, sequence_length), "measured"
    from_characters = _from_characters(data_file.summary or {}, batch_size, sequence_length)
    if from_characters is not None:
        return from_characters, "characters"
    return None, "sequence_length"
