"""The job history page (/jobs) with and without HTMX: columns, filters, search, sorting, pages, and team
isolation, on SQLite and PostgreSQL."""

from __future__ import annotations

import html
import re

import pytest

from app.jobs.history import PAGE_SIZE
from tests.jobs.history_helpers import SMOL, T0, add_job, stored_file

HX = {"HX-Request": "true"}
DAY = 86_400



@pytest.fixture
def file_id(account) -> str:
    return stored_file(account, "colours.jsonl")


def listed(response) -> list[str]:
    """Job ids in the history table, top to bottom."""
    return re.findall(r'<tr data-job-id="([^"]+)"', response.text)


def next_link(response, rel: str = "next") -> str | None:
    match = re.search(rf'id="page-{rel}"[^>]*href="([^"]+)"|href="([^"]+)"[^>]*id="page-{rel}"', response.text)
    return html.unescape(match.group(1) or match.group(2)) if match else None


def test_without_htmx_the_history_is_a_page_with_its_filter_form(client, account, file_id):
    job = add_job(account, file_id, suffix="first-run")
    response = client.get("/jobs")
    assert response.status_code == 200
    assert response.text.lstrip().lower().startswith("<!doctype html>")
    assert 'id="history-filters"' in response.text and 'method="get" action="/jobs"' in response.text
    assert 'hx-push-url="true"' in response.text
    assert listed(response) == [job.id]
    assert response.headers["vary"] == "HX-Request"


def test_with_htmx_a_filter_change_gets_only_the_results(client, account, file_id):
    add_job(account, file_id, suffix="first-run")
    response = client.get("/jobs?status=succeeded&sort=loss&order=asc", headers=HX)
    assert response.status_code == 200
    assert "<html" not in response.text and 'id="history-filters"' not in response.text
    assert response.text.lstrip().startswith('<section class="card history-results" id="history-results"')
    # The sort a header picked reaches the filter form's hidden inputs out of band.
    assert 'id="filter-sort" value="loss" hx-swap-oob="true"' in response.text
    assert 'id="filter-order" value="asc" hx-swap-oob="true"' in response.text
    # History restoration (back button, cache miss) needs the whole page.
    restore = client.get("/jobs", headers={**HX, "HX-History-Restore-Request": "true"})
    assert 'id="history-filters"' in restore.text


