"""Every page sends a Content-Security-Policy without inline scripts, nosniff, frame-ancestors 'none' (and
X-Frame-Options), a Referrer-Policy, and HSTS only over https as a trusted proxy reports it.

In real Chromium: every page loads with no CSP violation and still works (htmx swaps, charts, Swagger UI), and
a page of another origin cannot show the signed-in /account page in an iframe.
"""

from __future__ import annotations

import http.server
import os
import threading
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from app.web.security_headers import CONTENT_SECURITY_POLICY
from tests.service_fixtures import signed_in_context
from tests.services import free_port

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
PAGES = ["/", "/jobs", "/account", "/team", "/docs"]


def directives(policy: str) -> dict[str, list[str]]:
    """A CSP header as directive -> its sources."""
    return {name: sources for name, *sources in (part.split() for part in policy.split(";") if part.strip())}


@SQLITE_ONLY
def test_every_page_and_api_answer_carries_the_security_headers(live_server, account):
    cookies = {"tuneboard_session": account.session_cookie}
    with httpx.Client(base_url=live_server.url, cookies=cookies, timeout=30) as client:
        answers = [client.get(path) for path in [*PAGES, "/login", "/v1/models", "/static/js/app.js", "/healthz"]]
    for response in answers:
        assert response.status_code == 200, (response.url, response.status_code)
        headers = response.headers
        policy = directives(headers["content-security-policy"])
        assert policy["script-src"] == ["'self'"], response.url  # no 'unsafe-inline', no 'unsafe-eval'
        assert "'unsafe-inline'" not in headers["content-security-policy"]
        assert policy["frame-ancestors"] == ["'none'"] and policy["object-src"] == ["'none'"]
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "strict-origin-when-cross-origin"
        assert "strict-transport-security" not in headers  # plain http


@pytest.fixture
def behind_a_proxy(tuneboard_env, monkeypatch):
    """The server believes X-Forwarded-Proto from 127.0.0.1, as behind a TLS-terminating proxy on this host."""
    tuneboard_env.env["TUNEBOARD_TRUSTED_PROXIES"] = "127.0.0.1"


@SQLITE_ONLY
def test_hsts_only_when_a_trusted_proxy_says_the_scheme_is_https(behind_a_proxy, live_server):
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        over_https = client.get("/login", headers={"X-Forwarded-Proto": "https"})
        over_http = client.get("/login")
    assert over_https.headers["strict-transport-security"].startswith("max-age=31536000")
    assert "strict-transport-security" not in over_http.headers


@SQLITE_ONLY
def test_hsts_over_https_only_and_never_for_an_untrusted_claim_of_https(tuneboard_env):
    from fastapi.testclient import TestClient

    from app.main import create_app

    app = create_app()  # no trusted proxies: the peer's own scheme counts, X-Forwarded-Proto is ignored
    with TestClient(app, base_url="https://tuneboard.example") as over_https:
        assert over_https.get("/login").headers["strict-transport-security"].startswith("max-age=")
    with TestClient(app) as over_http:
        assert "strict-transport-security" not in over_http.get("/login").headers
        claimed = over_http.get("/login", headers={"X-Forwarded-Proto": "https"})
        assert "strict-transport-security" not in claimed.headers


# --- Chromium -----------------------------------------------------------------------------------------------


def _finished_jobs(account, count: int = 2, steps: int = 30) -> list[str]:
    """Succeeded jobs of the account's team, each with a loss curve in the database."""
    from app.db import new_session
    from app.tables import DataFile, Job, Metric

    ids = []
    with new_session() as session:
        data_file = DataFile(filename="train.jsonl", bytes=1, format="chat", examples=8, storage_key="datasets/t",
                             team_id=account.team_id)
        session.add(data_file)
        session.flush()
        for n in range(count):
            job = Job(model="HuggingFaceTB/SmolLM2-135M-Instruct", queue="default", status="succeeded",
                      config={"lora": {"r": 8 * (n + 1)}, "training": {"max_steps": steps}}, total_steps=steps,
                      training_file_id=data_file.id, team_id=account.team_id, created_by=account.user_id,
                      suffix=f"run-{n + 1}", step=steps, started_at=1.0e9, finished_at=1.0e9 + 60,
                      trainable_params=460_800, final_metrics={"loss": 2.0 / steps})
            session.add(job)
            session.flush()
            session.add_all(Metric(job_id=job.id, step=s, loss=2.0 / (s + n), learning_rate=1e-4)
                            for s in range(1, steps + 1))
            ids.append(job.id)
        session.commit()
    return ids


class ViolationWatch:
    """Collects CSP violations a page reports, from the console and from securitypolicyviolation events."""

    def __init__(self, context):
        self.console: list[str] = []
        self.errors: list[str] = []
        context.add_init_script(
            "window.__csp = []; document.addEventListener('securitypolicyviolation', "
            "(e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));")
        context.on("console", lambda m: self.console.append(m.text) if m.type == "error" else None)
        context.on("weberror", lambda e: self.errors.append(str(e.error)))

    def assert_none(self, page, where: str) -> None:
        reported = page.evaluate("() => window.__csp")
        csp_console = [line for line in self.console if "Content Security Policy" in line]
        assert not reported and not csp_console, (where, reported, csp_console)
        assert not self.errors, (where, self.errors)


