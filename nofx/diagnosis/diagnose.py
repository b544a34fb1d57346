"""Diagnose the whole fleet at one tick: evidence per service, the pattern each matches, and the
ranked root causes of each problem."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.engine import Engine

from models.detection import Diagnosis, ServiceEvidence
from models.healing import ProbeResult
from nofx.diagnosis.evidence import DetectorCache, recent_config_changes, service_evidence
from nofx.diagnosis.patterns import match_patterns
from nofx.diagnosis.root_cause import rank_root_causes
from nofx.telemetry.sources import MetricSource


def dependency_graph(engine: Engine) -> dict[str, list[str]]:
    """service -> the services it depends on, from the inventory."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT name, dependencies FROM services")).all()
    return {name: list(deps or []) for name, deps in rows}


def diagnose(
    evidence: Mapping[str, ServiceEvidence], graph: Mapping[str, Sequence[str]]
) -> list[Diagnosis]:
    """A diagnosis for every service whose evidence matches a problem pattern."""
    found = []
    for service, ev in sorted(evidence.items()):
        matches = match_patterns(ev)
        if not matches:
            continue
        best = matches[0]
        found.append(
            Diagnosis(
                service=service,
                pattern=best,
                alternatives=matches[1:],
                root_causes=rank_root_causes(service, evidence, graph, pattern=best.pattern),
            )
        )
    return found


def diagnose_fleet(
    engine: Engine,
    source: MetricSource,
    cache: DetectorCache,
    services: Sequence[str],
    probes: Mapping[str, ProbeResult],
    now: datetime,
) -> tuple[list[Diagnosis], dict[str, ServiceEvidence]]:
    """Evidence for every service, then the diagnoses it supports."""
    changes = recent_config_changes(engine, now)
    evidence = {
        service: service_evidence(
            service, source, cache, now, probes.get(service), changes.get(service, [])
        )
        for service in services
    }
    return diagnose(evidence, dependency_graph(engine)), evidence
