"""Operations endpoints for probes and scrapers, open without sign-in: `/healthz`, `/readyz`, `/metrics`.

/metrics can be closed with TUNEBOARD_METRICS_TOKEN (a bearer token, since a scraper cannot sign in).
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from app import metrics
from app.api_errors import ErrorEnvelope, error_response
from app.readiness import readiness
from app.settings import Settings, get_settings

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
            responses={200: {"content": {metrics.CONTENT_TYPE_LATEST: {}}}, 401: {"model": ErrorEnvelope}})
def prometheus_metrics(request: Request, settings: SettingsDep) -> Any:
    """Queue depth, jobs, workers, job run times and request latency, in Prometheus' text format."""
    if settings.metrics_token is not None and not _bearer_matches(request, settings.metrics_token.get_secret_value()):
        response = error_response(401, "This endpoint needs `Authorization: Bearer <TUNEBOARD_METRICS_TOKEN>`.",
                                  code="invalid_metrics_token")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
    body, content_type = metrics.render(request.app.state.metrics_registry, request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type})


def _bearer_matches(request: Request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
