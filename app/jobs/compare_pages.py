"""The compare page (/compare?jobs=a,b): 2 to 5 of the team's runs, their loss curves on one chart (and DPO runs'
reward margins on another) and the settings in which they differ. The curves are drawn in the browser
(static/js/compare.js) from each job's metrics endpoint. Must not import torch or `workers`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from app.accounts.auth import PrincipalDep, team_scoped
from app.db import SessionDep
from app.jobs import compare
from app.jobs.history import HistoryRow
from app.tables import DataFile, Job, User
from app.web.templating import templates

router = APIRouter(include_in_schema=False)


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, session: SessionDep, principal: PrincipalDep,
                 jobs: Annotated[list[str], Query()] = ()):
    """Loss curves overlaid and a config diff for the chosen jobs of the team."""
    ids = compare.parse_ids(jobs)
    problem = compare.count_problem(ids)
    if problem:
        return templates.TemplateResponse(request, "compare.html", {"problem": problem, "ids": ids},
                                          status_code=400)
    found = [team_scoped(session, Job, job_id, principal) for job_id in ids]
    missing = [job_id for job_id, job in zip(ids, found, strict=True) if job is None]
    if missing:
        return templates.TemplateResponse(request, "not_found.html", {"what": f"job {missing[0]}"}, status_code=404)
    file_ids = {f for job in found for f in (job.training_file_id, job.validation_file_id) if f}
    files = {f.id: f for f in session.scalars(select(DataFile).where(DataFile.id.in_(file_ids)))}
    users = dict(session.execute(select(User.id, User.email)
                                 .where(User.id.in_({j.created_by for j in found if j.created_by}))).all())
    rows = [HistoryRow(job, files[job.training_file_id].filename if job.training_file_id in files else None,
                       users.get(job.created_by)) for job in found]
    flats = [compare.flatten(job.config, job.training_file_id, job.validation_file_id) for job in found]
    context = {"problem": None, "rows": rows, "colours": compare.COLOURS, "files": files,
               "diff": compare.config_diff(flats), "keys_total": len({k for f in flats for k in f}),
               "show": compare.show,
               "any_dpo": any((job.config.get("method") or {}).get("type") == "dpo" for job in found),
               "chart_jobs": [{"id": j.id, "name": j.suffix or j.id, "colour": c}
                              for j, c in zip(found, compare.COLOURS, strict=False)]}
    return templates.TemplateResponse(request, "compare.html", context)
