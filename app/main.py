"""The FastAPI application: routers, static files, error envelope. Must not import torch or `workers`."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from app.api_errors import install_error_handlers
from app.lease_reaper import ReaperThread
from app.migrate import upgrade_database
from app.routers import dataset_pages, estimate_api, files_api, job_pages, job_stream, jobs_api, models_api, pages
from app.settings import get_settings


@asynccontextmanager
async def lifespan(_app: FastAPI):
    """Bring the schema up to date before serving (a fleet may turn this off and migrate separately), and reap
    expired leases while serving so no job stays running when every worker is gone."""
    settings = get_settings()
    if settings.migrate_on_start:
        await run_in_threadpool(upgrade_database)
    reaper = ReaperThread()
    reaper.start()
    yield
    reaper.stopped.set()


def create_app() -> FastAPI:
    """Build the web app with every router mounted."""
    settings = get_settings()
    app = FastAPI(
        lifespan=lifespan,
        title="Tuneboard",
        summary="Configure and launch LoRA fine-tunes with exact estimates.",
        version="0.1.0",
    )
    install_error_handlers(app)
    app.include_router(pages.router)
    app.include_router(job_pages.router)
    app.include_router(dataset_pages.router)
    app.include_router(models_api.router)
    app.include_router(estimate_api.router)
    app.include_router(files_api.router)
    app.include_router(jobs_api.router)
    app.include_router(job_stream.router)
    app.mount("/static", StaticFiles(directory=settings.static_dir), name="static")
    # Front-end libraries come from the npm registry; serve them straight from node_modules.
    app.mount("/vendor", StaticFiles(directory=settings.node_modules_dir, check_dir=False), name="vendor")

    @app.get("/healthz", tags=["operations"], summary="Liveness")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


app = create_app()
