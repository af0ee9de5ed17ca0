"""The team's job history: filters, free-text search, sorting and keyset pagination over the jobs table.

Owns the query behind the /jobs page. It stays fast with tens of thousands of jobs a team because every
page is one indexed walk in (sort value, id) order that stops after PAGE_SIZE rows (see the ix_jobs_team_*
indexes), the cursor names the last row shown rather than an offset, and the count stops at COUNT_CAP.
Search is lower(...) LIKE, which behaves the same on SQLite and PostgreSQL. Must not import torch or `workers`.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import json
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import Text, and_, cast, func, or_, select
from sqlalchemy.orm import Session

from app.job_status import JobStatus
from app.tables import DataFile, Job, Membership, User

PAGE_SIZE = 50
COUNT_CAP = 10_000
STATUSES = tuple(JobStatus)
SORTS = {"created": "Created", "duration": "Duration", "loss": "Final train loss", "params": "Trainable params"}
RECENT_TAG_ROWS = 500
DAY = 86_400


def _sort_expression(sort: str):
    """The column or expression a sort orders by, and whether it can be NULL (a job that never ran)."""
    if sort == "duration":
        return Job.finished_at - Job.started_at, True
    if sort == "loss":
        return Job.final_metrics["loss"].as_float(), True
    if sort == "params":
        return Job.trainable_params, True
    return Job.created_at, False


@dataclass
class HistoryFilters:
    """What the history form asks for; `errors` names the fields that were ignored and why."""

    q: str = ""
    status: str = ""
    model: str = ""
    user: str = ""
    date_from: str = ""
    date_to: str = ""
    tag: str = ""
    sort: str = "created"
    order: str = "desc"
    after: str = ""
    before: str = ""
    errors: dict[str, str] = field(default_factory=dict)

    FIELDS = ("q", "status", "model", "user", "date_from", "date_to", "tag", "sort", "order")

    @classmethod
    def from_query(cls, params) -> HistoryFilters:
        """Filters from the query string; unknown values are dropped, bad dates noted in `errors`."""
        values = {key: str(params.get(key) or "").strip() for key in (*cls.FIELDS, "after", "before")}
        filters = cls(**values)
        if filters.sort not in SORTS:
            filters.sort = "created"
        if filters.order not in ("asc", "desc"):
            filters.order = "desc"
        if filters.status and filters.status not in STATUSES:
            filters.errors["status"] = f"unknown status {filters.status!r}"
            filters.status = ""
        for key in ("date_from", "date_to"):
            if getattr(filters, key) and _day_start(getattr(filters, key)) is None:
                filters.errors[key] = f"{getattr(filters, key)!r} is not a date like 2026-01-31"
                setattr(filters, key, "")
        return filters

    @property
    def active(self) -> bool:
        """Whether anything narrows the list (the empty-state text differs)."""
        return any(getattr(self, key) for key in self.FIELDS[:7])

    def url(self, **changes: str) -> str:
        """/jobs with these filters and `changes`; a page cursor is kept only when named in `changes`."""
        merged = replace(self, **{"after": "", "before": "", **changes})
        query = {key: getattr(merged, key) for key in (*self.FIELDS, "after", "before") if getattr(merged, key)}
        if query.get("sort") == "created":
            del query["sort"]
        if query.get("order") == "desc":
            del query["order"]
        return "/jobs" + (f"?{urlencode(query)}" if query else "")

    def sort_url(self, sort: str) -> str:
        """The link of a column header: sort by it, flipping the direction when it is the current sort."""
        order = ("asc" if self.order == "desc" else "desc") if sort == self.sort else "desc"
        return self.url(sort=sort, order=order)


@dataclass
class HistoryRow:
    """One job as the history lists it, with its training file's name and its launcher's email."""

    job: Job
    dataset: str | None
    launched_by: str | None

    @property
    def duration(self) -> float | None:
        job = self.job
        return job.finished_at - job.started_at if job.finished_at and job.started_at else None


@dataclass
class HistoryPage:
    """The rows of one page, how many jobs match (counted up to COUNT_CAP + 1), and the cursors either side."""

    rows: list[HistoryRow]
    count: int
    next_cursor: str | None
    prev_cursor: str | None

    @property
    def count_text(self) -> str:
        return f"{COUNT_CAP:,d}+" if self.count > COUNT_CAP else f"{self.count:,d}"


def _day_start(text: str) -> float | None:
    try:
        day = date.fromisoformat(text)
    except ValueError:
        return None
    return float(calendar.timegm(day.timetuple()))  # dates are UTC days, as the pages show times in UTC


def _like(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, its wildcards escaped (with a backslash)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _tags_text():
    # Tags are a JSON list stored as text on both databases (json.dumps writes non-ASCII as \uXXXX).
    return func.lower(cast(Job.tags, Text))


def _conditions(team_id: str, filters: HistoryFilters) -> list:
    conditions: list = [Job.team_id == team_id]
    if filters.status:
        conditions.append(Job.status == filters.status)
    if filters.model:
        conditions.append(Job.model == filters.model)
    if filters.user:
        conditions.append(Job.created_by == filters.user)
    if filters.date_from:
        conditions.append(Job.created_at >= _day_start(filters.date_from))
    if filters.date_to:
        conditions.append(Job.created_at < _day_start(filters.date_to) + DAY)  # the whole last day
    if filters.tag:
        # One whole tag: its JSON string, quotes included, inside the list's text.
        conditions.append(_tags_text().like(_like(json.dumps(filters.tag.lower())), escape="\\"))
    if filters.q:
        needle = filters.q.lower()
        pattern = _like(needle)
        conditions.append(or_(
            func.lower(func.coalesce(Job.suffix, "")).like(pattern, escape="\\"),
            func.lower(Job.id).like(pattern, escape="\\"),
            func.lower(Job.notes).like(pattern, escape="\\"),
            _tags_text().like(_like(json.dumps(needle)[1:-1]), escape="\\"),
        ))
    return conditions


def encode_cursor(sort: str, order: str, value: Any, job_id: str) -> str:
    """An opaque page cursor: the sort it belongs to and the (value, id) of a row."""
    raw = json.dumps([sort, order, value, job_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str, order: str) -> tuple[Any, str] | None:
    """(value, id) from a cursor made for this sort and order; None for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        c_sort, c_order, value, job_id = json.loads(raw)
    except (ValueError, TypeError, binascii.Error):
        return None
    if (c_sort, c_order) != (sort, order) or not isinstance(job_id, str):
        return None
    if value is not None and not isinstance(value, int | float):
        return None
    return value, job_id


