"""Authorization, built from the application's own route table so no route can escape it: every route
is called as an anonymous visitor, a member of another team, a member and an admin of the owning team.

Anonymous callers get 401 (API) or a redirect to sign in (pages); another team's objects answer 404 as
if they did not exist and never appear in lists; admin pages refuse members with 403.
"""

from __future__ import annotations

import io
import re

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from app.accounts.auth import current_principal
from tests.jobs.helpers import chat_records, json_lines

# Which caller reaches which route is the app's guards; each team-filtered query runs on both databases in the jobs,
# files and API tests.
pytestmark = pytest.mark.one_database

# Probes and scrapers cannot sign in; /metrics checks its own token or an admin session
# (tests/security/test_exposure.py).
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/login"), ("POST", "/login"),
          ("GET", "/login/link/{token}"), ("POST", "/login/invitation")}
ADMIN_ONLY = {("POST", "/team/invite"), ("POST", "/team/members/{user_id}/role"),
              ("POST", "/team/members/{user_id}/remove"), ("POST", "/team/invitations/{invitation_id}/withdraw")}
# What widens a caller's reach (the password, joining a team) needs a browser session: an API token is refused.
BROWSER_ONLY = {("POST", "/account/password"), ("POST", "/account/invitations/{invitation_id}/accept"),
                ("POST", "/account/invitations/{invitation_id}/decline"), ("POST", "/session/team")}


def _needs_principal(dependant) -> bool:
    """Whether current_principal is among a route's dependencies, at any depth (AdminDep, BrowserDep, ...)."""
    return any(d.call is current_principal or _needs_principal(d) for d in dependant.dependencies)


def route_table(app) -> list[tuple[str, str, bool]]:
    """(method, path, guarded by current_principal) for every route, walking included routers."""
    rows = []

    def walk(routes, prefix: str, inherited: bool) -> None:
        for route in routes:
            if hasattr(route, "original_router"):  # an included router
                context = route.include_context
                guarded = inherited or any(d.dependency is current_principal for d in context.dependencies)
                walk(route.original_router.routes, prefix + context.prefix, guarded)
            elif isinstance(route, APIRoute):
                own = any(d.dependency is current_principal for d in route.dependencies)
                guarded = inherited or own or _needs_principal(route.dependant)
                rows.extend((method, prefix + route.path, guarded) for method in sorted(route.methods))

    walk(app.routes, "", False)
    return rows


def _all_routes():
    from app.main import create_app

    return [(m, p) for m, p, _ in route_table(create_app()) if m != "HEAD"]


ROUTES = _all_routes()


def test_route_table_is_complete_and_every_non_public_route_is_guarded():
    from app.main import create_app

    table = route_table(create_app())
    assert len(table) > 30
    unguarded = {(m, p) for m, p, guarded in table if not guarded} - PUBLIC
    assert unguarded == set()


@pytest.fixture
def world(tuneboard_env, account, make_user):
    """Team Alpha (admin Alice, member Bob) owning a file, a job and a saved conversation; team Beta (member
    Carol)."""
    from app.main import create_app

    bob = make_user("bob@example.com", "Alpha", "member")
    carol = make_user("carol@example.com", "Beta", "member")
    with TestClient(create_app(), headers=account.headers, follow_redirects=False) as alice:
        file_id = alice.post("/v1/files", files={"file": ("t.jsonl", io.BytesIO(json_lines(chat_records(4))))},
                             data={"purpose": "fine-tune"}).json()["id"]
        job_id = alice.post("/v1/fine_tuning/jobs", json={"model": "HuggingFaceTB/SmolLM2-135M", "training_file":
                                                          file_id, "lora": {"target_modules": ["q_proj"]}}).json()["id"]
        conversation_id = alice.post("/playground/conversations", json={
            "title": "t", "base_model": "openai-community/gpt2", "models": ["openai-community/gpt2"],
            "turns": [{"user": "hi", "replies": []}]}).json()["id"]
    from app.db import new_session
    from app.tables import ApiToken

    with new_session() as session:
        token_id = session.query(ApiToken).filter_by(user_id=account.user_id).first().id
    values = {"job_id": job_id, "file_id": file_id, "token_id": token_id, "user_id": bob.user_id,
              "conversation_id": conversation_id, "kind": "merged",
              "model_id": "openai-community/gpt2", "token": "not-a-link", "invitation_id": "inv-none",
              "team_id": account.team_id}
    return {"alice": account, "bob": bob, "carol": carol, "values": values,
            "secrets": {job_id, file_id, conversation_id}}


