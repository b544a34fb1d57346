"""SQLModel table classes mirroring the schema that ``sql/`` creates, column for column.

The SQL files are the source of truth: these classes are for reading and writing rows with
typed sessions in activities, never for ``create_all``. ``tests/test_db.py`` compares each class
with ``information_schema.columns`` of a freshly migrated database (name, type, nullability,
default), so a migration that adds a column without a matching field here fails the build.

Columns with a server default are declared ``Optional`` with ``default=None`` on the Python
side, so a new row leaves them out of the INSERT and PostgreSQL fills them in; read back after a
flush/refresh, they hold the stored value. Table classes never cross Temporal: workflow and
activity payloads are the pydantic contracts of the other ``models`` modules.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    Double,
    ForeignKey,
    Integer,
    Numeric,
    PrimaryKeyConstraint,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TIMESTAMP, UUID
from sqlmodel import Field, SQLModel

__all__ = [
    "ActionLease",
    "ActionLog",
    "AuditEvent",
    "AutonomousDecision",
    "ChangeFreeze",
    "ConfigVersion",
    "DecisionModel",
    "FaultInjection",
    "GuardrailVerdict",
    "HealingIncident",
    "HealingPattern",
    "LearningFeedback",
    "MaintenancePrediction",
    "MaintenanceSchedule",
    "MetricSample",
    "ModelArtifact",
    "OptimizationRecommendation",
    "PlatformControl",
    "RecoveryPlaybook",
    "Service",
]

JsonObject = dict[str, Any]
"""A JSONB value as Python holds it (objects; arrays of steps are ``list[JsonObject]``)."""

# A Python None means SQL NULL (or "leave it to the server default"), never the JSON value null:
# SQLAlchemy's default would store 'null'::jsonb for None and bypass DEFAULT '{}'.
_JSONB = JSONB(none_as_null=True)

_NOW = text("now()")
_EMPTY_JSON = text("'{}'::jsonb")


def _uuid_pk() -> Any:
    """``id UUID PRIMARY KEY DEFAULT gen_random_uuid()``, the spec tables' key."""
    return Field(
        default=None,
        sa_column=Column(
            UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
        ),
    )


def _timestamptz(*, nullable: bool = True, server_default: bool = False) -> Any:
    """A ``TIMESTAMPTZ`` column, optionally ``DEFAULT NOW()``."""
    return Field(
        default=None,
        sa_column=Column(
            TIMESTAMP(timezone=True),
            nullable=nullable,
            server_default=_NOW if server_default else None,
        ),
    )


def _column(
    sa_type: Any, *args: Any, nullable: bool, server_default: Any = None, **kwargs: Any
) -> Any:
    """A plain column; required fields (NOT NULL, no default) get no Python default.

    ``args`` are further ``Column`` arguments such as a ``ForeignKey``.
    """
    column = Column(sa_type, *args, nullable=nullable, server_default=server_default, **kwargs)
    if nullable or server_default is not None:
        return Field(default=None, sa_column=column)
    return Field(sa_column=column)


# --------------------------------------------------------------------------------------------
# Track A: autonomous decision engine (sql/001_autonomous_decisions.sql)


class AutonomousDecision(SQLModel, table=True):
    """One decision the engine took: its context, choice, alternatives and outcome."""

    __tablename__ = "autonomous_decisions"

    id: uuid.UUID | None = _uuid_pk()
    decision_type: str = _column(Text, nullable=False)
    context_data: JsonObject = _column(_JSONB, nullable=False)
    chosen_action: str = _column(Text, nullable=False)
    alternatives_considered: Any | None = _column(_JSONB, nullable=True)
    confidence_score: Decimal | None = _column(Numeric(3, 2), nullable=True)
    risk_assessment: Any | None = _column(_JSONB, nullable=True)
    expected_outcome: Any | None = _column(_JSONB, nullable=True)
    actual_outcome: Any | None = _column(_JSONB, nullable=True)
    created_at: datetime | None = _timestamptz(server_default=True)
    # sql/019_decision_engine.sql
    workflow_id: str | None = _column(Text, nullable=True)
    subject: str | None = _column(Text, nullable=True)
    problem: str | None = _column(Text, nullable=True)
    status: str | None = _column(Text, nullable=True)
    decided_by: str | None = _column(Text, nullable=True)
    explanation: Any | None = _column(_JSONB, nullable=True)
    approval: Any | None = _column(_JSONB, nullable=True)
    updated_at: datetime | None = _timestamptz()
    # sql/020_decision_result.sql
    result: Any | None = _column(_JSONB, nullable=True)


