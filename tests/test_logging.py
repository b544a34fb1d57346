"""Logs: JSON lines with Temporal context as fields, and no secrets."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from nofx.logging import configure_logging, get_logger


def test_json_log_file_redacts_secrets_and_lifts_temporal_context(tmp_path: Path) -> None:
    logfile = tmp_path / "nofx.log"
    configure_logging("WARNING", json=False, file=logfile)
    get_logger("nofx.test").info(
        "connecting",
        url="postgresql://nofx:hunter2@db:5432/nofx",
        password="hunter2",  # noqa: S106 - a fake secret the redactor must hide
    )
    logging.getLogger("temporalio.activity").info(
        "restart done",
        extra={
            "temporal_activity": {
                "workflow_id": "incident-pilot-api-service_down",
                "workflow_run_id": "run-1",
                "activity_type": "restart_service",
                "attempt": 2,
            }
        },
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    lines = [json.loads(line) for line in logfile.read_text().splitlines()]
    assert "hunter2" not in logfile.read_text()
    assert lines[0]["url"] == "postgresql://nofx:***@db:5432/nofx"
    assert lines[0]["password"] == "***"  # noqa: S105 - the redacted value
    assert lines[1]["workflow_id"] == "incident-pilot-api-service_down"
    assert lines[1]["activity"] == "restart_service"
    assert lines[1]["attempt"] == 2
