"""Root-cause ranking from the dependency graph, the order anomalies began, and recent changes.

The heuristics SREs apply by hand, made explicit and scored so the ranking can be explained:

- a configuration version applied shortly before the onset makes that change the lead candidate
  (most incidents follow a change), the closer in time the stronger;
- among services on the affected service's dependency path, the one whose anomalies began first
  is more likely the origin than those that followed it;
- a dependency that is itself anomalous outranks the service that merely calls it;
- with no other explanation, the service itself is the cause (its own pattern names how).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import timedelta

from models.detection import RootCauseCandidate, ServiceEvidence

CHANGE_LOOKBACK = timedelta(minutes=30)
# An onset is estimated on a 2 s grid from 10 s windows, and a busy machine can make a series
# wobble just before a push: a change applied up to this long after the estimated onset still
# counts as having come first.
ONSET_SLACK = timedelta(seconds=20)


def dependency_closure(graph: Mapping[str, Sequence[str]], service: str) -> dict[str, int]:
    """Every service `service` depends on, directly or not, with its distance in hops."""
    distances = {service: 0}
    frontier = [service]
    while frontier:
        nxt = []
        for current in frontier:
            for dependency in graph.get(current, ()):
                if dependency not in distances:
                    distances[dependency] = distances[current] + 1
                    nxt.append(dependency)
        frontier = nxt
    return distances


def rank_root_causes(
    affected: str,
    evidence: Mapping[str, ServiceEvidence],
    graph: Mapping[str, Sequence[str]],
    *,
    pattern: str | None = None,
) -> list[RootCauseCandidate]:
    """Rank where the problem seen on `affected` most likely started, best first.

    Args:
        affected: the service the incident is about.
        evidence: what diagnosis knows per service (anomalies with onsets, recent changes).
        graph: service -> the services it depends on (table `services.dependencies`).
        pattern: the matched problem pattern, named in the "self" candidate's detail.
    """
    reach = dependency_closure(graph, affected)
    anomalous = {name: ev for name, ev in evidence.items() if name in reach and ev.anomalies}
    onset_order = sorted(anomalous, key=lambda name: anomalous[name].onset)
    reference = evidence[affected].onset if affected in evidence else None
    candidates: list[RootCauseCandidate] = []

    for name, distance in reach.items():
        ev = evidence.get(name)
        if ev is None:
            continue
        onset = ev.onset if ev.anomalies else reference
        before = [
            c
            for c in ev.recent_changes
            if onset is not None and c.applied_at <= onset + ONSET_SLACK
        ]
        # Only the latest change before the onset is a candidate: it is what was running.
        for change in sorted(before, key=lambda c: (c.applied_at, c.version))[-1:]:
            if onset is None:
                continue
            gap = onset - change.applied_at
            if not -ONSET_SLACK <= gap <= CHANGE_LOOKBACK:
                continue
            closeness = 1.0 - max(gap, timedelta(0)) / CHANGE_LOOKBACK
            score = 3.0 + 2.0 * closeness - 0.5 * distance
            if change.restores_version is not None:
                # Going back to a configuration that already ran is rarely what breaks things.
                score = 0.5 * closeness
            candidates.append(
                RootCauseCandidate(
                    service=name,
                    cause="configuration",
                    score=round(score, 3),
                    detail=f"config version {change.version} applied by {change.applied_by}",
                    reasons=[
                        f"applied {gap.total_seconds():.0f}s before the anomalies began"
                        if gap >= timedelta(0)
                        else f"applied {-gap.total_seconds():.0f}s after the estimated onset"
                        " (within the onset's uncertainty)",
                        *([f"reason given: {change.reason}"] if change.reason else []),
                        *(
                            [f"restores version {change.restores_version}, which ran before"]
                            if change.restores_version is not None
                            else []
                        ),
                    ],
                )
            )
        if name == affected:
            continue
        if name in anomalous:
            rank = onset_order.index(name)
            first_bonus = 1.0 if rank == 0 else 0.0
            score = 2.0 + first_bonus - 0.25 * distance
            candidates.append(
                RootCauseCandidate(
                    service=name,
                    cause="dependency",
                    score=round(score, 3),
                    detail=f"{name}, which {affected} depends on ({distance} hop(s)), is anomalous",
                    reasons=[
                        f"anomalies began {_order_word(rank)} among the dependency path",
                        *anomalous[name].anomalies[0].reasons[:1],
                    ],
                )
            )

    self_score = 1.0
    if affected in anomalous and onset_order and onset_order[0] == affected:
        self_score += 1.0
    candidates.append(
        RootCauseCandidate(
            service=affected,
            cause="self",
            score=self_score,
            detail=f"{affected} itself" + (f" ({pattern})" if pattern else ""),
            reasons=(
                ["its own anomalies began first"]
                if self_score > 1
                else ["no change or anomalous dependency explains it better"]
            ),
        )
    )
    candidates.sort(key=lambda c: (-c.score, c.service))
    return _dedupe(candidates)


def _order_word(rank: int) -> str:
    return "first" if rank == 0 else f"#{rank + 1}"


def _dedupe(candidates: list[RootCauseCandidate]) -> list[RootCauseCandidate]:
    seen: set[tuple[str, str, str]] = set()
    unique = []
    for candidate in candidates:
        key = (candidate.service, candidate.cause, candidate.detail)
        if key not in seen and not math.isnan(candidate.score):
            seen.add(key)
            unique.append(candidate)
    return unique
