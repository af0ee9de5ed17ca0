"""No value reaches a file outside its folder (issue 10, point 5): the preview's `loss_on` was put into a
cache path unchecked (read another team's cached preview, create or empty `*.log` files anywhere), and
every path and query parameter of every route is now tried with traversal values against a live server,
checking that nothing outside the data directory is created or changed and that nothing answers 500."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient

from app.accounts.auth import CSRF_HEADER, SESSION_COOKIE
from app.settings import REPO_ROOT
from tests.services import ServerProcess

pytestmark = pytest.mark.one_database  # paths on disk: no database question here

MODEL = "openai-community/gpt2"  # a catalog model: no inventory to compute
MARK = "tbprobe"  # in every payload's file name, so a file written anywhere is found by name
SECRET = "TEAM-BETA-SECRET-ROW"


def upload(http, name: str = "train.jsonl") -> str:
    lines = "".join(json.dumps({"text": f"example {i}"}) + "\n" for i in range(4)).encode()
    response = http.post("/v1/files", files={"file": (name, io.BytesIO(lines))}, data={"purpose": "fine-tune"})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def cached_preview(data_dir: Path, file_id: str, text: str, loss_on: str = "assistant") -> Path:
    """A preview as the preview process caches it, for the file and MODEL."""
    path = data_dir / "previews" / f"{file_id}--{MODEL.replace('/', '--')}--{loss_on}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "model": MODEL, "examples": 1, "total_tokens": 3, "trainable_tokens": 3, "longest": 3,
        "token_lengths": [[3, 1]], "has_chat": False, "chat_template": False,
        "rows": [{"line": 1, "tokens": 3, "trained": 3, "segments": [{"text": text, "trained": True}]}]}))
    return path


def snapshot(folder: Path, skip=()) -> dict[str, tuple[int, int, bytes]]:
    """Every file under folder (but `skip` folders) with its size, mtime and first bytes."""
    seen = {}
    for path in folder.rglob("*"):
        if any(path.is_relative_to(s) for s in skip) or not path.is_file():
            continue
        stat = path.stat()
        seen[str(path.relative_to(folder))] = (stat.st_size, stat.st_mtime_ns, path.read_bytes()[:64])
    return seen


def files_named_with_mark(*folders: Path) -> list[str]:
    found = []
    for folder in folders:
        for root, dirs, names in os.walk(folder):
            dirs[:] = [d for d in dirs if d not in ("node_modules", ".venv", ".git")]
            found += [os.path.join(root, n) for n in names + dirs if MARK in n]
    return found


@pytest.fixture
def sentinel(tmp_path) -> Path:
    """A folder outside the data dir, with a *.log the old preview code could empty."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "keep.log").write_text("keep")
    (folder / "keep.json").write_text("{}")
    return folder


def test_preview_loss_on_cannot_read_another_teams_preview_or_touch_files(tuneboard_env, account, make_user,
                                                                         sentinel):
    from app.main import create_app

    beta = make_user("bob@example.com", "Beta", "admin")
    app = create_app()
    with TestClient(app, headers=beta.headers) as bob, TestClient(app, headers=account.headers) as alice:
        theirs = upload(bob)
        cached_preview(tuneboard_env.data_dir, theirs, SECRET)
        mine = upload(alice)
        attacks = [f"/../{theirs}--{MODEL.replace('/', '--')}--assistant",  # another team's cached preview
                   "/../../../outside/keep",  # opens outside/keep.log for writing (empties it)
                   f"/../../../outside/{MARK}"]  # creates outside/tbprobe.log
        for loss_on in attacks:
            for _ in range(2):  # the first request made the folder the second one walked through
                response = alice.get(f"/datasets/{mine}/preview", params={"model": MODEL, "loss_on": loss_on})
                assert response.status_code == 422, response.text
                assert response.json()["error"]["param"] == "loss_on"
                assert SECRET not in response.text
    assert (sentinel / "keep.log").read_text() == "keep"
    assert sorted(p.name for p in sentinel.iterdir()) == ["keep.json", "keep.log"]
    assert not list((tuneboard_env.data_dir / "previews").glob(f"{mine}*"))


def payloads(sentinel: Path) -> list[str]:
    return [
        f"../../../outside/{MARK}", f"/../../../outside/{MARK}", "/../../../outside/keep", "../" * 10 + f"tmp/{MARK}",
        f"..%2f..%2f..%2foutside%2f{MARK}", f"..%252f..%252f{MARK}", f"{sentinel}/{MARK}", f"{sentinel}/keep",
        "/etc/passwd", f"{MARK}\x00.json", "\x00", f"..\\..\\..\\outside\\{MARK}",
        f"\u2215..\u2215..\u2215outside\u2215{MARK}", f"\uff0e\uff0e/\uff0e\uff0e/outside/{MARK}",
        f"\uff0e\uff0e\u2215\uff0e\uff0e\u2215{MARK}", "~nosuchuser", f"~root/{MARK}", "x" * 300 + MARK,
    ]