def _beyond(expression, nullable: bool, descending: bool, value: Any, job_id: str):
    """Rows after (value, id) in the order `expression` DESC/ASC NULLS LAST, id DESC/ASC."""
    past = (lambda a, b: a < b) if descending else (lambda a, b: a > b)
    if value is None:  # already among the NULLs, which come last: only the id orders them
        return and_(expression.is_(None), past(Job.id, job_id))
    later = or_(past(expression, value), and_(expression == value, past(Job.id, job_id)))
    if nullable:
        return or_(later, expression.is_(None))
    # Implied by `later`, but a plain range is what lets the database start its index walk at the cursor
    # instead of reading (and discarding) every row before it.
    return and_(expression <= value if descending else expression >= value, later)


def _before(expression, nullable: bool, descending: bool, value: Any, job_id: str):
    """Rows before (value, id) in the same order."""
    earlier = (lambda a, b: a > b) if descending else (lambda a, b: a < b)
    if value is None:
        return or_(expression.is_not(None), and_(expression.is_(None), earlier(Job.id, job_id)))
    before = or_(earlier(expression, value), and_(expression == value, earlier(Job.id, job_id)))
    if nullable:
        return and_(expression.is_not(None), before)
    return and_(expression >= value if descending else expression <= value, before)


def _ordering(expression, nullable: bool, descending: bool, backwards: bool) -> list:
    """ORDER BY of the display order (NULLs last), or of its exact reverse for walking backwards."""
    descending = descending != backwards
    key = expression.desc() if descending else expression.asc()
    if nullable:
        # Only where NULLs can occur: on created_at the clause would stop the index from giving the order.
        key = key.nulls_first() if backwards else key.nulls_last()
    return [key, Job.id.desc() if descending else Job.id.asc()]


