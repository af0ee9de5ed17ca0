"""The FastAPI application: routers, static files, error envelope. Must not import torch or `workers`."""

from __future__ import annotations

import gc
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from app.accounts import pages as account_pages
from app.accounts import sign_in_pages
from app.accounts.auth import current_principal, install_auth_handlers
from app.base_models import api as models_api
from app.configure import data_card, estimate_api
from app.configure import page as configure_page
from app.datasets import files_api
from app.estimator import catalog
from app.estimator.inventory import load_inventory
from app.inference import api as inference_api
from app.inference import models_api as model_list_api
from app.inference import playground_pages
from app.jobs import api as jobs_api
from app.jobs import compare_pages, exports_api, held_out_answers, history_pages, stream_api
from app.jobs import pages as job_pages
from app.jobs.lease_reaper import ReaperThread
from app.ops import metrics
from app.ops import routes as ops_routes
from app.ops.logging_setup import configure_logging
from app.ops.migrate import upgrade_database
from app.settings import get_settings
from app.storage.http_errors import install_store_error_handler
from app.web.api_errors import document_error_envelope, install_error_handlers
from app.web.body_limit import BodyLimitMiddleware, document_body_limit
from app.web.nul_guard import NulGuardMiddleware, document_nul_refusal
from app.web.security_headers import SecurityHeadersMiddleware
from app.web.vendor_files import VendorFiles


@asynccontextmanager
async def lifespan(_app: FastAPI):
    """Set up logging, bring the schema up to date before serving (a fleet may turn this off and migrate
    separately), and reap expired leases while serving so no job stays running when every worker is gone."""
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    if settings.migrate_on_start:
        await run_in_threadpool(upgrade_database)
    await run_in_threadpool(_settle_long_lived_objects)
    reaper = ReaperThread()
    reaper.start()
    yield
    reaper.stopped.set()


def _settle_long_lived_objects() -> None:
    # The catalog's inventories live as long as the process. Loaded and frozen out of the collector's view,
    # they no longer make every full collection (which lands on ~2% of estimates) walk ~50k objects.
    for entry in catalog.entries():
        load_inventory(catalog.inventory_path(entry.id))
    gc.collect()
    gc.freeze()


def create_app() -> FastAPI:
    """Build the web app with every router mounted."""
    settings = get_settings()
    app = FastAPI(
        lifespan=lifespan,
        title="Tuneboard",
        summary="Configure and launch LoRA fine-tunes with exact estimates.",
        version="0.1.0",
        # The schema and its viewer are served below, behind sign-in like every other page.
        docs_url=None, openapi_url=None,
    )
    install_error_handlers(app)
    install_auth_handlers(app)
    install_store_error_handler(app)
    app.add_middleware(NulGuardMiddleware)  # before any route can hand a NUL to the database
    app.add_middleware(BodyLimitMiddleware, settings=get_settings)
    app.add_middleware(SecurityHeadersMiddleware)
    app.state.metrics_registry, latency = metrics.make_registry(get_settings)
    app.add_middleware(metrics.RequestMetricsMiddleware, histogram=latency)
    if settings.trusted_proxy_list:
        # Added last, so it runs first: every later layer sees the client address and scheme the proxy saw.
        # Only listed proxies are believed; anyone else could write X-Forwarded-For themselves.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxy_list)
    # Probes and scrapers cannot sign in; /metrics has its own optional token.
    app.include_router(ops_routes.router)
    app.include_router(sign_in_pages.router)
    signed_in = [Depends(current_principal)]
    for module in (configure_page, history_pages, job_pages, compare_pages, data_card, account_pages, model_list_api,
                   models_api, estimate_api, files_api, jobs_api, held_out_answers, exports_api, stream_api,
                   inference_api, playground_pages):
        app.include_router(module.router, dependencies=signed_in)
    _serve_schema(app, signed_in)
    app.mount("/static", StaticFiles(directory=settings.static_dir), name="static")
    # Front-end libraries come from the npm registry; only the files the pages load are served (from node_modules
    # in a checkout, from the wheel's copy of just those files when installed).
    app.mount("/vendor", VendorFiles(directory=settings.vendor_dir, check_dir=False), name="vendor")

    return app


def _serve_schema(app: FastAPI, dependencies: list) -> None:
    generated = app.openapi

    def documented() -> dict:
        # Errors the envelope handler, the body limit and the NUL guard answer outside any route's own
        # declaration, documented as they are sent. In place and idempotent, on FastAPI's cached schema.
        return _document_token_auth(
            document_nul_refusal(document_body_limit(document_error_envelope(generated()))))

    app.openapi = documented

    @app.get("/openapi.json", include_in_schema=False, dependencies=dependencies)
    def openapi_schema() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=dependencies)
    def api_docs() -> HTMLResponse:
        return HTMLResponse(API_DOCS_PAGE)


def _document_token_auth(schema: dict) -> dict:
    """Declare the API token (Authorization: Bearer), so Swagger UI offers its Authorize button."""
    schema.setdefault("components", {}).setdefault("securitySchemes", {})["apiToken"] = {
        "type": "http", "scheme": "bearer",
        "description": "An API token from your account page (Account → API tokens). The browser's own "
                       "session also works on this page, for reading."}
    schema.setdefault("security", [{"apiToken": []}])
    unauthorized = {"description": "No valid API token (or session)", "headers": {"WWW-Authenticate": {
        "schema": {"type": "string"}}}, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}}
    for path, path_item in schema.get("paths", {}).items():
        for operation in path_item.values():
            if path in ("/healthz", "/readyz", "/metrics"):  # for probes and scrapers: no sign-in
                operation["security"] = []
            else:
                operation.setdefault("responses", {}).setdefault("401", unauthorized)
    return schema


# Swagger UI from our own npm install, not a CDN (a self-hosted install may have no internet access), started
# by a script file rather than FastAPI's inline one, which the Content-Security-Policy would block.
API_DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Tuneboard API</title>
<link rel="stylesheet" href="/vendor/swagger-ui-dist/swagger-ui.css">
<link rel="icon" href="/vendor/swagger-ui-dist/favicon-32x32.png">
<script src="/vendor/swagger-ui-dist/swagger-ui-bundle.js" defer></script>
<script src="/static/js/swagger-init.js" defer></script>
<link rel="stylesheet" href="/static/css/docs.css">
</head>
<body><nav class="docs-bar"><a href="/" id="back-to-app">← Tuneboard</a><a href="/jobs">Jobs</a>
<a href="/account">API tokens</a></nav><div id="swagger-ui"></div></body>
</html>
"""


app = create_app()
