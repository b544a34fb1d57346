"""Chaos suites and their report: which faults a suite injects, and the figures its results give.

A suite is a list of faults; `ChaosSuiteWorkflow` spreads them over the services it is given.
Parameters are the ones the detection benchmark uses (nofx.faults), one setting for every run.

Figures, per fault type and overall (rollback drills are reported apart: they are aborted on
purpose, so they count for neither detection nor auto-resolution):

* detection rate — experiments with an incident / experiments whose fault went in;
* auto-resolution rate — incidents healed with no person / incidents;
* MTTD — injection to the incident's detection; MTTR — injection to the steady state verified
  back (auto-resolved experiments only); p50 and p95 (nearest rank);
* rollbacks — compensations run, and how many left the prior state exactly as it was.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from models.chaos import ChaosFault, ChaosResult

FAULT_PARAMS: dict[str, tuple[str, dict[str, Any]]] = {
    "kill": ("kill", {}),
    "crash": ("crash", {}),
    "hang": ("hang", {}),
    "bad_config": ("bad_config", {"error_rate": 0.4}),
    "latency_regression": ("bad_config", {"error_rate": 0, "extra_latency_ms": 300}),
    "connection_leak": ("connection_leak", {}),
    "stale_cache": ("stale_cache", {}),
    # 96 clients against the pilot's 4 worker slots: p95 on the replica 2-4x the action matrix's
    # 200 ms judge (32 left it at 100-460 ms: a coin toss), on a 2-core machine still usable.
    "overload": ("overload", {"concurrency": 96}),
    "memory_leak": ("memory_leak", {"rate_mb_s": 4, "limit_mb": 200}),
    "disk_fill": ("disk_fill", {"rate_mb_s": 4, "quota_mb": 300}),
}
# One drill per strategy whose first action has an undo worth checking.
DRILLS = ("bad_config", "connection_leak", "stale_cache", "disk_fill", "kill")


def fault(label: str, *, drill: bool = False) -> ChaosFault:
    kind, params = FAULT_PARAMS[label]
    return ChaosFault(kind=kind, params=dict(params), rollback_drill=drill)


def _every_type() -> list[ChaosFault]:
    return [fault(label) for label in FAULT_PARAMS]


SUITES: dict[str, list[ChaosFault]] = {
    # every fault type once
    "smoke": _every_type(),
    # every fault type three times, then a rollback drill per strategy: 35 experiments
    "full": _every_type() * 3 + [fault(label, drill=True) for label in DRILLS],
    # only the rollback drills
    "rollback": [fault(label, drill=True) for label in DRILLS],
}


def suite_faults(name: str) -> list[ChaosFault]:
    try:
        return [f.model_copy(deep=True) for f in SUITES[name]]
    except KeyError:
        raise ValueError(f"unknown chaos suite {name!r}; known: {', '.join(SUITES)}") from None


def fault_label(f: ChaosFault) -> str:
    """The fault type a result is reported under (a config push that only slows is its own)."""
    for label, (kind, params) in FAULT_PARAMS.items():
        if kind == f.kind and all(f.params.get(k) == v for k, v in params.items()):
            return label
    return f.kind


def quantile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _figures(results: list[ChaosResult]) -> dict[str, Any]:
    ran = [r for r in results if r.outcome not in ("not_steady", "error")]
    detected = [r for r in ran if r.detected]
    auto = [r for r in detected if r.auto_resolved]
    mttd = [r.mttd_seconds for r in detected if r.mttd_seconds is not None]
    mttr = [r.mttr_seconds for r in auto if r.mttr_seconds is not None]
    rollbacks = [c for r in results for c in r.rollbacks]
    return {
        "experiments": len(results),
        "injected": len(ran),
        "detected": len(detected),
        "detection_rate": round(len(detected) / len(ran), 3) if ran else None,
        "pattern_correct": sum(bool(r.pattern_correct) for r in detected),
        "auto_resolved": len(auto),
        "auto_resolution_rate": round(len(auto) / len(detected), 3) if detected else None,
        "within_rto": sum(bool(r.within_rto) for r in auto),
        "mttd_p50_s": quantile(mttd, 0.5),
        "mttd_p95_s": quantile(mttd, 0.95),
        "mttr_p50_s": quantile(mttr, 0.5),
        "mttr_p95_s": quantile(mttr, 0.95),
        "mttr_mean_s": round(sum(mttr) / len(mttr), 2) if mttr else None,
        "rollbacks_run": len(rollbacks),
        "rollbacks_restored": sum(c.restored for c in rollbacks),
        "outcomes": _count(r.outcome for r in results),
    }


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def summarise(results: list[ChaosResult]) -> dict[str, Any]:
    """Figures per fault type, for the rollback drills, and overall (drills excluded)."""
    faults = [r for r in results if not r.fault.rollback_drill]
    drills = [r for r in results if r.fault.rollback_drill]
    by_type: dict[str, list[ChaosResult]] = {}
    for result in faults:
        by_type.setdefault(fault_label(result.fault), []).append(result)
    return {
        "by_type": {label: _figures(rs) for label, rs in by_type.items()},
        "rollback_drills": {
            **_figures(drills),
            "by_type": {fault_label(r.fault): _figures([r]) for r in drills},
        },
        "overall": _figures(faults),
    }


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}{unit}" if unit else f"{value:.0%}"
    return str(value)


def table(summary: dict[str, Any]) -> str:
    """The suite's figures as a fixed-width table (what `nofx chaos run` prints)."""
    head = (
        f"{'fault type':<20} {'runs':>4} {'detected':>9} {'named':>5} {'auto-healed':>11}"
        f" {'MTTD p50/p95 s':>15} {'MTTR p50/p95 s':>15} {'rollbacks ok':>12}"
    )
    lines = [head, "-" * len(head)]

    def row(label: str, f: dict[str, Any]) -> str:
        return (
            f"{label:<20} {f['injected']:>4} {_fmt(f['detection_rate']):>9}"
            f" {f['pattern_correct']:>5} {_fmt(f['auto_resolution_rate']):>11}"
            f" {_fmt(f['mttd_p50_s'], 's') + ' / ' + _fmt(f['mttd_p95_s'], 's'):>15}"
            f" {_fmt(f['mttr_p50_s'], 's') + ' / ' + _fmt(f['mttr_p95_s'], 's'):>15}"
            f" {str(f['rollbacks_restored']) + '/' + str(f['rollbacks_run']):>12}"
        )

    for label, figures in sorted(summary["by_type"].items()):
        lines.append(row(label, figures))
    lines.append("-" * len(head))
    lines.append(row("all faults", summary["overall"]))
    drills = summary["rollback_drills"]
    if drills["experiments"]:
        lines.append(row("rollback drills", drills))
    return "\n".join(lines)


def result_line(result: ChaosResult) -> str:
    """One finished experiment, for progress output."""
    parts = [f"{fault_label(result.fault)}{' (drill)' if result.fault.rollback_drill else ''}"]
    parts.append(f"on {result.service}: {result.outcome}")
    if result.incident_type:
        parts.append(f"as {result.incident_type}")
    if result.mttd_seconds is not None:
        parts.append(f"detected {result.mttd_seconds:.1f}s")
    if result.mttr_seconds is not None:
        parts.append(f"recovered {result.mttr_seconds:.1f}s")
    if result.rollbacks:
        ok = sum(c.restored for c in result.rollbacks)
        parts.append(f"rollbacks {ok}/{len(result.rollbacks)} restored")
    if result.note:
        parts.append(f"({result.note})")
    return " ".join(parts)
