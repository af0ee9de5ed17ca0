"""The database engine and sessions: one sync SQLAlchemy stack shared by the web app and the workers.

SQLite by default (a file in the data dir), PostgreSQL when TUNEBOARD_DATABASE_URL says so.
Must not import torch or `workers`.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Annotated

from fastapi import Depends
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from app.settings import get_settings


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the web app read while a worker writes metrics; the busy timeout waits out short locks
    # instead of failing with "database is locked".
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


@cache
def engine_for(url: str) -> Engine:
    """One engine per database URL, for the life of the process."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def get_engine() -> Engine:
    """The engine for the configured database."""
    settings = get_settings()
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return engine_for(settings.effective_database_url)


@cache
def _session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=engine_for(url), expire_on_commit=False)


def new_session() -> Session:
    """A session on the configured database; the caller closes it (use it as a context manager)."""
    get_engine()
    return _session_factory(get_settings().effective_database_url)()


def get_session() -> Iterator[Session]:
    """FastAPI dependency: a session per request."""
    with new_session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
