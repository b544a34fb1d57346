"""Candidates the decision-engine tests score and decide between."""

from __future__ import annotations

from models.decisions import Candidate
from models.healing import PlaybookStep

ROLLBACK = Candidate(
    name="rollback-config",
    steps=[PlaybookStep(action="rollback_config"), PlaybookStep(action="validate_requests")],
    required_permissions=["healing:config"],
)
RESTART = Candidate(
    name="restart-service",
    steps=[PlaybookStep(action="restart_service"), PlaybookStep(action="validate_health")],
    required_permissions=["healing:restart"],
)
SHIFT = Candidate(
    name="shift-traffic",
    steps=[PlaybookStep(action="shift_weight"), PlaybookStep(action="validate_requests")],
    required_permissions=["healing:traffic"],
)
