"""Property-based fuzzing of the whole REST API from its OpenAPI schema (schemathesis), against the real server.

A uvicorn process on this test's database and Redis, called with a valid API token. Schemathesis' engine runs
its examples, coverage (boundary values: huge integers, unicode digits, NUL, empty and over-long strings) and
fuzzing (valid and invalid requests) phases on every documented operation, and every answer is checked: no
5xx, and status code, content type, headers and body as the schema documents them. Runs on SQLite and
PostgreSQL; bounded by FUZZ_EXAMPLES per operation and a 50 s budget per database, so the suite stays short
(TUNEBOARD_FUZZ_EXAMPLES and TUNEBOARD_FUZZ_SECONDS raise them for a longer hunt).
"""

from __future__ import annotations

import os

import pytest

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.engine import Status, from_schema  # noqa: E402
from schemathesis.engine.events import EngineFinished, FatalError, ScenarioFinished  # noqa: E402

from tests.jobs.helpers import chat_records, json_lines  # noqa: E402

FUZZ_EXAMPLES = int(os.environ.get("TUNEBOARD_FUZZ_EXAMPLES", "25"))
TIME_BUDGET_SECONDS = int(os.environ.get("TUNEBOARD_FUZZ_SECONDS", "50"))
CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance"]
# The live stream of a job never ends by itself while the job runs; a fuzzed id gets a 404 there anyway, and
# tests/jobs/test_sse.py covers the stream. Everything else, downloads included, is fuzzed.
SKIPPED = r"/stream$"


def _seed_team(base_url: str, headers: dict) -> dict[str, str]:
    """A file and a job (with its events) in the team; their ids, by parameter name."""
    import httpx

    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
        file_id = client.post("/v1/files", data={"purpose": "fine-tune"},
                              files={"file": ("train.jsonl", json_lines(chat_records(8)))}).json()["id"]
        job = client.post("/v1/fine_tuning/jobs", json={"model": "HuggingFaceTB/SmolLM2-135M-Instruct",
                                                        "training_file": file_id})
        job.raise_for_status()
    return {"file_id": file_id, "job_id": job.json()["id"]}


def _failures(event: ScenarioFinished) -> list[str]:
    """Each failed check of a finished scenario, with the curl command that reproduces it."""
    found = []
    for checks in event.recorder.checks.values():
        for check in checks:
            if check.status == Status.FAILURE and check.failure_info is not None:
                failure = check.failure_info.failure
                found.append(f"{event.label} [{event.phase.value}] {check.name}: {failure.title}\n"
                             f"  {failure.message[:300]}\n  {check.failure_info.code_sample}")
    return found


# Schemathesis 4's Python API: openapi.from_url, the run's config, and engine.from_schema(...).execute(), the
# engine its CLI drives (its pytest plugin's from_fixture does not run on pytest 9).
@pytest.mark.long
@pytest.mark.both_databases  # what a generated value does to the database is half of what this looks for
def test_no_generated_request_answers_5xx_or_breaks_the_schema(live_server, account, start_worker, tuneboard_env):
    # Chat completions are answered by an inference worker; without one every valid request would be a 503.
    start_worker(queues=[tuneboard_env.settings.inference_queue], name="inference")
    headers = account.headers
    ids = _seed_team(live_server.url, headers)
    schema = schemathesis.openapi.from_url(f"{live_server.url}/openapi.json", headers=headers)
    # Ids of objects that exist, so the generated cursors, filters and bodies reach the code behind the lookup
    # (the `after=ftevent-²` crash needed a real job); unknown ids are tests/security/test_path_traversal.py's.
    schema.config.update(base_url=live_server.url, headers=headers, continue_on_failure=True, request_timeout=60,
                         parameters=ids)
    schema.config.max_time = TIME_BUDGET_SECONDS
    schema.config.seed = 20261201  # the same cases on every run: a failure found once is found again
    schema.config.generation.update(max_examples=FUZZ_EXAMPLES, database="none")
    schema.config.phases.update(phases=["examples", "coverage", "fuzzing"])
    schema.config.checks.update(included_check_names=CHECKS)
    schema = schema.exclude(path_regex=SKIPPED)

    failures, tested, cases, finished = [], set(), 0, None
    for event in from_schema(schema).execute():
        if isinstance(event, FatalError):
            pytest.fail(f"schemathesis could not run: {event.exception!r}")
        if isinstance(event, ScenarioFinished):
            if event.status != Status.SKIP:
                tested.add(event.label)
                cases += len(event.recorder.cases)
            failures += _failures(event)
        if isinstance(event, EngineFinished):
            finished = event
    assert finished is not None
    print(f"\n{cases} generated requests on {len(tested)} operations in {finished.running_time:.0f} s "
          f"({finished.stop_reason.value})")
    assert len(tested) >= 18, sorted(tested)
    assert not failures, "\n\n".join(dict.fromkeys(failures)) + f"\n\n{len(failures)} failed checks"