class DecisionModel(SQLModel, table=True):
    """A version of a decision model, with its training data summary and metrics."""

    __tablename__ = "decision_models"

    id: uuid.UUID | None = _uuid_pk()
    model_type: str = _column(Text, nullable=False)
    model_version: str = _column(Text, nullable=False)
    training_data: Any | None = _column(_JSONB, nullable=True)
    performance_metrics: Any | None = _column(_JSONB, nullable=True)
    active: bool | None = _column(Boolean, nullable=True, server_default=text("false"))
    deployed_at: datetime | None = _timestamptz()
    created_at: datetime | None = _timestamptz(server_default=True)


class LearningFeedback(SQLModel, table=True):
    """How a decision turned out, and what the models should learn from it."""

    __tablename__ = "learning_feedback"

    id: uuid.UUID | None = _uuid_pk()
    decision_id: uuid.UUID | None = _column(
        UUID(as_uuid=True), ForeignKey("autonomous_decisions.id"), nullable=True
    )
    outcome_quality: Decimal | None = _column(Numeric(3, 2), nullable=True)
    feedback_type: str = _column(Text, nullable=False)
    lessons_learned: Any | None = _column(_JSONB, nullable=True)
    model_adjustments: Any | None = _column(_JSONB, nullable=True)
    created_at: datetime | None = _timestamptz(server_default=True)


# --------------------------------------------------------------------------------------------
# Track B: self-healing infrastructure (sql/002_self_healing.sql)


class HealingIncident(SQLModel, table=True):
    """One incident from detection to resolution (or escalation), with the actions taken."""

    __tablename__ = "healing_incidents"

    id: uuid.UUID | None = _uuid_pk()
    incident_type: str = _column(Text, nullable=False)
    detection_method: str = _column(Text, nullable=False)
    root_cause: Any | None = _column(_JSONB, nullable=True)
    healing_strategy: str = _column(Text, nullable=False)
    healing_actions: list[JsonObject] | None = _column(ARRAY(_JSONB), nullable=True)
    status: str = _column(Text, nullable=False)
    started_at: datetime | None = _timestamptz(server_default=True)
    resolved_at: datetime | None = _timestamptz()
    resolution_time_ms: int | None = _column(Integer, nullable=True)


class HealingPattern(SQLModel, table=True):
    """A known problem signature and the solutions that have worked for it."""

    __tablename__ = "healing_patterns"

    id: uuid.UUID | None = _uuid_pk()
    problem_signature: str = _column(Text, nullable=False)
    proven_solutions: list[JsonObject] | None = _column(ARRAY(_JSONB), nullable=True)
    success_rate: Decimal | None = _column(Numeric(3, 2), nullable=True)
    average_resolution_time_ms: int | None = _column(Integer, nullable=True)
    last_updated: datetime | None = _timestamptz(server_default=True)


