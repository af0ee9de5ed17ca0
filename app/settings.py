"""Tuneboard's settings, read from TUNEBOARD_* environment variables (and a .env file)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEBOARD_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Database, embedded Redis files and artifacts.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    templates_dir: Path = REPO_ROOT / "templates"
    static_dir: Path = REPO_ROOT / "static"
    node_modules_dir: Path = REPO_ROOT / "node_modules"

    @property
    def inventory_cache_dir(self) -> Path:
        return self.data_dir / "inventories"


@cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