def _request(client: TestClient, method: str, path: str, values: dict):
    url = re.sub(r"\{(\w+)(:path)?\}", lambda m: values[m.group(1)], path)
    if path.endswith("/stream"):
        # A live stream does not end while its job runs: look at the status and headers only.
        with client.stream("GET", url) as response:
            if response.status_code != 200:
                response.read()
            return response
    if method == "GET":
        params = ({"model": values["model_id"]} if path.endswith("/preview") else
                  {"job_id": values["job_id"]} if path.endswith("/held-out") else None)
        return client.get(url, params=params)
    if path == "/v1/files":
        return client.post(url, files={"file": ("x.jsonl", io.BytesIO(json_lines(chat_records(2))))},
                           data={"purpose": "fine-tune"})
    if path.startswith("/v1/"):
        body = {"model": "openai-community/gpt2", "training_file": values["file_id"]}
        return client.request(method, url, json=body if path.endswith(("/jobs", "/estimate")) else None)
    form = {"model": "HuggingFaceTB/SmolLM2-135M", "role": "member", "email": "new@example.com", "name": "x",
            "team_id": values["team_id"], "password": "a long enough password"}
    return client.request(method, url, data=form)


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_route_answers_each_kind_of_caller_correctly(world, method, path):
    from app.main import create_app

    values, secrets = world["values"], world["secrets"]
    app = create_app()
    with TestClient(app, follow_redirects=False) as anonymous:
        response = _request(anonymous, method, path, values)
    if (method, path) in PUBLIC:
        # Open to anyone (a wrong password may still answer 401, from the form itself).
        assert "invalid_api_key" not in response.text
        assert not response.headers.get("location", "").startswith("/login?next=")
        return
    if path.startswith("/v1/") or path == "/openapi.json":
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "invalid_api_key"
    else:
        assert response.status_code == 303 and response.headers["location"].startswith("/login?next=")

    with TestClient(app, headers=world["carol"].headers, follow_redirects=False) as outsider:
        response = _request(outsider, method, path, values)
    # Creating a job names Alpha's training file in its body: for Carol that file does not exist.
    names_an_object = ("{job_id}" in path or "{file_id}" in path or "{conversation_id}" in path
                       or (method, path) in {("POST", "/v1/fine_tuning/jobs"), ("GET", "/playground/held-out")})
    if names_an_object:
        assert response.status_code == 404, f"another team reached {path}: {response.status_code}"
    elif (method, path) in ADMIN_ONLY:
        assert response.status_code == 403
    else:
        assert response.status_code < 500
        assert not any(secret in response.text for secret in secrets), f"{path} leaked another team's object"

    with TestClient(app, headers=world["bob"].headers, follow_redirects=False) as member:
        response = _request(member, method, path, values)
    if (method, path) in ADMIN_ONLY | BROWSER_ONLY:
        assert response.status_code == 403
    else:
        assert response.status_code not in (401, 403), f"a member was refused {path}: {response.text[:300]}"
        assert not _not_found(response), f"a member could not see {path}: {response.text[:300]}"

    with TestClient(app, headers=world["alice"].headers, follow_redirects=False) as admin:
        response = _request(admin, method, path, values)
    if (method, path) in BROWSER_ONLY:
        assert response.status_code == 403 and "signed in with a browser" in response.text
        return
    assert response.status_code not in (401, 403), f"the admin was refused {path}: {response.text[:300]}"
    assert not _not_found(response), f"the admin could not see {path}: {response.text[:300]}"


def _not_found(response) -> bool:
    """Whether the answer says the named object does not exist (as it must for another team)."""
    return response.status_code == 404 and any(code in response.text for code in (
        "job_not_found", "file_not_found", "There is no", "No file with id"))
