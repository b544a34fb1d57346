"""Record workflow histories from a running stack for the replay test.

    python -m tests.histories.record incident-pilot-api-service_down [more workflow ids]

Writes `tests/histories/<workflow id>.json` (the latest run of each id). Re-record after a change
only when the old histories are meant to stop replaying — normally a change must keep them valid.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from nofx.settings import get_settings
from nofx.temporal import exit_process, temporal_client

HERE = Path(__file__).resolve().parent


async def record(workflow_ids: list[str]) -> None:
    async with temporal_client(get_settings()) as client:
        for workflow_id in workflow_ids:
            history = await client.get_workflow_handle(workflow_id).fetch_history()
            path = HERE / f"{workflow_id}.json"
            path.write_text(history.to_json())
            print(f"wrote {path.name}: {len(history.events)} events")


if __name__ == "__main__":
    asyncio.run(record(sys.argv[1:]))
    exit_process(0)
