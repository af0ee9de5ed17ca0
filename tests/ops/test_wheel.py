"""`pip install tuneboard` gives a working dashboard: the wheel built from this checkout carries the templates,
static files, front-end library files and migrations (and fails to build without the front-end files), and,
installed in a fresh virtual environment outside the checkout, `tuneboard up` serves every page with all its
scripts and stylesheets.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from app.bundled_files import VENDOR_FILES
from app.settings import REPO_ROOT
from tests.conftest import require
from tests.jobs.helpers import chat_records, json_lines
from tests.ops import test_up
from tests.ops.test_up import UpProcess, _alive, _process_tree
from tests.services import free_port

BUNDLE = "app/_bundled"
# The checkout's own files a wheel must carry, as (folder or file in the checkout, its place in the wheel).
CARRIED = [("templates", f"{BUNDLE}/templates"), ("static", f"{BUNDLE}/static"),
           ("migrations", f"{BUNDLE}/migrations"), ("alembic.ini", f"{BUNDLE}/alembic.ini"),
           ("app/estimator/catalog_data", "app/estimator/catalog_data"),
           ("app/datasets/demo_data", "app/datasets/demo_data"), ("workers", "workers")]
# What `pip install tuneboard` leaves out (the `worker` extra): hidden from the test environment, so `tuneboard
# up` runs as on a web-only install, without a worker and the demo model's conversion.
ML_STACK = ("torch", "transformers", "peft")
DEMO_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # in the estimator's packaged catalog: no download, no torch


def _build_wheel(source: Path, out: Path) -> subprocess.CompletedProcess:
    """`pip wheel` of a project folder (the build backend comes from the package index, as for any user)."""
    return subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out), str(source)],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from this checkout."""
    require(all((REPO_ROOT / "node_modules" / name).is_file() for name in VENDOR_FILES),
            "node_modules with the front-end libraries (`npm ci`)")
    out = tmp_path_factory.mktemp("wheel")
    built = _build_wheel(REPO_ROOT, out)
    assert built.returncode == 0, built.stdout + built.stderr
    [found] = out.glob("tuneboard-*.whl")
    return found


def _files_under(path: Path) -> list[Path]:
    return [p for p in sorted(path.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]


def test_the_wheel_carries_the_pages_front_end_files_and_migrations(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for source, target in CARRIED:
        path = REPO_ROOT / source
        expected |= {target} if path.is_file() else {f"{target}/{f.relative_to(path).as_posix()}"
                                                     for f in _files_under(path)}
    assert len(expected) > 40
    assert sorted(expected - names) == []
    # Exactly the front-end files the pages load, not the rest of node_modules.
    vendor = {name.removeprefix(f"{BUNDLE}/vendor/") for name in names if name.startswith(f"{BUNDLE}/vendor/")}
    assert vendor == VENDOR_FILES
    assert not [name for name in names if "node_modules" in name or name.startswith(("tests/", "migrations/"))]


def test_without_the_front_end_files_the_build_fails_and_says_to_run_npm_ci(tmp_path):
    project = tmp_path / "project"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("app", "workers", "templates", "static", "migrations"):
        shutil.copytree(REPO_ROOT / name, project / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "hatch_build.py", "alembic.ini"):
        shutil.copy(REPO_ROOT / name, project / name)
    (project / "node_modules" / "htmx.org").mkdir(parents=True)  # an install that lost its files

    built = _build_wheel(project, tmp_path / "out")
    output = built.stdout + built.stderr
    assert built.returncode != 0, output
    assert "node_modules lacks the front-end files the pages load" in output, output
    assert "node_modules/htmx.org/dist/htmx.min.js" in output and "Run `npm ci`" in output
    assert not list((tmp_path / "out").glob("*.whl"))


def _third_party_packages(folder: Path) -> Path:
    """This checkout's installed dependencies as a folder of links, less the ML stack and less the checkout's own
    (editable) install: what `pip install tuneboard` would put beside the wheel, without downloading it again."""
    folder.mkdir()
    sites = {Path(sysconfig.get_paths()[kind]) for kind in ("purelib", "platlib")}
    for entry in (entry for site in sorted(sites) for entry in site.iterdir()):
        name = entry.name.lower()
        if (name.startswith(ML_STACK) or "tuneboard" in name or name.startswith(("__editable__", "_editable"))
                or name.endswith(".pth") or name in ("app", "workers", "__pycache__")
                or (folder / entry.name).is_symlink()):
            continue
        (folder / entry.name).symlink_to(entry)
    return folder


@pytest.fixture
def installed(wheel, tmp_path) -> Path:
    """A fresh virtual environment outside the checkout with the wheel installed; returns its bin folder."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, timeout=300)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "checkout_dependencies.pth").write_text(f"{_third_party_packages(tmp_path / 'dependencies')}\n")
    return venv / "bin"


def _clean_env(**values: str) -> dict[str, str]:
    """The environment without Tuneboard settings or any Python path that could lead back to the checkout."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TUNEBOARD_", "PYTHON", "VIRTUAL_ENV"))}
    return {**env, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **values}


