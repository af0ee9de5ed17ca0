"""Server-side downsampling of a job's logged steps, so a chart of a 100,000-step run stays small.

The steps are cut into equal step ranges (buckets); per bucket and per series (loss, eval_loss,
learning_rate, grad_norm, tokens_per_second) the first, last, lowest and highest point are kept — the
M4 rule, which keeps a line chart's shape: every spike and dip survives, the ends stay exact. At most
four points per bucket per series, so `max_points // 4` buckets keep each series within `max_points`.
The bucketing and the min/max are two GROUP BY passes in the database (SQLite and PostgreSQL alike);
only the chosen rows leave it. Must not import torch or `workers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from app.tables import Metric

SERIES = ("loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_second")
POINTS_PER_BUCKET = 4  # first, last, min, max


@dataclass(frozen=True, slots=True)
class StepRange:
    count: int
    first: int | None
    last: int | None


def step_range(session: Session, job_id: str, after_step: int) -> StepRange:
    """How many steps the job logged after `after_step`, and the first and last of them."""
    count, first, last = session.execute(
        select(func.count(), func.min(Metric.step), func.max(Metric.step))
        .where(Metric.job_id == job_id, Metric.step > after_step)
    ).one()
    return StepRange(count, first, last)


def bucket_width(steps: StepRange, max_points: int) -> int:
    """Steps per bucket so that no series gets more than max_points points."""
    buckets = max(1, max_points // POINTS_PER_BUCKET)
    span = steps.last - steps.first + 1
    return max(1, -(-span // buckets))  # ceiling division


def _chosen_steps(session: Session, job_id: str, after_step: int, first: int, width: int) -> dict[str, set[int]]:
    """Per series, the steps M4 keeps: two GROUP BY passes over the job's rows, bucketed by step."""
    in_range = (Metric.job_id == job_id, Metric.step > after_step)
    bucket = (Metric.step - first) // width
    stats_columns = []
    for s in SERIES:
        value = getattr(Metric, s)
        present = case((value.is_not(None), Metric.step))
        stats_columns += [func.min(present).label(f"first_{s}"), func.max(present).label(f"last_{s}"),
                          func.min(value).label(f"lo_{s}"), func.max(value).label(f"hi_{s}")]
    stats = select(bucket.label("bucket"), *stats_columns).where(*in_range).group_by(bucket).cte("stats")
    # The step of a bucket's extreme takes a second pass: SQL's MIN gives the value, not where it was.
    # MIN(step) among ties keeps one point even when a series is flat (a constant learning rate). The
    # pass reads the table itself, not a CTE of it, so the (job_id, step) index serves both passes.
    picks = []
    for s in SERIES:
        value = getattr(Metric, s)
        picks += [func.min(stats.c[f"first_{s}"]), func.min(stats.c[f"last_{s}"]),
                  func.min(case((value == stats.c[f"lo_{s}"], Metric.step))),
                  func.min(case((value == stats.c[f"hi_{s}"], Metric.step)))]
    rows = session.execute(select(*picks).join_from(Metric, stats, bucket == stats.c.bucket).where(*in_range)
                           .group_by(stats.c.bucket)).all()
    chosen: dict[str, set[int]] = {s: set() for s in SERIES}
    for row in rows:
        for index, s in enumerate(SERIES):
            chosen[s].update(step for step in row[index * 4:index * 4 + 4] if step is not None)
    return chosen


def _point(metric: Metric, kept: set[str]) -> dict[str, Any]:
    point = {"step": metric.step, "epoch": metric.epoch}
    point.update({s: getattr(metric, s) if s in kept else None for s in SERIES})
    return point


def downsample(session: Session, job_id: str, after_step: int, steps: StepRange, max_points: int) -> list[dict]:
    """The job's points after `after_step`, at most max_points per series, the curves' shapes kept.

    A returned row is a logged step; a series' value is null there unless M4 kept that series' point
    at that step, so each series counts its own points. The first and last steps are always present.
    """
    width = bucket_width(steps, max_points)
    chosen = _chosen_steps(session, job_id, after_step, steps.first, width)
    wanted = set().union(*chosen.values()) | {steps.first, steps.last}
    rows = session.scalars(select(Metric).where(Metric.job_id == job_id, Metric.step.in_(sorted(wanted)))
                           .order_by(Metric.step)).all()
    return [_point(m, {s for s in SERIES if m.step in chosen[s]}) for m in rows]
