"""`python -m nofx.api`: serve the HTTP API on NOFX_API_HOST:NOFX_API_PORT (`nofx up` runs it)."""

from __future__ import annotations

from nofx.api.app import run
from nofx.logging import configure_logging
from nofx.settings import get_settings

if __name__ == "__main__":
    settings = get_settings()
    configure_logging(settings.log_level)
    run(settings, settings.api_host, settings.api_port)