def _screenshot(page, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("TUNEBOARD_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"csp-{name}.png"), full_page=True)


@pytest.mark.browser
@SQLITE_ONLY
def test_every_page_works_in_chromium_without_a_csp_violation(browser, live_server, account, tmp_path):
    first, second = _finished_jobs(account)
    context = signed_in_context(browser, live_server.url, account, viewport={"width": 1400, "height": 1000})
    watch = ViolationWatch(context)
    page = context.new_page()

    # Configure: htmx swaps the estimate on an edit, and the memory bar gets its widths.
    page.goto("/")
    page.wait_for_selector("#peft-line")
    before = page.locator("#peft-line").inner_text()
    page.fill("#r", "64")
    expect(page.locator("#peft-line")).not_to_have_text(before)
    assert page.locator(".seg.seg-1").evaluate("(el) => el.style.width").endswith("%")
    page.locator("#model").fill("qwen")
    expect(page.locator("#model-results li").first).to_be_visible()  # the catalog picker's htmx search
    _screenshot(page, "configure", tmp_path)
    watch.assert_none(page, "/")

    # History: typing in the search box swaps the results.
    page.goto("/jobs")
    expect(page.locator("#history-results tbody tr")).to_have_count(2)
    page.fill("#filter-q", "run-2")
    expect(page.locator("#history-results tbody tr")).to_have_count(1)
    _screenshot(page, "history", tmp_path)
    watch.assert_none(page, "/jobs")

    # Job page: the loss chart draws every point; the progress bar is as wide as the run.
    page.goto(f"/jobs/{first}")
    page.wait_for_function("() => window.tuneboardJob && window.tuneboardJob.steps().length === 30")
    expect(page.locator("#loss-chart canvas")).to_have_count(1)
    assert page.locator("#progress-fill").evaluate("(el) => el.style.width") == "100%"
    _screenshot(page, "job", tmp_path)
    watch.assert_none(page, "/jobs/{id}")

    # Compare: both runs on one chart, swatches coloured.
    page.goto(f"/compare?jobs={first},{second}")
    expect(page.locator("#compare-chart canvas")).to_have_count(1)
    expect(page.locator("#compare-chart-empty")).to_be_hidden()
    assert page.locator(".swatch").first.evaluate("(el) => getComputedStyle(el).backgroundColor") != \
        "rgba(0, 0, 0, 0)"
    _screenshot(page, "compare", tmp_path)
    watch.assert_none(page, "/compare")

    for path, ready in [("/account", "#tokens"), ("/team", "#members")]:
        page.goto(path)
        page.wait_for_selector(ready)
        _screenshot(page, path.strip("/"), tmp_path)
        watch.assert_none(page, path)

    # Swagger UI renders the schema from its own script file.
    page.goto("/docs")
    expect(page.locator(".opblock").first).to_be_visible()
    _screenshot(page, "docs", tmp_path)
    watch.assert_none(page, "/docs")
    context.close()

    anonymous = browser.new_context(base_url=live_server.url)
    watch = ViolationWatch(anonymous)
    page = anonymous.new_page()
    page.goto("/login")
    expect(page.locator("input[name=email]")).to_be_visible()
    _screenshot(page, "login", tmp_path)
    watch.assert_none(page, "/login")
    anonymous.close()


@pytest.fixture
def other_origin(live_server):
    """A page on another port (another origin) that frames the signed-in /account page."""
    html = f'<!doctype html><title>elsewhere</title><iframe id="victim" src="{live_server.url}/account" ' \
           'width="900" height="600"></iframe>'.encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # the http.server API
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@pytest.mark.browser
@SQLITE_ONLY
def test_another_origin_cannot_show_the_signed_in_account_page_in_a_frame(browser, live_server, account,
                                                                         other_origin, tmp_path):
    context = signed_in_context(browser, live_server.url, account)
    refused: list[str] = []
    context.on("console", lambda m: refused.append(m.text) if "frame-ancestors" in m.text else None)
    page = context.new_page()
    assert page.goto(f"{live_server.url}/account").ok  # signed in: the page itself opens
    with page.expect_console_message(lambda m: "frame-ancestors" in m.text):  # Chromium refused to frame it
        page.goto(other_origin)
    framed = next(frame for frame in page.frames if frame != page.main_frame)
    assert account.email not in framed.content()
    assert "Account" not in (framed.title() or "")
    assert refused, "Chromium did not report the frame-ancestors refusal"
    _screenshot(page, "framed-account", tmp_path)
    context.close()


def test_policy_is_what_the_tests_assume():
    policy = directives(CONTENT_SECURITY_POLICY)
    assert policy["default-src"] == ["'self'"] and policy["style-src"] == ["'self'"]
    assert "'unsafe-eval'" not in CONTENT_SECURITY_POLICY