def _stop(up: UpProcess, started: set[int]) -> None:
    """Ctrl-C, as a user stops it; whatever is left after a minute is killed."""
    if up.process.poll() is None:
        up.process.send_signal(signal.SIGINT)
        try:
            up.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            up.process.kill()
    for pid in started:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _load_page(page, path: str) -> list[str]:
    """Open a page and return its problems: failed requests, error answers, scripts or stylesheets not loaded."""
    problems: list[str] = []
    answered: dict[str, int] = {}
    page.on("requestfailed", lambda request: problems.append(f"{request.url} failed: {request.failure}"))
    page.on("response", lambda response: answered.__setitem__(response.url, response.status))
    response = page.goto(path)  # "load": after every script and stylesheet
    if response.status != 200:
        problems.append(f"{path} answered {response.status}")
    problems += [f"{url} answered {status}" for url, status in answered.items() if status >= 400]
    scripts = page.eval_on_selector_all("script[src]", "elements => elements.map(e => e.src)")
    sheets = page.eval_on_selector_all("link[rel=stylesheet]", "elements => elements.map(e => [e.href, !!e.sheet])")
    problems += [f"script {url} was not loaded" for url in scripts if answered.get(url) != 200]
    problems += [f"stylesheet {url} was not applied" for url, applied in sheets if not applied or
                 answered.get(url) != 200]
    if not any("/vendor/" in url for url in scripts):
        problems.append(f"{path} loads no front-end library")
    return problems


@pytest.mark.browser
def test_an_installed_wheel_serves_every_page_outside_the_checkout(installed, tmp_path, browser, monkeypatch):
    where = subprocess.run([str(installed / "python"), "-c", "import app, importlib.util as u; "
                            "print(app.__file__); print(u.find_spec('torch'))"],
                           cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, check=True)
    app_file, torch_spec = where.stdout.split()
    assert Path(app_file).is_relative_to(installed.parent), app_file  # the wheel's `app`, not the checkout's
    assert torch_spec == "None"

    port = free_port()
    monkeypatch.setattr(test_up, "TUNEBOARD", str(installed / "tuneboard"))  # what UpProcess runs: the new venv's
    up = UpProcess(tmp_path, _clean_env(TUNEBOARD_DATA_DIR=str(tmp_path / "data"), TUNEBOARD_PORT=str(port),
                                        TUNEBOARD_EMBEDDED_REDIS_PORT=str(free_port())))
    started: set[int] = set()
    try:
        address = up.wait_for_line(r"Tuneboard is running at (http://\S+)/")[1]
        link = up.wait_for_line(r"^\s+(http://\S+/login/link/\S+)$")[1]
        started = _process_tree(up.process.pid)
        assert any("No worker started" in line for line in up.lines), up.lines  # the web-only install
        assert (tmp_path / "data" / "tuneboard.db").is_file()  # migrated with the wheel's migrations

        context = browser.new_context(base_url=address)
        page = context.new_page()
        page.goto(link)  # the one-time link signs the admin in
        csrf = page.get_attribute('meta[name="csrf-token"]', "content")
        headers = {"X-CSRF-Token": csrf}
        upload = context.request.post("/v1/files", headers=headers, multipart={
            "purpose": "fine-tune",
            "file": {"name": "colours.jsonl", "mimeType": "application/jsonl", "buffer": json_lines(chat_records(8))}})
        assert upload.status == 200, upload.text()
        jobs = []
        for steps in (10, 20):  # queued (no worker), enough for the job and compare pages
            created = context.request.post("/v1/fine_tuning/jobs", headers=headers, data={
                "model": DEMO_MODEL, "training_file": upload.json()["id"],
                "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                "training": {"max_steps": steps, "batch_size": 2, "sequence_length": 64, "precision": "fp32"}})
            assert created.status == 200, created.text()
            jobs.append(created.json()["id"])

        problems = {}
        for path in ("/", "/jobs", "/account", "/team", "/docs", f"/jobs/{jobs[0]}", f"/compare?jobs={','.join(jobs)}"):
            page = context.new_page()
            problems[path] = _load_page(page, path)
            if path == "/docs":
                problems[path] += [] if page.evaluate("typeof SwaggerUIBundle") == "function" else ["no Swagger UI"]
            else:
                problems[path] += [] if page.evaluate("typeof htmx") == "object" else ["htmx is not defined"]
            if path.startswith(("/jobs/", "/compare")):
                problems[path] += [] if page.evaluate("typeof uPlot") == "function" else ["uPlot is not defined"]
            page.close()
        assert problems == {path: [] for path in problems}
        context.close()
        started |= _process_tree(up.process.pid)
    finally:
        _stop(up, started | _process_tree(up.process.pid))
    assert up.process.returncode == 0
