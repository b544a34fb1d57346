"""Recorded histories must replay through the current workflow code (no non-determinism).

A change that breaks this needs `workflow.patched()` so runs started before it keep working.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workers import decisions, healing, maintenance

HISTORIES = sorted(
    p for p in (Path(__file__).parent / "histories").glob("*.json") if p.stem != "ids"
)
RECORDED = {p.stem: json.loads(p.read_text()) for p in HISTORIES}
# Histories saved under a lasting name keep their workflow id here (tests/histories/record.py).
IDS: dict[str, str] = json.loads((Path(__file__).parent / "histories" / "ids.json").read_text())


def test_histories_are_recorded() -> None:
    names = {p.stem for p in HISTORIES}
    assert {
        "incident-pilot-api-service_down",
        "decision-playbook",
        "monitor-fleet",
        "chaos-suite",
        "chaos-experiment-drill",
        "incident-overload-shift-weight",
        "traffic-readmission",
    } <= names


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_history_replays(path: Path) -> None:
    replayer = Replayer(
        workflows=[*healing.WORKFLOWS, *decisions.WORKFLOWS, *maintenance.WORKFLOWS],
        data_converter=pydantic_data_converter,
    )
    history = WorkflowHistory.from_json(IDS.get(path.stem, path.stem), RECORDED[path.stem])
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None
