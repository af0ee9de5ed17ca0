"""Regular expressions in LoRA settings have a bounded cost (issue 10, point 8).

PEFT matches target_modules, exclude_modules, modules_to_save, rank_pattern and alpha_pattern with Python's
`re`, which backtracks: `(?:.|.){0,21}X` took 3.6 s per estimate and longer forms minutes, holding a web
thread (and later the worker) all that time. Patterns over the time budget answer 422 naming the field,
fast, over HTTP on a real uvicorn server; the patterns people write keep PEFT's exact semantics. "Fast" is
checked as the answer's origin, not with a stopwatch: the refusal is the work budget's own (the check's child
process killed past WORK_BUDGET_SECONDS), and the client's short timeout stands for the user.
"""

from __future__ import annotations

import re
import subprocess

import httpx
import pytest

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # no database question here

SMOL = "HuggingFaceTB/SmolLM2-135M"
ISSUE_PATTERN = r"(?:.|.){0,21}X"
# Longer and matching something real, so without the bound it is minutes of work followed by a 200.
NASTIER = r"(?:.|..|.){0,40}X|.*\.q_proj"


@pytest.fixture
def api(live_server, account):
    """An HTTP client for the live server, signed in with an API token; a short timeout stands for the user."""
    with httpx.Client(base_url=live_server.url, headers=account.headers, timeout=20) as client:
        yield client


def _estimate(api, **lora) -> httpx.Response:
    return api.post("/v1/fine_tuning/estimate", json={"model": SMOL, "lora": lora})


def _assert_refused_quickly(response: httpx.Response, field: str) -> None:
    from app.estimator.pattern_cost import WORK_BUDGET_SECONDS

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == f"lora.{field}"
    # Refused by the budget: the matching was stopped after WORK_BUDGET_SECONDS, not run to its end.
    assert f"takes more than {WORK_BUDGET_SECONDS * 1000:.0f} ms to match" in error["message"], error
    assert field in error["message"]


def test_issue_backtracking_target_regex_answers_422_naming_target_modules_quickly(api):
    _assert_refused_quickly(_estimate(api, target_modules=ISSUE_PATTERN), "target_modules")


@pytest.mark.parametrize("field", ["target_modules", "exclude_modules", "modules_to_save", "rank_pattern",
                                   "alpha_pattern"])
def test_nastier_backtracking_pattern_in_each_field_answers_422_naming_it_quickly(api, field):
    lora: dict = {"target_modules": ["q_proj", "v_proj"]}
    if field == "target_modules":
        lora["target_modules"] = NASTIER
    elif field == "exclude_modules":
        lora["exclude_modules"] = NASTIER
    elif field == "modules_to_save":
        lora["modules_to_save"] = [NASTIER]
    else:
        lora[field] = {NASTIER: 4}
    _assert_refused_quickly(_estimate(api, **lora), field)
    # The server is not left busy: an ordinary estimate answers, within the client's short timeout.
    assert _estimate(api, target_modules=r".*\.(q_proj|v_proj)").status_code == 200


def test_overlong_pattern_and_too_many_patterns_are_422_naming_the_field(api):
    from app.estimator.pattern_cost import MAX_PATTERN_CHARS, MAX_PATTERN_ENTRIES

    response = _estimate(api, target_modules=".*" + "a?" * MAX_PATTERN_CHARS)
    assert response.status_code == 422 and response.json()["error"]["param"] == "lora.target_modules"
    assert f"the limit is {MAX_PATTERN_CHARS}" in response.json()["error"]["message"]
    many = {f"layers\\.{i}\\.": 4 for i in range(MAX_PATTERN_ENTRIES + 1)}
    response = _estimate(api, target_modules=["q_proj"], rank_pattern=many)
    assert response.status_code == 422 and response.json()["error"]["param"] == "lora.rank_pattern"
    assert f"the limit is {MAX_PATTERN_ENTRIES}" in response.json()["error"]["message"]


REAL_PATTERNS = [
    r".*\.(q_proj|v_proj)",
    r"model\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)",
    r"^(?!.*layers\.0\.).*\.(q_proj|v_proj)$",  # a lookahead: every layer but the first
    r".*layers\.(1[0-9]|2[0-3])\..*(gate|up|down)_proj",
    r"(?:.*\.)?(?<!k_)(?:q|v)_proj",  # a lookbehind
    r"(?i).*\.Q_PROJ",
]


RANK_KEY = r"layers\.1\d\.self_attn\.q_proj"


@pytest.mark.parametrize("pattern", REAL_PATTERNS)
def test_regex_targets_users_write_stay_exact(tuneboard_env, pattern):
    """The adapted modules are exactly those `re.fullmatch` (PEFT's test) selects, and no budget refuses them."""
    from app.base_models.inventories import get_inventory
    from app.estimator.lora_settings import LoraSettings
    from app.estimator.matching import select_modules

    inventory = get_inventory(SMOL, tuneboard_env.settings)
    selection = select_modules(inventory, LoraSettings(target_modules=pattern, rank_pattern={RANK_KEY: 4}))
    expected = [m.name for m in inventory.modules if m.name and re.fullmatch(pattern, m.name)]
    assert [a.module.name for a in selection.adapted] == expected
    ranks = {a.module.name: a.r for a in selection.adapted}
    assert all(ranks[n] == (4 if re.match(rf"(.*\.)?({RANK_KEY})$", n) else 8) for n in expected)


def test_a_checked_pattern_is_not_checked_again(tuneboard_env, monkeypatch):
    """The verdict is cached per pattern and model, so a form re-estimating on every keystroke spawns nothing."""
    from app.base_models.inventories import get_inventory
    from app.estimator import pattern_cost
    from app.estimator.lora_settings import LoraSettings
    from app.estimator.matching import select_modules

    checks: list[list[str]] = []
    real_popen = subprocess.Popen

    def counting_popen(args, *rest, **options):
        if pattern_cost.__file__ in args:
            checks.append(args)
        return real_popen(args, *rest, **options)

    monkeypatch.setattr(subprocess, "Popen", counting_popen)
    inventory = get_inventory(SMOL, tuneboard_env.settings)
    settings = LoraSettings(target_modules=r".*\.(q_proj|v_proj|unique_for_cache_test)")
    select_modules(inventory, settings)
    assert len(checks) == 1  # the first time: one child process times the pattern
    for _ in range(20):
        select_modules(inventory, settings)
    assert len(checks) == 1


@pytest.mark.parametrize("field", ["target_modules", "exclude_modules"])
def test_a_backtracking_pattern_on_an_moe_model_is_refused_before_peft_s_rewrite_runs_it(api, field):
    """On Mixtral the rewrite of the config matches the patterns against every module and parameter name before
    any target is chosen: the cost check must come first there too."""
    lora: dict = {"target_modules": NASTIER} if field == "target_modules" else {
        "target_modules": ".*\\.q_proj", "exclude_modules": NASTIER}
    response = api.post("/v1/fine_tuning/estimate", json={"model": "mistralai/Mixtral-8x7B-v0.1", "lora": lora})
    _assert_refused_quickly(response, field)
