"""The Jinja2 environment shared by every page, with number and byte formatting filters."""

from __future__ import annotations

import time

from fastapi.templating import Jinja2Templates

from app.settings import get_settings


def thousands(value: int) -> str:
    """12345678 -> '12,345,678'."""
    return f"{value:,d}"


def human_bytes(value: int) -> str:
    """Bytes in binary units, three significant figures: 41943040 -> '40.0 MiB'."""
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.3g} {unit}" if size < 100 else f"{size:.0f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def compact(value: int) -> str:
    """Parameter counts the way model cards write them: 41943040 -> '41.9M'."""
    for threshold, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if value >= threshold:
            return f"{value / threshold:.3g}{suffix}"
    return str(value)


def datetime_utc(value: float) -> str:
    """Unix seconds as '2026-11-25 14:03 UTC'."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(value))


def clock(value: float) -> str:
    """Unix seconds as a time of day, '14:03:27' (UTC)."""
    return time.strftime("%H:%M:%S", time.gmtime(value))


def day_time(value: float) -> str:
    """Unix seconds as '2026-11-25 14:03' (UTC), for tables whose header says UTC."""
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(value))


def iso(value: float) -> str:
    """Unix seconds as an ISO 8601 UTC timestamp, for <time datetime>."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))


def duration(seconds: float) -> str:
    """A run's length: '42s', '3m 05s', '2h 07m'."""
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def wants_fragment(request) -> bool:
    """Whether htmx asked for a page's fragment: HX-Request, except when htmx restores history (a whole page)."""
    headers = request.headers
    return headers.get("HX-Request") == "true" and headers.get("HX-History-Restore-Request") != "true"


# Domains add their own context processors and filters where their pages are defined (accounts: the team
# switcher; jobs: adapter names), so this module imports no domain.
templates = Jinja2Templates(directory=str(get_settings().templates_dir))
templates.env.filters.update(thousands=thousands, human_bytes=human_bytes, compact=compact, datetime=datetime_utc,
                             clock=clock, day_time=day_time, iso=iso, duration=duration)
