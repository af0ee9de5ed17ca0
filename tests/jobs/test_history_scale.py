"""The history with 10,000 jobs in a team (and another team beside it): each page is an indexed walk that
stops after a page, never a scan of the table with a sort, on SQLite and on PostgreSQL. No timings: the
query plans are the proof."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.db import new_session
from app.jobs.history import PAGE_SIZE, HistoryFilters, decode_cursor, history_query
from tests.jobs.history_helpers import T0, bulk_jobs, stored_file

JOBS = 10_000


@pytest.fixture
def big_team(tuneboard_env, account, make_user):
    """Alice's team with 10,000 jobs, and a Beta team with 2,000 of its own."""
    bulk_jobs(account.team_id, account.user_id, stored_file(account), JOBS)
    carol = make_user("carol@example.com", "Beta")
    bulk_jobs(carol.team_id, carol.user_id, stored_file(carol), 2_000, start=T0 + 30)
    with new_session() as session:
        session.execute(text("ANALYZE"))  # statistics as a live database would have them
        session.commit()
        account.database_kind = session.bind.dialect.name
    return account


def plan(filters: HistoryFilters, team_id: str, cursor=None) -> str:
    """The database's plan for one history page, as text."""
    with new_session() as session:
        dialect = session.bind.dialect
        sql = str(history_query(team_id, filters, cursor=cursor, limit=PAGE_SIZE + 1)
                  .compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        explain = "EXPLAIN QUERY PLAN " if dialect.name == "sqlite" else "EXPLAIN "
        rows = session.execute(text(explain + sql.replace(":", r"\:"))).all()
    return "\n".join(str(row[-1]) for row in rows)


@pytest.mark.parametrize(("query", "index"), [
    ({}, "ix_jobs_team_created"),
    ({"order": "asc"}, "ix_jobs_team_created"),
    ({"status": "failed"}, "ix_jobs_team_status_created"),
    ({"q": "bulk-99"}, "ix_jobs_team_created"),
    ({"tag": "bulk", "date_from": "2026-01-03"}, "ix_jobs_team_created"),
])
def test_each_page_walks_an_index_in_order_without_sorting(big_team, query, index):
    filters = HistoryFilters.from_query(query)
    with new_session() as session:
        found = session.execute(history_query(big_team.team_id, filters, limit=5000)).all()
    anchor = found[len(found) // 2]
    for cursor in (None, (anchor.sort_value, anchor.Job.id)):  # the first page, and one deep in the list
        found = plan(filters, big_team.team_id, cursor)
        if big_team.database_kind == "sqlite":
            # SQLite's planner takes the index made for the filter; the order needs no temporary b-tree.
            assert f"USING INDEX {index}" in found or f"USING COVERING INDEX {index}" in found, found
            assert "TEMP B-TREE" not in found, found
        elif not {"q", "tag"} & set(query):
            # PostgreSQL weighs its statistics: with this team owning most rows it may walk the plain
            # created_at index instead, and only settle ties on id (Incremental Sort). Never a scan and a sort.
            # (Text matches, the search and the tag, it may answer with one scan of the rows and a top-N sort:
            # LIKE '%...%' has to read every row of the team either way.)
            assert found.startswith("Limit") and re.search(r"Index (Only )?Scan (Backward )?using ix_jobs_", found)
            assert "Seq Scan" not in found and not re.search(r"^\s*(->\s*)?Sort\s+\(cost", found, re.M), found


def test_the_page_shows_the_first_fifty_and_a_cheap_count(big_team):
    from app.main import create_app

    with TestClient(create_app(), headers=big_team.headers) as client:
        response = client.get("/jobs", headers={"HX-Request": "true"})
        rows = re.findall(r'<tr data-job-id="([^"]+)">', response.text)
        assert len(rows) == PAGE_SIZE and 'data-count="10000"' in response.text
        assert "10,000 jobs" in response.text
        after = re.search(r'id="page-next"[^>]*href="[^"]*after=([^"&]+)', response.text) or \
            re.search(r'href="[^"]*after=([^"&]+)"[^>]*id="page-next"', response.text)
        assert decode_cursor(after.group(1), "created", "desc")[1] == rows[-1]
        searched = client.get("/jobs?q=bulk-9999", headers={"HX-Request": "true"})
        assert "1 job match" in searched.text
