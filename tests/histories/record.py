"""Record workflow histories from a running stack for the replay test.

    python -m tests.histories.record incident-pilot-api-service_down [more workflow ids]
    python -m tests.histories.record chaos-full-20261128T030000-001-kill=chaos-experiment

Writes `tests/histories/<workflow id>.json` (the latest run of each id), or `<name>.json` for
an `ID=NAME` argument (ids that name a throwaway fleet or a date get a lasting name). Re-record
after a change only when the old histories are meant to stop replaying — normally a change must
keep them valid. The decision engine's histories come from their own scenarios instead:
`tests/histories/record_decisions.py`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from temporalio.client import Client, WorkflowHistory

from nofx.settings import get_settings
from nofx.temporal import exit_process, temporal_client

HERE = Path(__file__).resolve().parent
IDS = HERE / "ids.json"  # the workflow id of each history saved under another name


def save(history: WorkflowHistory, name: str | None = None) -> Path:
    """Write one history as `<name or workflow id>.json`; a name goes to ids.json with the id,
    since what the workflow derives from its own id (child ids) must replay."""
    path = HERE / f"{name or history.workflow_id}.json"
    if name:
        ids = json.loads(IDS.read_text()) if IDS.exists() else {}
        IDS.write_text(json.dumps({**ids, name: history.workflow_id}, indent=2) + "\n")
    path.write_text(history.to_json())
    print(f"wrote {path.name}: {len(history.events)} events")
    return path


async def record_from(client: Client, workflow_ids: list[str]) -> None:
    for argument in workflow_ids:
        workflow_id, _, name = argument.partition("=")
        save(await client.get_workflow_handle(workflow_id).fetch_history(), name or None)


async def record(workflow_ids: list[str]) -> None:
    async with temporal_client(get_settings()) as client:
        await record_from(client, workflow_ids)


if __name__ == "__main__":
    asyncio.run(record(sys.argv[1:]))
    exit_process(0)