class RecoveryPlaybook(SQLModel, table=True):
    """The ordered recovery steps for an incident type, and how far they may run unattended."""

    __tablename__ = "recovery_playbooks"
    __table_args__ = (
        CheckConstraint(
            "automation_level IN ('manual', 'semi-auto', 'full-auto')",
            name="recovery_playbooks_automation_level_check",
        ),
        CheckConstraint("escalation_rank >= 1", name="recovery_playbooks_escalation_rank_check"),
    )

    id: uuid.UUID | None = _uuid_pk()
    incident_type: str = _column(Text, nullable=False)
    playbook_name: str = _column(Text, nullable=False)
    recovery_steps: list[JsonObject] = _column(_JSONB, nullable=False)
    automation_level: str | None = _column(Text, nullable=True)
    required_permissions: list[str] | None = _column(ARRAY(Text), nullable=True)
    created_at: datetime | None = _timestamptz(server_default=True)
    # sql/015_playbook_ladder.sql
    escalation_rank: int = _column(Integer, nullable=False, server_default=text("1"))
    enabled: bool = _column(Boolean, nullable=False, server_default=text("true"))
    updated_at: datetime | None = _timestamptz()


# --------------------------------------------------------------------------------------------
# Track C: predictive maintenance and optimisation (sql/003_predictive_maintenance.sql)


class MaintenancePrediction(SQLModel, table=True):
    """A predicted problem of a component, when it is expected, and what to do about it."""

    __tablename__ = "maintenance_predictions"

    id: uuid.UUID | None = _uuid_pk()
    component_type: str = _column(Text, nullable=False)
    component_id: str = _column(Text, nullable=False)
    predicted_issue: str = _column(Text, nullable=False)
    probability: Decimal | None = _column(Numeric(3, 2), nullable=True)
    time_to_failure_hours: int | None = _column(Integer, nullable=True)
    recommended_action: Any | None = _column(_JSONB, nullable=True)
    business_impact: Any | None = _column(_JSONB, nullable=True)
    created_at: datetime | None = _timestamptz(server_default=True)
    # sql/024_maintenance_predictions.sql
    metric: str | None = _column(Text, nullable=True)
    eta: datetime | None = _timestamptz()
    eta_earliest: datetime | None = _timestamptz()
    eta_latest: datetime | None = _timestamptz()
    source: str | None = _column(Text, nullable=True)
    status: str | None = _column(Text, nullable=False, server_default="open")
    updated_at: datetime | None = _timestamptz(server_default=True, nullable=False)


class MaintenanceSchedule(SQLModel, table=True):
    """A maintenance job placed in a window, usually because of a prediction."""

    __tablename__ = "maintenance_schedules"

    id: uuid.UUID | None = _uuid_pk()
    prediction_id: uuid.UUID | None = _column(
        UUID(as_uuid=True), ForeignKey("maintenance_predictions.id"), nullable=True
    )
    scheduled_at: datetime = _column(TIMESTAMP(timezone=True), nullable=False)
    maintenance_type: str = _column(Text, nullable=False)
    estimated_duration_minutes: int | None = _column(Integer, nullable=True)
    required_resources: Any | None = _column(_JSONB, nullable=True)
    status: str = _column(Text, nullable=False)
    completed_at: datetime | None = _timestamptz()
    # sql/025_maintenance_jobs.sql
    workflow_id: str | None = _column(Text, nullable=True)
    component_id: str | None = _column(Text, nullable=True)
    predicted_issue: str | None = _column(Text, nullable=True)
    deadline: datetime | None = _timestamptz()
    decision_id: uuid.UUID | None = _column(UUID(as_uuid=True), nullable=True)
    window_plan: Any | None = _column(_JSONB, nullable=True)
    detail: str | None = _column(Text, nullable=True)
    created_at: datetime | None = _timestamptz(server_default=True, nullable=False)
    updated_at: datetime | None = _timestamptz(server_default=True, nullable=False)