def history_query(team_id: str, filters: HistoryFilters, *, backwards: bool = False, cursor=None,
                  limit: int = PAGE_SIZE):
    """SELECT job, sort value for one page: after `cursor` (or before it, `backwards`), at most `limit` rows."""
    expression, nullable = _sort_expression(filters.sort)
    descending = filters.order == "desc"
    conditions = _conditions(team_id, filters)
    if cursor is not None:
        bound = _before if backwards else _beyond
        conditions.append(bound(expression, nullable, descending, *cursor))
    return (select(Job, expression.label("sort_value")).where(*conditions)
            .order_by(*_ordering(expression, nullable, descending, backwards)).limit(limit))


def _count(session: Session, team_id: str, filters: HistoryFilters) -> int:
    inner = select(Job.id).where(*_conditions(team_id, filters)).limit(COUNT_CAP + 1).subquery()
    return session.scalar(select(func.count()).select_from(inner)) or 0


def _has_rows(session: Session, team_id: str, filters: HistoryFilters, backwards: bool, cursor) -> bool:
    return session.execute(history_query(team_id, filters, backwards=backwards, cursor=cursor, limit=1)).first() \
        is not None


def history_page(session: Session, team_id: str, filters: HistoryFilters) -> HistoryPage:
    """One page of the team's jobs for these filters, with cursors to the pages either side."""
    backwards = bool(filters.before) and not filters.after
    cursor = decode_cursor(filters.before if backwards else filters.after, filters.sort, filters.order) \
        if (filters.before or filters.after) else None
    if cursor is None:
        backwards = False
    found = session.execute(history_query(team_id, filters, backwards=backwards, cursor=cursor,
                                          limit=PAGE_SIZE + 1)).all()
    more = len(found) > PAGE_SIZE
    found = found[:PAGE_SIZE]
    if backwards:
        found.reverse()
    keys = [(value, job.id) for job, value in found]

    def make(key) -> str:
        return encode_cursor(filters.sort, filters.order, *key)

    if backwards:
        has_next = bool(keys) and _has_rows(session, team_id, filters, False, keys[-1])
        has_prev = more
    else:
        has_next = more
        has_prev = cursor is not None and bool(keys) and _has_rows(session, team_id, filters, True, keys[0])
    jobs = [job for job, _value in found]
    return HistoryPage(rows=_rows(session, jobs), count=_count(session, team_id, filters),
                       next_cursor=make(keys[-1]) if has_next else None,
                       prev_cursor=make(keys[0]) if has_prev else None)


def _rows(session: Session, jobs: list[Job]) -> list[HistoryRow]:
    # Two small lookups by primary key for the page's rows keep the main query a plain walk of one index.
    file_ids = {job.training_file_id for job in jobs}
    user_ids = {job.created_by for job in jobs if job.created_by}
    files = dict(session.execute(select(DataFile.id, DataFile.filename).where(DataFile.id.in_(file_ids))).all()) \
        if file_ids else {}
    users = dict(session.execute(select(User.id, User.email).where(User.id.in_(user_ids))).all()) if user_ids else {}
    return [HistoryRow(job, files.get(job.training_file_id), users.get(job.created_by)) for job in jobs]


def filter_options(session: Session, team_id: str) -> dict[str, list]:
    """The choices of the filter form: base models used, members and past launchers, recently used tags."""
    models = session.scalars(select(Job.model).distinct().where(Job.team_id == team_id).order_by(Job.model)).all()
    launcher_ids = select(Job.created_by).distinct().where(Job.team_id == team_id, Job.created_by.is_not(None))
    member_ids = select(Membership.user_id).where(Membership.team_id == team_id)
    users = session.execute(select(User.id, User.email).where(or_(User.id.in_(member_ids), User.id.in_(launcher_ids)))
                            .order_by(User.email)).all()
    recent = session.scalars(select(Job.tags).where(Job.team_id == team_id)
                             .order_by(Job.created_at.desc(), Job.id.desc()).limit(RECENT_TAG_ROWS)).all()
    tags = sorted({tag for tags in recent for tag in (tags or [])}, key=str.lower)
    return {"models": models, "users": users, "tags": tags, "statuses": STATUSES, "sorts": SORTS}
