"""Recorded histories must replay through the current workflow code (no non-determinism).

A change that breaks this needs `workflow.patched()` so runs started before it keep working.

The histories come from two places: `tests/histories/record.py` saves runs of a live stack
(incidents, the monitor, chaos, readmission, the first decision seam), and
`tests/histories/record_decisions.py` runs the decision engine's scenarios on its own (incidents
healed through `DecisionWorkflow` in autonomous and assist mode; decisions approved by signal and
by update, rejected, overridden, timed out, and refused as `InvalidInput`).

The replayer decodes as the workers do: the contract converter and workflow runner of
`nofx.payloads`. With the clients' plain pydantic converter a run that failed at once with
`InvalidInput` does not replay (its start arguments do not decode, so the first workflow task
fails with "Failed decoding arguments" where the worker had failed the run) — seen with
`decision-invalid-input`; every other history replays under either converter.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from nofx.payloads import ContractWorkflowRunner, contract_data_converter
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
        # the decision engine (tests/histories/record_decisions.py)
        "incident-decision-autonomous",
        "incident-decision-assist",
        "decision-autonomous",
        "decision-approved-by-signal",
        "decision-approved-by-update",
        "decision-rejected",
        "decision-overridden",
        "decision-timed-out",
        "decision-invalid-input",
    } <= names


def _replayer() -> Replayer:
    return Replayer(
        workflows=[*healing.WORKFLOWS, *decisions.WORKFLOWS, *maintenance.WORKFLOWS],
        data_converter=contract_data_converter(pydantic_data_converter),
        workflow_runner=ContractWorkflowRunner(),
    )


def _history(name: str) -> WorkflowHistory:
    return WorkflowHistory.from_json(IDS.get(name, name), RECORDED[name])


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_history_replays(path: Path) -> None:
    result = await _replayer().replay_workflow(_history(path.stem), raise_on_replay_failure=True)
    assert result.replay_failure is None


async def test_the_decision_histories_took_the_paths_they_are_named_after() -> None:
    """What each decision-engine history holds: the signal, update or timer it is kept for."""
    kinds = {
        "decision-approved-by-signal": "EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED",
        "decision-approved-by-update": "EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED",
        "decision-rejected": "EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED",
        "decision-overridden": "EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED",
        "decision-timed-out": "EVENT_TYPE_TIMER_FIRED",
        "decision-invalid-input": "EVENT_TYPE_WORKFLOW_EXECUTION_FAILED",
        "incident-decision-assist": "EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED",
        "incident-decision-autonomous": "EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED",
    }
    for name, kind in kinds.items():
        events = [e["eventType"] for e in RECORDED[name]["events"]]
        assert kind in events, (name, kind)
    plain = Replayer(
        workflows=[*healing.WORKFLOWS, *decisions.WORKFLOWS, *maintenance.WORKFLOWS],
        data_converter=pydantic_data_converter,
    )
    refused = await plain.replay_workflow(
        _history("decision-invalid-input"), raise_on_replay_failure=False
    )
    assert refused.replay_failure is not None  # why the replayer above decodes as workers do