class OptimizationRecommendation(SQLModel, table=True):
    """A proposed change from the current to a better state, with its steps and risk."""

    __tablename__ = "optimization_recommendations"
    __table_args__ = (
        CheckConstraint(
            "status IN ('open', 'superseded', 'withdrawn', 'applying', 'applied',"
            " 'rolled_back', 'dismissed')",
            name="optimization_recommendations_status_check",
        ),
    )

    id: uuid.UUID | None = _uuid_pk()
    optimization_type: str = _column(Text, nullable=False)
    current_state: JsonObject = _column(_JSONB, nullable=False)
    recommended_state: JsonObject = _column(_JSONB, nullable=False)
    expected_improvement: Any | None = _column(_JSONB, nullable=True)
    implementation_steps: list[JsonObject] | None = _column(ARRAY(_JSONB), nullable=True)
    risk_assessment: Any | None = _column(_JSONB, nullable=True)
    created_at: datetime | None = _timestamptz(server_default=True)
    # sql/026_optimization_recommendations.sql
    service: str | None = _column(Text, nullable=True)
    target: str | None = _column(Text, nullable=True)
    status: str | None = _column(Text, nullable=False, server_default=text("'open'"))
    decision_id: uuid.UUID | None = _column(UUID(as_uuid=True), nullable=True)
    realised_improvement: Any | None = _column(_JSONB, nullable=True)
    applied_at: datetime | None = _timestamptz()
    updated_at: datetime | None = _timestamptz(server_default=True, nullable=False)


# --------------------------------------------------------------------------------------------
# Additions (sql/004_services.sql .. sql/007_action_log.sql)


class Service(SQLModel, table=True):
    """A service of the fleet: how critical it is, who owns it, and how to act on it."""

    __tablename__ = "services"
    __table_args__ = (
        CheckConstraint(
            "tier IN ('tier-0', 'tier-1', 'tier-2', 'tier-3')", name="services_tier_check"
        ),
        CheckConstraint("capacity > 0", name="services_capacity_check"),
        CheckConstraint(
            "decision_mode IN ('observe', 'assist', 'autonomous')",
            name="services_decision_mode_check",
        ),
    )

    name: str = Field(sa_column=Column(Text, primary_key=True))
    tier: str | None = _column(Text, nullable=False, server_default=text("'tier-2'"))
    owner: str | None = _column(Text, nullable=True)
    provider: str = _column(Text, nullable=False)
    endpoint: str | None = _column(Text, nullable=True)
    dependencies: list[str] | None = _column(
        ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")
    )
    capacity: int | None = _column(Integer, nullable=False, server_default=text("1"))
    slo_targets: JsonObject | None = _column(_JSONB, nullable=False, server_default=_EMPTY_JSON)
    # "metadata" is reserved by SQLAlchemy's declarative base, hence the attribute name.
    service_metadata: JsonObject | None = _column(
        _JSONB, nullable=False, server_default=_EMPTY_JSON, name="metadata"
    )
    created_at: datetime | None = _timestamptz(server_default=True)
    updated_at: datetime | None = _timestamptz(server_default=True)
    decision_mode: str | None = _column(Text, nullable=True)


class AuditEvent(SQLModel, table=True):
    """One event of the hash-chained audit trail; written only through ``nofx.audit``."""

    __tablename__ = "audit_events"

    id: int | None = Field(
        default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True)
    )
    occurred_at: datetime | None = _timestamptz(nullable=False, server_default=True)
    actor: str = _column(Text, nullable=False)
    action: str = _column(Text, nullable=False)
    entity_type: str = _column(Text, nullable=False)
    entity_id: str = _column(Text, nullable=False)
    workflow_id: str | None = _column(Text, nullable=True, index=True)
    reason: str | None = _column(Text, nullable=True)
    details: JsonObject | None = _column(_JSONB, nullable=False, server_default=_EMPTY_JSON)
    idempotency_key: str | None = _column(Text, nullable=True, unique=True)
    prev_hash: str = _column(Text, nullable=False, unique=True)
    hash: str = _column(Text, nullable=False, unique=True)


class ConfigVersion(SQLModel, table=True):
    """One version of a service's configuration; at most one is active per service."""

    __tablename__ = "config_versions"
    __table_args__ = (
        UniqueConstraint("service", "version", name="config_versions_service_version_key"),
        CheckConstraint("version > 0", name="config_versions_version_check"),
        CheckConstraint("rolled_back_to > 0", name="config_versions_rolled_back_to_check"),
    )

    id: uuid.UUID | None = _uuid_pk()
    service: str = _column(Text, ForeignKey("services.name"), nullable=False)
    version: int = _column(Integer, nullable=False)
    config: JsonObject = _column(_JSONB, nullable=False)
    applied_by: str = _column(Text, nullable=False)
    reason: str | None = _column(Text, nullable=True)
    active: bool | None = _column(Boolean, nullable=False, server_default=text("false"))
    created_at: datetime | None = _timestamptz(server_default=True)
    rolled_back_to: int | None = _column(Integer, nullable=True)


