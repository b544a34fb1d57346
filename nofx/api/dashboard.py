"""The oversight dashboard: one page at `/dashboard`, served by the API from this package.

Everything it loads ships in `nofx/api/static/` (plain HTML, CSS and a JavaScript module; no
framework, nothing from a CDN), so it works where the platform has no way out to the internet.
The page holds no data of its own: it asks for an API token, keeps it in the tab's session
storage, calls the same `/api/...` operations as any client, and follows `/api/events` (the
audit trail as server-sent events) to refresh what changed. It can do nothing its token cannot.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")
# The page and its parts never come from a cache older than the API serving them.
NO_CACHE = {"Cache-Control": "no-cache"}


def mount(app: FastAPI) -> None:
    """Serve the dashboard at `/dashboard` (and `/` sends a person there)."""

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/dashboard")

    @app.get("/dashboard", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=NO_CACHE)

    app.mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard-static")
