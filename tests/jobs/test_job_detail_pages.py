"""A job's page beyond its live charts: who launched it, the estimate at launch, artifacts, Clone, and
notes and tags edited in place (HTMX and plain forms, validation errors beside the field, CSRF)."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from app.accounts.auth import SESSION_COOKIE
from app.db import new_session
from app.tables import Job
from tests.jobs.history_helpers import add_job, stored_file

HX = {"HX-Request": "true"}


@pytest.fixture
def app(tuneboard_env):
    from app.main import create_app

    return create_app()


@pytest.fixture
def client(app, account):
    with TestClient(app, headers=account.headers, follow_redirects=False) as test_client:
        yield test_client


@pytest.fixture
def job(account) -> Job:
    return add_job(account, stored_file(account), suffix="detail", checkpoints=[50, 100], tags=["old"])


def stored(job_id: str) -> Job:
    with new_session() as session:
        return session.get(Job, job_id)


def test_the_page_shows_launcher_estimate_artifacts_and_clone(client, job, make_user):
    html = client.get(f"/jobs/{job.id}").text
    assert re.search(r'id="launched-by">alice@example.com<', html)
    assert f'id="estimate-trainable">{job.estimate["trainable_params"]:,d}' in html and "run: equal" in html
    assert 'id="estimate-adapter">' in html and 'id="estimate-memory">' in html
    assert f'id="download-adapter" href="/v1/fine_tuning/jobs/{job.id}/adapter"' in html
    assert re.findall(r'<tr data-step="(\d+)">', html) == ["50", "100"]
    assert f'id="clone-job" href="/?clone={job.id}"' in html
    assert 'id="tags-input" value="old"' in html
    assert "lora_alpha: 16" in html  # the full config


def test_checkpoints_show_the_losses_logged_at_their_step(client, account):
    curve = [round(2.0 - step / 100, 4) for step in range(1, 101)]
    job = add_job(account, stored_file(account), losses=curve, eval_every=50, checkpoints=[50, 100])
    rows = re.findall(r'<tr data-step="(\d+)"><td>step \d+</td><td>[^<]*</td>\s*<td>([^<]*)</td>\s*<td>([^<]*)</td>',
                      client.get(f"/jobs/{job.id}").text)
    assert rows == [("50", "1.5000", "1.6000"), ("100", "1.0000", "1.1000")]


def test_htmx_saves_notes_and_answers_the_block(client, job):
    response = client.post(f"/jobs/{job.id}/notes", data={"notes": "  Loss flat after step 80.\r\nTry r=32.  "},
                           headers=HX)
    assert response.status_code == 200
    assert '<form class="label-form" id="job-notes"' in response.text
    assert 'id="notes-saved"' in response.text and "<html" not in response.text
    assert stored(job.id).notes == "Loss flat after step 80.\nTry r=32."


def test_tags_are_trimmed_deduplicated_and_searchable(client, job):
    response = client.post(f"/jobs/{job.id}/tags", data={"tags": " r-sweep, Baseline ,, baseline,long  context "},
                           headers=HX)
    assert response.status_code == 200 and 'id="tags-saved"' in response.text
    assert stored(job.id).tags == ["r-sweep", "Baseline", "long context"]
    assert re.findall(r'class="tag" href="[^"]+">([^<]+)<', response.text) == ["r-sweep", "Baseline", "long context"]
    assert job.id in client.get("/jobs?tag=long context").text


@pytest.mark.parametrize(("text", "message"), [
    (", ".join(f"t{i}" for i in range(21)), "at most 20 tags (this has 21)"),
    ("ok, " + "x" * 41, "is longer than 40 characters"),
])
def test_bad_tags_come_back_beside_the_field_and_are_not_stored(client, job, text, message):
    response = client.post(f"/jobs/{job.id}/tags", data={"tags": text}, headers=HX)
    assert response.status_code == 200  # htmx swaps only successful answers
    error = re.search(r'<div class="field-msgs" id="msg-tags">(.*?)</div>', response.text, re.S).group(1)
    assert message in error and 'aria-invalid="true"' in response.text
    assert f'value="{text}"' in response.text  # what was typed stays in the field
    assert stored(job.id).tags == ["old"]


def test_without_htmx_a_save_redirects_and_an_error_re_renders_the_page(client, job):
    saved = client.post(f"/jobs/{job.id}/notes", data={"notes": "plain form"})
    assert saved.status_code == 303 and saved.headers["location"] == f"/jobs/{job.id}#job-labels"
    refused = client.post(f"/jobs/{job.id}/notes", data={"notes": "x" * 10_001})
    assert refused.status_code == 422 and refused.text.lstrip().lower().startswith("<!doctype html>")
    assert 'data-error-for="notes">notes are limited to 10,000 characters' in refused.text
    assert stored(job.id).notes == "plain form"


def test_any_member_may_edit_but_another_team_cannot_see_the_job(app, job, make_user):
    bob = make_user("bob@example.com", "Alpha", "member")
    carol = make_user("carol@example.com", "Beta", "member")
    with TestClient(app, headers=bob.headers, follow_redirects=False) as member:
        assert member.post(f"/jobs/{job.id}/tags", data={"tags": "bob-was-here"}).status_code == 303
    with TestClient(app, headers=carol.headers, follow_redirects=False) as outsider:
        assert outsider.post(f"/jobs/{job.id}/tags", data={"tags": "x"}).status_code == 404
        assert outsider.post(f"/jobs/{job.id}/notes", data={"notes": "x"}, headers=HX).status_code == 404
    assert stored(job.id).tags == ["bob-was-here"]


def test_browser_writes_need_the_csrf_token(app, account, job):
    with TestClient(app, follow_redirects=False, cookies={SESSION_COOKIE: account.session_cookie}) as browser:
        assert browser.post(f"/jobs/{job.id}/notes", data={"notes": "forged"}).status_code == 403
        assert browser.post(f"/jobs/{job.id}/tags", data={"tags": "forged"}, headers=HX).status_code == 403
        page = browser.get(f"/jobs/{job.id}").text
        token = re.search(r'<meta name="csrf-token" content="([^"]+)"', page).group(1)
        assert f'name="csrf_token" value="{token}"' in page  # plain forms carry it too
        assert browser.post(f"/jobs/{job.id}/notes", data={"notes": "by form", "csrf_token": token}).status_code == 303
        assert browser.post(f"/jobs/{job.id}/tags", data={"tags": "by-htmx"},
                            headers={**HX, "X-CSRF-Token": token}).status_code == 200
    saved = stored(job.id)
    assert (saved.notes, saved.tags) == ("by form", ["by-htmx"])
