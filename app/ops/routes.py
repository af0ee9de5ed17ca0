"""Operations endpoints for probes and scrapers: `/healthz` and `/readyz` open without sign-in, `/metrics`
for the metrics token or a signed-in admin.

/metrics names every queue, job count and worker of the install, so it is not for anyone who can reach the
port: a scraper sends TUNEBOARD_METRICS_TOKEN as a bearer token (it cannot sign in), an admin may look from
the browser, and TUNEBOARD_METRICS_PUBLIC=true opens it on a private network. Must not import torch or `workers`.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from app.accounts.auth import NotAuthenticated, bearer_token, current_principal
from app.ops import metrics
from app.ops.readiness import readiness
from app.settings import Settings, get_settings
from app.web.api_errors import ErrorEnvelope, error_response

router = APIRouter(tags=["operations"])
SettingsDep = Annotated[Settings, Depends(get_settings)]


@router.get("/healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    """The process is up and serving."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: database, Redis and artifact store reachable",
            responses={503: {"description": "A dependency is unreachable; `checks` says which and why"}})
def readyz(settings: SettingsDep) -> JSONResponse:
    """200 when every dependency answers within its timeout, else 503; the body names each check."""
    ready, body = readiness(settings)
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {metrics.CONTENT_TYPE_LATEST: {}}}, 401: {"model": ErrorEnvelope},
                       403: {"model": ErrorEnvelope}})
async def prometheus_metrics(request: Request, settings: SettingsDep) -> Any:
    """Queue depth, jobs, workers, job run times and request latency, in Prometheus' text format.

    Needs `Authorization: Bearer <TUNEBOARD_METRICS_TOKEN>` or a signed-in team admin, unless
    TUNEBOARD_METRICS_PUBLIC=true."""
    refused = None if settings.metrics_public else await _refusal(request, settings)
    if refused is not None:
        return refused
    body, content_type = await run_in_threadpool(metrics.render, request.app.state.metrics_registry,
                                                 request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type})


async def _refusal(request: Request, settings: Settings) -> Response | None:
    """None when the caller may read the metrics, else the 401 or 403 that says how to get in."""
    token = settings.metrics_token.get_secret_value() if settings.metrics_token is not None else None
    if token and _bearer_matches(request, token):
        return None
    try:
        # A browser session only: an API token belongs to scripts, and the scrape token is the scrapers' key.
        if bearer_token(request) is not None:
            raise NotAuthenticated()
        principal = await current_principal(request)
    except NotAuthenticated:
        how = "`Authorization: Bearer <TUNEBOARD_METRICS_TOKEN>` or a signed-in admin" if token else \
            "a signed-in admin (or set TUNEBOARD_METRICS_TOKEN for scrapers)"
        response = error_response(401, f"This endpoint needs {how}.", code="invalid_metrics_token")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
    if not principal.is_admin:
        return error_response(403, "Only team admins (or a scraper with TUNEBOARD_METRICS_TOKEN) can read /metrics.",
                              code="forbidden")
    return None


def _bearer_matches(request: Request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
