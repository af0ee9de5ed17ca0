"""What PEFT or the hardware cannot do, as opposed to what is merely unwise (that is `advice`).

A rank above an adapted layer's smaller dimension gives LoRA factors larger than the layer they adapt (no
saving, and a rank no matrix of that shape has); a run whose memory estimate exceeds every live worker's
memory on its queue would exhaust whichever worker takes it. Both are refused with the field and the limit.
Pure domain (stdlib + pydantic): must not import torch or `workers`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from app.estimator.matching import EstimateError


class ImpossibleSettings(EstimateError):
    """Settings no worker can run; answered with 422 naming `field` and the limit."""

    status = 422


class AdaptedGroup(Protocol):
    """One row of an estimate's breakdown (`ModuleBreakdown`, or the counter's `ModuleGroup`)."""

    pattern: str
    in_features: int
    out_features: int
    r: int
    parameter: bool  # adapted through target_parameters


def check_rank_limits(groups: Iterable[AdaptedGroup], base_rank: int) -> None:
    """Refuse a rank above the smaller dimension of an adapted layer (the tightest such layer is named).

    PEFT itself accepts such a rank, so `estimate()` (held equal to PEFT by the exactness suite) does not call
    this; the form and the launch do.
    """
    # Parameters adapted through target_parameters are left out: PEFT's MoE rewrite adds the router (8 outputs on
    # Mixtral) to every "all-linear" run, where a rank above its width is wasteful, not a mistake to refuse.
    over = [g for g in groups if g.r > min(g.in_features, g.out_features) and not g.parameter]
    if not over:
        return
    tightest = min(over, key=lambda g: (min(g.in_features, g.out_features), g.pattern))
    limit = min(tightest.in_features, tightest.out_features)
    field = "r" if tightest.r == base_rank else "rank_pattern"
    raise ImpossibleSettings(
        field, f"r = {tightest.r:,} is above {limit:,}, the smaller dimension of {tightest.pattern} "
        f"({tightest.in_features:,}→{tightest.out_features:,}): LoRA's factors would be larger than the layer "
        f"they adapt. Use r ≤ {limit:,} for this layer, or leave it out of the target modules.")


def _gib(value: int) -> str:
    return f"{value / 1024**3:.1f} GiB"


def memory_over_every_worker(memory_total: int, queue: str,
                             workers: Iterable[tuple[str, str, int | None]]) -> str | None:
    """Why a run cannot fit any live worker of `queue` (hostname, device, memory in bytes), or None.

    Only workers that announce their memory count; a queue none of whose workers does is not judged.
    """
    known = [(host, device, memory) for host, device, memory in workers if memory]
    if not known or any(memory >= memory_total for _, _, memory in known):
        return None
    host, device, memory = max(known, key=lambda w: w[2])
    return (f"the memory estimate, {_gib(memory_total)}, exceeds the memory of every live worker on queue "
            f"{queue!r}: the largest is {_gib(memory)} ({device} on {host}). Lower the rank, batch size or "
            "sequence length, turn on gradient checkpointing, or pick a queue with a larger worker.")
