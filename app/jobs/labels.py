"""A job's notes and tags: what team members write about a run, checked before it is stored.

Tags arrive as one comma-separated text field; they are trimmed, deduplicated (ignoring case, the first
spelling wins, as the history's tag filter ignores case too) and limited in number and length.
Must not import torch or `workers`.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.tables import Job

MAX_TAGS = 20
MAX_TAG_LENGTH = 40
MAX_NOTES = 10_000


class LabelError(ValueError):
    """Notes or tags that cannot be stored; the message is shown beside the field."""


def parse_tags(text: str) -> list[str]:
    """'a, b ,a,, c' -> ['a', 'b', 'c']; LabelError when there are too many or one is too long."""
    tags: list[str] = []
    seen: set[str] = set()
    for part in text.split(","):
        tag = " ".join(part.split())  # inner runs of whitespace (a pasted newline) become one space
        if not tag or tag.lower() in seen:
            continue
        if len(tag) > MAX_TAG_LENGTH:
            raise LabelError(f"tag {tag[:MAX_TAG_LENGTH]!r}… is longer than {MAX_TAG_LENGTH} characters")
        seen.add(tag.lower())
        tags.append(tag)
    if len(tags) > MAX_TAGS:
        raise LabelError(f"at most {MAX_TAGS} tags (this has {len(tags)})")
    return tags


def check_notes(text: str) -> str:
    """The notes to store (line endings normalised, outer whitespace trimmed); LabelError when too long."""
    notes = text.replace("\r\n", "\n").strip()
    if len(notes) > MAX_NOTES:
        raise LabelError(f"notes are limited to {MAX_NOTES:,d} characters (this has {len(notes):,d})")
    return notes


def save_notes(session: Session, job: Job, text: str) -> None:
    """Check and store a job's notes."""
    job.notes = check_notes(text)
    session.commit()


def save_tags(session: Session, job: Job, text: str) -> None:
    """Check and store a job's tags from comma-separated text."""
    job.tags = parse_tags(text)  # a new list: JSON columns do not notice changes made in place
    session.commit()
