"""The compare page: 2 to 5 of the team's runs, a config diff of only the keys that differ, and the
chart's job list; wrong counts get a clear message and other teams' jobs a 404."""

from __future__ import annotations

import json
import re
from html import unescape

import pytest

from app.jobs.compare import ABSENT, config_diff, flatten, parse_ids
from tests.jobs.history_helpers import add_job, stored_file


def diff_rows(html: str) -> dict[str, list[str]]:
    """{setting: [cell text per job]} from the diff table."""
    rows = {}
    for key, cells in re.findall(r'<tr data-key="([^"]+)">.*?</th>(.*?)</tr>', html, re.S):
        rows[key] = [unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td>(.*?)</td>", cells, re.S)]
    return rows


def test_two_runs_show_only_the_settings_that_differ(client, account):
    train, other = stored_file(account, "a.jsonl"), stored_file(account, "b.jsonl")
    a = add_job(account, train, suffix="r16", losses=[2.0, 1.5, 1.2])
    b = add_job(account, other, suffix="r32", lora={"r": 32, "lora_alpha": 64.0}, losses=[2.1, 1.4],
                training={"learning_rate": 1e-4, "lr_scheduler": "cosine"})
    response = client.get(f"/compare?jobs={a.id},{b.id}")
    assert response.status_code == 200
    assert diff_rows(response.text) == {
        "dataset": ["a.jsonl", "b.jsonl"], "lora.r": ["16", "32"], "lora.lora_alpha": ["16", "64.0"],
        "training.learning_rate": ["0.0002", "0.0001"], "training.lr_scheduler": ["linear", "cosine"],
    }
    chart = json.loads(unescape(re.search(r"data-jobs='([^']+)'", response.text).group(1)))
    assert [(j["id"], j["name"]) for j in chart] == [(a.id, "r16"), (b.id, "r32")]
    assert len({j["colour"] for j in chart}) == 2
    assert re.findall(r'<tr data-job-id="([^"]+)">', response.text) == [a.id, b.id]


def test_identical_runs_say_so_and_repeated_params_work_too(client, account):
    train = stored_file(account)
    a, b = add_job(account, train), add_job(account, train)
    response = client.get("/compare", params=[("jobs", a.id), ("jobs", b.id)])
    assert response.status_code == 200 and 'id="diff-none"' in response.text


@pytest.mark.parametrize("count", [0, 1, 6])
def test_fewer_than_two_or_more_than_five_get_a_clear_message(client, account, count):
    train = stored_file(account)
    ids = [add_job(account, train).id for _ in range(count)]
    response = client.get(f"/compare?jobs={','.join(ids)}")
    assert response.status_code == 400
    message = re.search(r'id="compare-problem">.*?<p>(.*?)</p>', response.text, re.S).group(1)
    assert (f"at least 2 jobs to compare (got {count})" if count < 2 else "at most 5 jobs at a time (got 6)") in message


def test_another_teams_job_is_not_found(client, account, make_user):
    ours = add_job(account, stored_file(account))
    carol = make_user("carol@example.com", "Beta")
    theirs = add_job(carol, stored_file(carol, "secret.jsonl"))
    response = client.get(f"/compare?jobs={ours.id},{theirs.id}")
    assert response.status_code == 404 and "secret.jsonl" not in response.text
    assert f"There is no job {theirs.id}" in response.text


def test_config_diff_rules():
    assert parse_ids(["a,b", " c ,a", ""]) == ["a", "b", "c"]
    one = flatten({"model": "m", "lora": {"r": 16, "lora_alpha": 16, "rank_pattern": {"a": 1, "b": 2}},
                   "training": {"seed": 1}}, "file-1", None)
    two = flatten({"model": "m", "lora": {"r": 16, "lora_alpha": 16.0, "rank_pattern": {"b": 2, "a": 1}},
                   "training": {"seed": 2, "max_steps": None}}, "file-1", "file-2")
    diff = {row.key: row.values for row in config_diff([one, two])}
    assert diff == {"validation_dataset": [None, "file-2"], "training.seed": [1, 2],
                    "training.max_steps": [ABSENT, None]}
