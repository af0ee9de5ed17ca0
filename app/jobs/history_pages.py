"""The team's job history page (/jobs): filters, search, sorting and pages of jobs to compare or open.

An HX-Request (a changed filter, a sort header, a page link) gets only the results fragment; the browser's
URL follows along (hx-push-url), so every view of the history is a link. Must not import torch or `workers`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.accounts.auth import PrincipalDep
from app.db import SessionDep
from app.jobs import history
from app.jobs.time_prediction import team_prediction_errors
from app.web.templating import templates, wants_fragment

router = APIRouter(include_in_schema=False)


@router.get("/jobs", response_class=HTMLResponse)
def history_page(request: Request, session: SessionDep, principal: PrincipalDep):
    """The team's jobs, filtered, searched, sorted and paged as the query string says."""
    filters = history.HistoryFilters.from_query(request.query_params)
    context = {"filters": filters, "page": history.history_page(session, principal.team.id, filters),
               "time_errors": team_prediction_errors(session, principal.team.id)}
    if wants_fragment(request):
        response = templates.TemplateResponse(request, "partials/history_results.html", {**context, "fragment": True})
        # The address bar gets the tidy form of the view (no empty fields), the one a person would share.
        response.headers["HX-Push-Url"] = filters.url(after=filters.after, before=filters.before)
    else:
        context.update(history.filter_options(session, principal.team.id))
        response = templates.TemplateResponse(request, "jobs.html", context)
    response.headers["Vary"] = "HX-Request"  # one URL, two bodies: caches must keep them apart
    return response
