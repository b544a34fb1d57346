"""Pattern signatures and root-cause ranking on hand-built evidence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from sqlalchemy import Engine, text

from models.detection import PATTERNS, Anomaly, ConfigChange, ServiceEvidence, Signal
from nofx.diagnosis.evidence import (
    WATCHED,
    change_regression,
    config_suspected,
    recent_config_changes,
)
from nofx.diagnosis.patterns import SIGNATURES, best_pattern, match_patterns
from nofx.diagnosis.root_cause import dependency_closure, rank_root_causes
from nofx.providers.config import ConfigStore
from pilot.fleet import Fleet

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def evidence(
    service: str, *signals: Signal, onset: datetime | None = None, **kw: object
) -> ServiceEvidence:
    anomalies = (
        [
            Anomaly(
                service=service,
                metric="m",
                onset=onset,
                last_seen=onset,
                score=0.9,
                reasons=[f"{service} m is high"],
            )
        ]
        if onset
        else []
    )
    return ServiceEvidence(
        service=service, observed_at=T0 + timedelta(minutes=5), signals=list(signals),
        anomalies=anomalies, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.mark.parametrize(
    ("signals", "expected"),
    [
        (["probe_refused", "process_down"], "service_down"),
        (["probe_timeout", "process_frozen"], "service_hung"),
        (["error_ratio_up", "latency_up", "config_changed"], "error_spike_after_config_change"),
        (["latency_up"], "latency_regression"),
        (["pool_saturated", "latency_up", "probe_timeout"], "db_pool_exhaustion"),
        (["cache_stale"], "stale_cache"),
        (["request_rate_up", "latency_up", "probe_timeout"], "overload"),
        (["memory_growing"], "memory_leak"),
        (["disk_growing"], "disk_filling"),
    ],
)
def test_each_pattern_is_named_from_its_signals(signals: list[Signal], expected: str) -> None:
    match = best_pattern(evidence("api", *signals))
    assert match is not None
    assert match.pattern == expected


def test_contradicting_signal_vetoes_a_pattern() -> None:
    names = [m.pattern for m in match_patterns(evidence("api", "probe_timeout", "request_rate_up",
                                                        "latency_up"))]  # fmt: skip
    assert "service_hung" not in names
    assert names[0] == "overload"


def test_supporting_signals_raise_confidence() -> None:
    bare = best_pattern(evidence("api", "probe_refused"))
    backed = best_pattern(evidence("api", "probe_refused", "process_down"))
    assert bare is not None
    assert backed is not None
    assert backed.confidence > bare.confidence
    assert bare.missing == ["process_down"]


def test_no_signal_no_pattern() -> None:
    assert best_pattern(evidence("api")) is None


def test_dependency_closure_counts_hops() -> None:
    graph = {"web": ["api"], "api": ["orders", "cache"], "orders": ["db"]}
    assert dependency_closure(graph, "web") == {
        "web": 0,
        "api": 1,
        "orders": 2,
        "cache": 2,
        "db": 3,
    }


def test_recent_config_change_leads() -> None:
    change = ConfigChange(service="api", version=7, applied_at=T0 - timedelta(minutes=2),
                          applied_by="deploy-bot", reason="raise timeouts")  # fmt: skip
    ranked = rank_root_causes(
        "api",
        {"api": evidence("api", "error_ratio_up", onset=T0, recent_changes=[change])},
        {"api": ["orders"]},
    )
    assert ranked[0].cause == "configuration"
    assert "version 7" in ranked[0].detail
    assert "120s before" in ranked[0].reasons[0]


def test_a_change_just_after_a_noisy_onset_estimate_still_leads() -> None:
    change = ConfigChange(service="api", version=2, applied_at=T0 + timedelta(seconds=8),
                          applied_by="deploy-bot")  # fmt: skip
    ranked = rank_root_causes(
        "api", {"api": evidence("api", "latency_up", onset=T0, recent_changes=[change])}, {}
    )
    assert ranked[0].cause == "configuration"
    assert "8s after the estimated onset" in ranked[0].reasons[0]


def test_change_long_before_or_after_the_onset_is_not_blamed() -> None:
    old = ConfigChange(service="api", version=3, applied_at=T0 - timedelta(hours=3), applied_by="x")
    later = ConfigChange(
        service="api", version=4, applied_at=T0 + timedelta(minutes=1), applied_by="x"
    )
    ranked = rank_root_causes(
        "api", {"api": evidence("api", "latency_up", onset=T0, recent_changes=[old, later])}, {}
    )
    assert [c.cause for c in ranked] == ["self"]


def test_dependency_whose_anomalies_began_first_outranks_the_caller() -> None:
    ranked = rank_root_causes(
        "api",
        {
            "api": evidence("api", "latency_up", onset=T0 + timedelta(seconds=40)),
            "orders": evidence("orders", "latency_up", onset=T0),
        },
        {"api": ["orders"]},
        pattern="latency_regression",
    )
    assert ranked[0].service == "orders"
    assert ranked[0].cause == "dependency"
    assert ranked[-1].detail == "api itself (latency_regression)"


def test_a_service_that_calls_us_is_never_blamed() -> None:
    ranked = rank_root_causes(
        "orders",
        {
            "orders": evidence("orders", "latency_up", onset=T0 + timedelta(seconds=10)),
            "api": evidence("api", "latency_up", onset=T0),
        },
        {"api": ["orders"]},
    )
    assert [c.service for c in ranked] == ["orders"]


def test_every_pattern_has_a_signature_and_a_seeded_row(db_engine: Engine) -> None:
    assert {s.pattern for s in SIGNATURES} == set(PATTERNS)
    with db_engine.connect() as conn:
        seeded = set(conn.execute(text("SELECT problem_signature FROM healing_patterns")).scalars())
    assert set(PATTERNS) <= seeded


def test_a_rollback_to_a_known_configuration_does_not_lead() -> None:
    rollback = ConfigChange(
        service="api",
        version=3,
        applied_at=T0 - timedelta(minutes=1),
        applied_by="nofx-fleet:clear",
        restores_version=1,
    )
    ranked = rank_root_causes(
        "api", {"api": evidence("api", "probe_refused", recent_changes=[rollback])}, {}
    )
    assert ranked[0].cause == "self"
    config = next(c for c in ranked if c.cause == "configuration")
    assert "restores version 1" in config.reasons[-1]


def latency_around(change_at: datetime, before_s: int, after_s: int, after: float) -> pd.Series:
    """p95 latency every 2 s: 20 ms before `change_at`, `after` from it on."""
    start = change_at - timedelta(seconds=before_s)
    index = pd.date_range(start, periods=(before_s + after_s) // 2, freq="2s", tz="UTC")
    return pd.Series([0.02 if t < change_at else after for t in index], index=index)


LATENCY = next(w for w in WATCHED if w.name == "latency_p95_s")


def test_a_repeated_bad_push_is_caught_by_comparing_before_and_after_it() -> None:
    push = ConfigChange(service="api", version=9, applied_at=T0, applied_by="deploy-bot")
    series = latency_around(T0, 120, 30, after=0.32)
    found = change_regression("api", LATENCY, series, push, T0 + timedelta(seconds=30))
    assert found is not None
    assert found.detectors == ["change_verification"]
    assert found.onset >= T0 + timedelta(seconds=10)  # after one rate window
    assert found.baseline == pytest.approx(0.02)
    assert "since config v9" in found.reasons[0]


@pytest.mark.parametrize(
    ("change", "series", "why"),
    [
        (ConfigChange(service="api", version=10, applied_at=T0, applied_by="nofx-healing",
                      restores_version=8),
         latency_around(T0, 120, 30, after=0.32), "a rollback never starts a regression"),
        (ConfigChange(service="api", version=9, applied_at=T0, applied_by="x"),
         latency_around(T0, 120, 16, after=0.32), "too few values after the rate window"),
        (ConfigChange(service="api", version=9, applied_at=T0, applied_by="x"),
         latency_around(T0, 20, 30, after=0.32), "too little before the change"),
        (ConfigChange(service="api", version=9, applied_at=T0, applied_by="x"),
         latency_around(T0, 120, 30, after=0.03), "below the floor (+50 ms and x1.5)"),
    ],
)  # fmt: skip
def test_change_verification_needs_a_real_regression_after_a_new_change(
    change: ConfigChange, series: pd.Series, why: str
) -> None:
    assert change_regression("api", LATENCY, series, change, T0 + timedelta(seconds=30)) is None, (
        why
    )


def test_only_a_rollback_is_taken_for_one_a_repeated_bad_push_is_not(
    live_fleet: Fleet, db_engine: Engine
) -> None:
    service = live_fleet.spec.services[1].name
    bad = {"extra_latency_ms": 300}
    store = ConfigStore.of(db_engine, service)
    _, first = store.push(bad, applied_by="deploy-bot")
    rollback = store.rollback(applied_by="alice")
    assert rollback is not None
    rolled = rollback[1]
    _, again = store.push(bad, applied_by="deploy-bot")
    assert again.config == first.config  # the same bad configuration, pushed once more

    changes = recent_config_changes(db_engine, datetime.now(UTC))[service]
    by_version = {c.version: c.restores_version for c in changes}
    assert by_version[rolled.version] == first.version - 1  # a rollback, recorded as one
    assert by_version[first.version] is None
    assert by_version[again.version] is None  # a push, so it can be blamed again


def test_a_push_rolled_back_since_is_no_suspect() -> None:
    push = ConfigChange(service="api", version=2, applied_at=T0, applied_by="deploy-bot")
    rollback = ConfigChange(service="api", version=3, applied_at=T0 + timedelta(seconds=20),
                            applied_by="nofx-healing", restores_version=1)  # fmt: skip
    assert config_suspected([push], [push])
    assert not config_suspected([push, rollback], [push, rollback])
    assert not config_suspected([push], [])  # nothing applied around the onset