def test_a_row_shows_every_column(client, account, file_id, make_user):
    bob = make_user("bob@example.com", "Alpha")
    job = add_job(account, file_id, suffix="r16-baseline", runtime=125, loss=1.23456, eval_loss=1.5,
                  tags=["baseline", "q+v"], user_id=bob.user_id, notes="First try.\nSecond line.")
    row = re.search(rf'<tr data-job-id="{job.id}">(.*?)</tr>', client.get("/jobs").text, re.S).group(1)
    cells = [re.sub(r"<[^>]+>", " ", c).split() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
    text = [" ".join(c) for c in cells]
    assert text[1].startswith("r16-baseline") and job.id in text[1] and "First try." in text[1]
    assert text[2] == "SmolLM2-135M" and f'title="{SMOL}"' in row
    assert text[3] == "colours.jsonl"
    assert text[4] == "succeeded"
    assert text[5] == "bob@example.com"
    assert text[6] == "2026-01-01 00:00"
    assert text[7] == "2m 05s"
    assert text[8:10] == ["1.2346", "1.5000"]
    assert text[10] == f"{job.trainable_params:,d}"
    assert text[11] == "baseline q+v"


def test_filters_by_status_model_user_dates_and_tag(client, account, file_id, make_user):
    bob = make_user("bob@example.com", "Alpha")
    a = add_job(account, file_id, status="succeeded", created_at=T0, tags=["baseline"])
    b = add_job(account, file_id, status="failed", created_at=T0 + DAY, tags=["Baseline-v2"], user_id=bob.user_id)
    c = add_job(account, file_id, status="queued", model="openai-community/gpt2", created_at=T0 + 2 * DAY,
                lora={"target_modules": ["c_attn"]}, tags=["gpt", "BASELINE"])

    def ids(query: str) -> set[str]:
        return set(listed(client.get(f"/jobs?{query}", headers=HX)))

    assert ids("") == {a.id, b.id, c.id}
    assert ids("status=failed") == {b.id}
    assert ids("model=openai-community/gpt2") == {c.id}
    assert ids(f"user={bob.user_id}") == {b.id}
    assert ids("date_from=2026-01-02") == {b.id, c.id}
    assert ids("date_to=2026-01-02") == {a.id, b.id}  # the whole of the last day
    assert ids("date_from=2026-01-02&date_to=2026-01-02") == {b.id}
    assert ids("tag=baseline") == {a.id, c.id}  # whole tags, ignoring case: not Baseline-v2
    assert ids("tag=gpt&status=queued") == {c.id}
    assert ids("status=failed&user=" + account.user_id) == set()
    page = client.get("/jobs").text
    assert '<option value="openai-community/gpt2"' in page and f'<option value="{bob.user_id}"' in page
    assert '<option value="Baseline-v2">' in page  # the tag picker offers tags in use


def test_search_covers_name_id_notes_and_tags_ignoring_case(client, account, file_id):
    named = add_job(account, file_id, suffix="Sweep-R64")
    noted = add_job(account, file_id, notes="Loss spiked at step 300; lowered the LR.")
    tagged = add_job(account, file_id, tags=["Long-Context"])
    literal = add_job(account, file_id, suffix="lr_1e-4 100%")

    def ids(q: str) -> set[str]:
        return set(listed(client.get("/jobs", params={"q": q}, headers=HX)))

    assert ids("sweep-r64") == {named.id}
    assert ids(noted.id.upper()) == {noted.id}
    assert ids("SPIKED") == {noted.id}
    assert ids("long-con") == {tagged.id}
    assert ids("100%") == {literal.id} and ids("%") == {literal.id}  # LIKE wildcards are literal
    assert ids("r_1") == {literal.id}
    assert ids("nothing like this") == set()
    assert "No job matches these filters" in client.get("/jobs?q=zzz").text


@pytest.mark.parametrize(("sort", "order"), [("created", "asc"), ("duration", "desc"), ("loss", "asc"),
                                             ("loss", "desc"), ("params", "desc")])
def test_sorting_puts_jobs_without_a_value_last(client, account, file_id, sort, order):
    done = [add_job(account, file_id, runtime=rt, loss=loss, lora={"r": r})
            for rt, loss, r in ((300, 0.9, 8), (60, 1.7, 32), (180, 1.1, 16))]
    queued = add_job(account, file_id, status="queued")
    key = {"created": lambda j: j.created_at, "duration": lambda j: j.finished_at - j.started_at,
           "loss": lambda j: j.final_metrics["loss"], "params": lambda j: j.trainable_params}[sort]
    expected = sorted(done, key=key, reverse=order == "desc")
    expected = [j.id for j in expected] + [queued.id] if sort != "created" else \
        [j.id for j in sorted([*done, queued], key=key)]
    assert listed(client.get(f"/jobs?sort={sort}&order={order}", headers=HX)) == expected


def test_column_headers_sort_and_flip_the_direction(client, account, file_id):
    add_job(account, file_id)
    text = client.get("/jobs?sort=loss&order=desc").text
    assert 'href="/jobs?sort=loss&amp;order=asc"' in text  # the current sort flips
    assert 'href="/jobs?sort=duration"' in text  # another column starts descending


@pytest.mark.parametrize("jobs", [PAGE_SIZE, PAGE_SIZE + 1])
def test_page_boundaries(client, account, file_id, jobs):
    from tests.jobs.history_helpers import bulk_jobs

    bulk_jobs(account.team_id, account.user_id, file_id, jobs)
    first = client.get("/jobs", headers=HX)
    assert len(listed(first)) == PAGE_SIZE and next_link(first, "prev") is None
    assert f'data-count="{jobs}"' in first.text
    if jobs == PAGE_SIZE:
        assert next_link(first) is None
        return
    second = client.get(next_link(first), headers=HX)
    assert len(listed(second)) == 1 and next_link(second) is None
    back = client.get(next_link(second, "prev"), headers=HX)
    assert listed(back) == listed(first) and next_link(back, "prev") is None and next_link(back)


@pytest.mark.parametrize(("sort", "order"), [("created", "desc"), ("created", "asc"), ("loss", "asc"),
                                             ("duration", "desc"), ("params", "asc")])
def test_paging_forwards_and_back_visits_every_job_once_in_order(client, account, file_id, sort, order):
    from tests.jobs.history_helpers import bulk_jobs

    bulk_jobs(account.team_id, account.user_id, file_id, 2 * PAGE_SIZE + 17)  # many equal losses and durations
    for i in range(7):  # and some without a value, which come last
        add_job(account, file_id, status="queued", created_at=T0 + 10 * DAY + i)
    first_page = listed(client.get(f"/jobs?sort={sort}&order={order}", headers=HX))
    responses, url = [], f"/jobs?sort={sort}&order={order}"
    while url:
        responses.append(client.get(url, headers=HX))
        url = next_link(responses[-1])
    pages = [listed(r) for r in responses]
    ids = [i for page in pages for i in page]
    assert len(ids) == len(set(ids)) == 2 * PAGE_SIZE + 24
    assert pages[0] == first_page and [len(p) for p in pages] == [PAGE_SIZE, PAGE_SIZE, 24]
    # Back from the last page with Previous links gives the same pages again.
    back, response = [pages[-1]], responses[-1]
    while next_link(response, "prev"):
        response = client.get(next_link(response, "prev"), headers=HX)
        back.append(listed(response))
    assert list(reversed(back)) == pages


def test_bad_filter_values_are_ignored_and_said_so(client, account, file_id):
    job = add_job(account, file_id)
    response = client.get("/jobs?date_from=2026-13-01&status=exploded&after=garbage&sort=nonsense")
    assert response.status_code == 200 and listed(response) == [job.id]
    assert "&#39;2026-13-01&#39; is not a date" in response.text and "unknown status" in response.text


def test_another_teams_jobs_never_appear(client, account, file_id, make_user):
    ours = add_job(account, file_id, suffix="ours", tags=["shared-tag"])
    carol = make_user("carol@example.com", "Beta")
    theirs_file = stored_file(carol, "secret.jsonl")
    theirs = add_job(carol, theirs_file, suffix="theirs", model="openai-community/gpt2",
                     lora={"target_modules": ["c_attn"]}, tags=["shared-tag"], notes="ours")
    for query in ("", "?q=theirs", f"?q={theirs.id}", "?tag=shared-tag", "?q=ours",
                  "?model=openai-community/gpt2", f"?user={carol.user_id}"):
        response = client.get(f"/jobs{query}")
        assert theirs.id not in listed(response) and "secret.jsonl" not in response.text
        assert not set(listed(response)) - {ours.id}
    assert listed(client.get("/jobs?tag=shared-tag")) == [ours.id]
    page = client.get("/jobs").text
    assert "carol@example.com" not in page and "openai-community/gpt2" not in page
