"""Candidates the decision-engine tests score and decide between, and the context they are
decided in (tests/test_decision_workflow.py, tests/histories/record_decisions.py)."""

from __future__ import annotations

from models.decisions import (
    Candidate,
    DecisionContext,
    HistoricalMetrics,
    OperationalConstraints,
    OutcomeCount,
    SystemState,
)
from models.healing import PlaybookStep

CAPS = ["process.restart", "config.rollback", "config.adjust", "traffic.weight", "probe.http"]

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


def context(
    tier: str = "tier-2", *, freeze: str | None = None, healthy: bool = True, replicas: int = 2
) -> DecisionContext:
    return DecisionContext(
        current_state=SystemState.model_validate(
            {
                "service": "svc",
                "tier": tier,
                "pattern": "latency_regression",
                "cause": "configuration",
                "healthy": healthy,
                "replicas": replicas,
                "serving_replicas": replicas,
            }
        ),
        constraints=OperationalConstraints.model_validate(
            {"capabilities": CAPS, "change_freeze": freeze, "max_blast_radius": 0.5}
        ),
        historical_data=HistoricalMetrics(
            config_change_rollbackable=True,
            outcomes=[
                OutcomeCount(playbook="rollback-config", resolved=8),
                OutcomeCount(playbook="restart-service", resolved=2, failed=2),
                OutcomeCount(playbook="shift-traffic", resolved=5),
            ],
        ),
    )
