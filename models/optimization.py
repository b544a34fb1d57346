"""Contracts of the optimisation track: what the fleet costs, and what recommendations save."""

from __future__ import annotations

from pydantic import Field

from models.common import Contract


class CostModel(Contract):
    """What an hour of each resource costs (settings NOFX_COST_*), in one currency."""

    vcpu_hour: float = Field(ge=0)
    gib_hour: float = Field(ge=0)
    replica_hour: float = Field(ge=0)


class RecommendedSaving(Contract):
    """One open recommendation the report could price."""

    recommendation_id: str
    target: str
    per_hour: float = Field(description="saving per hour if applied; negative: it costs more")
    exceed_probability: float | None = Field(
        default=None, description="the SLO risk it buys: the share of steps usage passes it"
    )


class ServiceCost(Contract):
    service: str
    replicas: int
    vcpu: float | None = None
    memory_gib: float | None = None
    per_hour: float = Field(description="what the service costs an hour now")
    recommended: list[RecommendedSaving] = Field(default_factory=list)
    recommended_per_hour: float = 0.0
    realised_per_hour: float = Field(
        default=0.0, description="measured saving of recommendations already applied"
    )
    notes: list[str] = Field(default_factory=list)


class CostReport(Contract):
    model: CostModel
    services: list[ServiceCost]
    per_hour: float
    per_month: float = Field(description="per hour * 730")
    recommended_per_hour: float
    recommended_ratio: float = Field(description="recommended saving / spend")
    realised_per_hour: float
    worst_exceed_probability: float | None = Field(
        default=None, description="the largest SLO risk among the priced recommendations"
    )
