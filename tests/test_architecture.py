"""The architecture DESIGN.md draws, as import-linter contracts (pyproject's [tool.importlinter]): app never imports
the ML stack, the estimator stays pure, app's packages import only downwards, the terminal client speaks REST only."""

from __future__ import annotations

import pytest
from importlinter import configuration
from importlinter.application import use_cases
from importlinter.configuration import settings

from app.settings import REPO_ROOT

configuration.configure()
PYPROJECT = str(REPO_ROOT / "pyproject.toml")


def lint(capsys, monkeypatch, *, extra_import: tuple[str, str] | None = None) -> tuple[bool, str]:
    """Check every contract on the tree as it is (plus one added import); returns (all kept, the report)."""
    monkeypatch.chdir(REPO_ROOT)
    if extra_import is not None:
        build = settings.GRAPH_BUILDER.build

        def build_with_extra_import(**options):
            graph = build(**options)
            graph.add_import(importer=extra_import[0], imported=extra_import[1], line_number=1,
                             line_contents=f"import {extra_import[1]}")
            return graph

        monkeypatch.setattr(settings.GRAPH_BUILDER, "build", build_with_extra_import)
    kept = use_cases.lint_imports(PYPROJECT, cache_dir=None, no_logo=True)
    # The report is wrapped for a terminal; one line per run of whitespace reads the same whatever the width.
    return kept, " ".join(capsys.readouterr().out.split())


def test_every_contract_is_kept(capsys, monkeypatch):
    kept, report = lint(capsys, monkeypatch)
    assert kept, report
    assert "Contracts: 5 kept, 0 broken." in report


@pytest.mark.parametrize(("importer", "imported", "contract"), [
    ("app.web.templating", "torch", "app never imports the ML stack"),
    ("app.jobs.api", "workers.lora_config", "app never imports the ML stack"),
    ("app.estimator.counting", "sqlalchemy", "the estimator is pure domain code"),
    ("app.estimator.memory", "app.settings", "the estimator is pure domain code"),
    ("app.storage.artifacts", "app.jobs.lifecycle", "app's packages import only downwards"),
    ("app.accounts.users", "app.configure.page", "app's packages import only downwards"),
    ("app.client.http", "sqlalchemy", "the terminal client"),
    ("workers.tasks", "app.web.templating", "workers use app's domain code, never its web layer"),
])
def test_a_forbidden_import_breaks_its_contract(capsys, monkeypatch, importer, imported, contract):
    kept, report = lint(capsys, monkeypatch, extra_import=(importer, imported))
    assert not kept
    assert "Contracts: 4 kept, 1 broken." in report
    _, broken = report.split("Broken contracts", 1)
    assert contract in broken and f"{importer} -> {imported}" in broken, report