class ActionLog(SQLModel, table=True):
    """The exactly-once record of one infrastructure action (workflow id + step)."""

    __tablename__ = "action_log"
    __table_args__ = (
        CheckConstraint(
            "status IN ('started', 'succeeded', 'skipped', 'failed', 'compensated')",
            name="action_log_status_check",
        ),
    )

    idempotency_key: str = Field(sa_column=Column(Text, primary_key=True))
    workflow_id: str = _column(Text, nullable=False, index=True)
    step: str = _column(Text, nullable=False)
    action: str = _column(Text, nullable=False)
    target: str = _column(Text, nullable=False)
    status: str = _column(Text, nullable=False)
    detail: JsonObject | None = _column(_JSONB, nullable=False, server_default=_EMPTY_JSON)
    started_at: datetime | None = _timestamptz(nullable=False, server_default=True)
    finished_at: datetime | None = _timestamptz()


# --------------------------------------------------------------------------------------------
# Telemetry (sql/009_metric_samples.sql)


class MetricSample(SQLModel, table=True):
    """One scraped sample of one metric of one service: the embedded telemetry store.

    ``labels_hash`` is computed by PostgreSQL from ``labels`` (never written by clients); it
    exists so the primary key can identify a label set and a re-scrape of a sample is a no-op.
    """

    __tablename__ = "metric_samples"
    __table_args__ = (
        PrimaryKeyConstraint("service", "metric", "labels_hash", "ts", name="metric_samples_pkey"),
    )

    service: str = Field(sa_column=Column(Text, nullable=False))
    metric: str = Field(sa_column=Column(Text, nullable=False))
    labels: JsonObject | None = _column(_JSONB, nullable=False, server_default=_EMPTY_JSON)
    labels_hash: str | None = Field(
        default=None,
        sa_column=Column(Text, Computed("md5(labels::text)", persisted=True), nullable=False),
    )
    ts: datetime = Field(sa_column=Column(TIMESTAMP(timezone=True), nullable=False))
    value: float = _column(Double, nullable=False)


# --------------------------------------------------------------------------------------------
# Ground truth of the staging fleet (sql/010_fault_injections.sql)


class FaultInjection(SQLModel, table=True):
    """A fault injected into the staging fleet: benchmark ground truth and training labels."""

    __tablename__ = "fault_injections"
    __table_args__ = (
        CheckConstraint(
            "source IN ('cli', 'benchmark', 'chaos', 'test', 'training')",
            name="fault_injections_source_check",
        ),
        CheckConstraint(
            "cleared_at IS NULL OR cleared_at >= injected_at", name="fault_injections_check"
        ),
    )

    id: uuid.UUID | None = _uuid_pk()
    service: str = _column(Text, nullable=False)
    kind: str = _column(Text, nullable=False)
    params: JsonObject | None = _column(_JSONB, nullable=False, server_default=_EMPTY_JSON)
    injected_by: str = _column(Text, nullable=False)
    source: str = _column(Text, nullable=False)
    expected_pattern: str | None = _column(Text, nullable=True)
    injected_at: datetime | None = _timestamptz(nullable=False, server_default=True)
    cleared_at: datetime | None = _timestamptz()