def every_route():
    """(methods, path format, path params, query params) of every route, mounted folders included."""
    from app.main import create_app

    def params(dependant, kind):
        own = [p.name for p in getattr(dependant, kind)]
        return own + [name for sub in dependant.dependencies for name in params(sub, kind)]

    for route in create_app().routes:
        contexts = list(route.effective_route_contexts()) if hasattr(route, "effective_route_contexts") else [route]
        for context in contexts:
            dependant = getattr(context, "dependant", None)
            if dependant is None:  # a mounted folder (static files, front-end libraries)
                yield {"GET"}, context.path + "/{file}", ["file"], []
            else:
                yield (set(context.methods) - {"HEAD"}, context.path_format, params(dependant, "path_params"),
                       params(dependant, "query_params"))


def test_traversal_values_in_every_parameter_of_every_route_touch_nothing_outside_the_data_dir(
        tuneboard_env, account, tmp_path, sentinel):
    server = ServerProcess(tuneboard_env.env, tmp_path / "server.log")
    try:
        server.wait_ready()
        # Signed in as a browser is (session cookie and CSRF token), so page-only routes answer too.
        with httpx.Client(base_url=server.url, timeout=30, cookies={SESSION_COOKIE: account.session_cookie},
                          headers={CSRF_HEADER: account.csrf_token}) as http:
            file_id = upload(http)
            job = http.post("/v1/fine_tuning/jobs", json={"model": MODEL, "training_file": file_id})
            assert job.status_code == 200, job.text
            valid = {"job_id": job.json()["id"], "file_id": file_id, "model_id": MODEL, "model": MODEL,
                     "jobs": job.json()["id"], "token": "x", "token_id": "x", "user_id": "x", "file": "x"}
            # The server's own files in tmp_path: its log, and the SQLite database this test points it at.
            own = [tuneboard_env.data_dir, tmp_path / "server.log", *tmp_path.glob("tuneboard.db*")]
            before = snapshot(tmp_path, skip=own)
            failures, sent = [], 0
            for methods, path, path_params, query_params in every_route():
                for method in sorted(methods):
                    for target in path_params + query_params:
                        for payload in payloads(sentinel):
                            for encode in ((lambda v: quote(v, safe="")), (lambda v: quote(v, safe="/")))[
                                    :2 if target in path_params else 1]:
                                filled = {p: encode(payload) if p == target else quote(valid.get(p, "x"), safe="")
                                          for p in path_params}
                                url = path.format(**filled)
                                query = {q: valid[q] for q in query_params if q in ("model", "jobs")}
                                if target in query_params:
                                    query[target] = payload
                                status = send(http, method, url, query)
                                sent += 1
                                if status >= 500:
                                    failures.append((method, path, target, payload[:40], status))
            for model in payloads(sentinel):  # the JSON bodies that name a model
                for url, body in (("/v1/fine_tuning/estimate", {"model": model}),
                                  ("/v1/fine_tuning/jobs", {"model": model, "training_file": file_id})):
                    status = send(http, "POST", url, {}, json=body)
                    sent += 1
                    if status >= 500:
                        failures.append(("POST", url, "model", model[:40], status))
    finally:
        server.stop()
    print(f"\n{sent} requests with traversal values")
    log_tail = (tmp_path / "server.log").read_text(errors="replace")[-3000:]
    assert failures == [], f"{len(failures)} of {sent} requests answered 5xx: {failures[:20]}\n{log_tail}"
    after = snapshot(tmp_path, skip=[*own, *tmp_path.glob("tuneboard.db*")])
    assert after == before  # nothing outside the data dir was created, removed or changed
    assert (sentinel / "keep.log").read_text() == "keep"
    assert files_named_with_mark(tmp_path.parent, REPO_ROOT) == []  # this session's temporary folder, the repo
    assert [name for name in os.listdir("/tmp") if MARK in name] == []


def send(http: httpx.Client, method: str, url: str, query: dict, **body) -> int:
    """The status of one request (599: the server dropped the connection); a live stream (SSE) is closed once
    its headers are in."""
    try:
        with http.stream(method, url, params=query, **body) as response:
            if "text/event-stream" not in response.headers.get("content-type", ""):
                response.read()
            return response.status_code
    except httpx.TransportError:
        return 599


@pytest.mark.parametrize("value", [
    "../x", "a/../../x", "/etc/passwd", "a\x00b", "a\\..\\x", "\u2215etc", "\uff0e\uff0e", "a/\uff0e\uff0e/x",
    "\ufe52\ufe52", ".", "", "a/\uff0fb", "x" * 256, "line\nbreak",
])
def test_the_one_path_function_refuses_what_could_leave_its_root(tmp_path, value):
    from app.safe_paths import UnsafePath, inside

    with pytest.raises(UnsafePath):
        inside(tmp_path, value)


def test_a_symlink_inside_the_root_that_points_out_is_refused(tmp_path):
    from app.safe_paths import UnsafePath, inside
    from app.storage.local import LocalStore

    root, outside = tmp_path / "artifacts", tmp_path / "outside"
    (root / "datasets").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (root / "datasets" / "link").symlink_to(outside)
    assert inside(root, "datasets/file-1/train.jsonl") == root / "datasets" / "file-1" / "train.jsonl"
    assert inside(root, "datasets/\u00e9t\u00e9.jsonl").name == "\u00e9t\u00e9.jsonl"  # unicode names are fine
    with pytest.raises(UnsafePath):
        inside(root, "datasets/link/secret.txt")
    store = LocalStore(root)
    with pytest.raises(UnsafePath):
        store.get_bytes("datasets/link/secret.txt")
    with pytest.raises(UnsafePath):
        store.put_bytes("datasets/link/planted.txt", b"x")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