class ModelArtifact(SQLModel, table=True):
    """The serialised model of a `decision_models` row (LightGBM text format)."""

    __tablename__ = "model_artifacts"
    __table_args__ = (
        CheckConstraint("format IN ('lightgbm-text')", name="model_artifacts_format_check"),
    )

    model_id: uuid.UUID = Field(
        sa_column=Column(
            UUID(as_uuid=True),
            ForeignKey("decision_models.id", ondelete="CASCADE"),
            primary_key=True,
        )
    )
    format: str = _column(Text, nullable=False)
    artifact: str = _column(Text, nullable=False)
    sha256: str = _column(Text, nullable=False)
    created_at: datetime | None = _timestamptz(nullable=False, server_default=True)


class PlatformControl(SQLModel, table=True):
    """A platform-wide control: the kill switch and the guardrail policy ('automation')."""

    __tablename__ = "platform_controls"

    name: str = Field(sa_column=Column(Text, primary_key=True))
    paused: bool = _column(Boolean, nullable=False, server_default=text("false"))
    reason: str | None = _column(Text, nullable=True)
    changed_by: str | None = _column(Text, nullable=True)
    changed_at: datetime | None = _timestamptz(nullable=False, server_default=True)
    policy: JsonObject | None = _column(_JSONB, nullable=False, server_default=_EMPTY_JSON)
    decision_policy: JsonObject | None = _column(_JSONB, nullable=False, server_default=_EMPTY_JSON)


class ChangeFreeze(SQLModel, table=True):
    """A window in which no automated change is made (scope: a service, or '*')."""

    __tablename__ = "change_freezes"
    __table_args__ = (CheckConstraint("ends_at > starts_at", name="change_freezes_check"),)

    id: uuid.UUID | None = _uuid_pk()
    scope: str = _column(Text, nullable=False, server_default=text("'*'"))
    starts_at: datetime = _timestamptz(nullable=False)
    ends_at: datetime = _timestamptz(nullable=False)
    reason: str = _column(Text, nullable=False)
    created_by: str = _column(Text, nullable=False)
    created_at: datetime | None = _timestamptz(nullable=False, server_default=True)


class ActionLease(SQLModel, table=True):
    """An action in flight: what the concurrency limit and the blast radius count."""

    __tablename__ = "action_leases"

    idempotency_key: str = Field(sa_column=Column(Text, primary_key=True))
    service: str = _column(Text, nullable=False)
    service_group: str = _column(Text, nullable=False)
    workflow_id: str = _column(Text, nullable=False)
    action: str = _column(Text, nullable=False)
    acquired_at: datetime | None = _timestamptz(nullable=False, server_default=True)
    expires_at: datetime = _timestamptz(nullable=False)


class GuardrailVerdict(SQLModel, table=True):
    """One guardrail check and its answer (allow, wait, ask), with the reason."""

    __tablename__ = "guardrail_verdicts"
    __table_args__ = (
        CheckConstraint(
            "verdict IN ('allow', 'wait', 'ask')", name="guardrail_verdicts_verdict_check"
        ),
    )

    id: int | None = Field(
        default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True)
    )
    decided_at: datetime | None = _timestamptz(nullable=False, server_default=True)
    workflow_id: str = _column(Text, nullable=False)
    service: str = _column(Text, nullable=False)
    action: str = _column(Text, nullable=False)
    verdict: str = _column(Text, nullable=False)
    guardrail: str | None = _column(Text, nullable=True)
    reason: str = _column(Text, nullable=False)
    details: JsonObject | None = _column(_JSONB, nullable=False, server_default=_EMPTY_JSON)


# --------------------------------------------------------------------------------------------
# The decision engine (sql/019_decision_engine.sql)


class OperatorRow(SQLModel, table=True):
    """A person who may approve, reject or override decisions, and the permissions they hold."""

    __tablename__ = "operators"
    __table_args__ = (CheckConstraint("name ~ '^[A-Za-z0-9_.@+-]+$'", name="operators_name_check"),)

    name: str = Field(sa_column=Column(Text, primary_key=True))
    display_name: str | None = _column(Text, nullable=True)
    permissions: list[str] | None = _column(
        ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")
    )
    created_by: str = _column(Text, nullable=False)
    created_at: datetime | None = _timestamptz(nullable=False, server_default=True)
