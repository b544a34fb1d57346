"""The pool and cache rules on cases worked out by hand."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest

from nofx.optimization.cache import (
    hit_ratio,
    rates_from,
    recommend_ttl,
    stale_among_hits,
    stale_share,
)
from nofx.optimization.pool import erlang_c, holding_time, judge, recommend_pool


def test_erlang_c_matches_the_textbook() -> None:
    # one server: the chance of waiting is the utilisation
    assert erlang_c(1, 0.5) == pytest.approx(0.5)
    # two servers at 1 Erlang: C = (a^2/2! * 2/(2-a)) / (1 + a + a^2/2! * 2/(2-a)) = 1/3
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert erlang_c(3, 3.0) == 1.0  # saturated: everyone waits
    assert erlang_c(4, 0.0) == 0.0
    assert erlang_c(500, 450.0) < 1  # the recursion stays finite for big pools
    with pytest.raises(ValueError, match="servers"):
        erlang_c(0, 1.0)


def test_the_pool_is_the_smallest_that_keeps_waits_short() -> None:
    # 100 requests/s holding a connection 20 ms: 2 Erlangs on average (Little's law)
    assert holding_time(2.0, 100.0) == pytest.approx(0.02)
    found = recommend_pool(100.0, 0.02, max_wait_s=0.005, quantile=0.95)
    assert found.offered_load == pytest.approx(2.0)
    assert found.p_wait_over <= 0.05
    smaller = judge(found.size - 1, 100.0, 0.02, 0.005)
    assert smaller.p_wait_over > 0.05  # one fewer breaks the target
    # at 3 connections: C(3, 2) = 4/9; P(W > 5 ms) = 4/9 * exp(-(3 - 2) * 0.005 / 0.02)
    three = judge(3, 100.0, 0.02, 0.005)
    assert three.p_wait == pytest.approx(4 / 9)
    assert three.p_wait_over == pytest.approx(4 / 9 * math.exp(-0.25))
    assert found.size == 5
    assert recommend_pool(0.0, 0.02, max_wait_s=0.0, minimum=2).size == 2  # idle: the floor
    with pytest.raises(ValueError, match="arrival_rate"):
        holding_time(1.0, 0.0)
    with pytest.raises(ValueError, match="quantile"):
        recommend_pool(1.0, 0.1, max_wait_s=0.1, quantile=1.0)


def test_the_ttl_is_the_longest_within_the_stale_budget() -> None:
    # a key asked for once a second, cached 9 s: 9 hits for each miss
    assert hit_ratio(9.0, 1.0) == pytest.approx(0.9)
    assert stale_among_hits(0.0, 0.1) == 0.0
    # a source changing every 100 s on average, TTL 10 s: 1 - (1 - e^-0.1)/0.1
    assert stale_among_hits(10.0, 0.01) == pytest.approx(1 - (1 - math.exp(-0.1)) / 0.1)
    observed_hit = hit_ratio(10.0, 1.0)
    observed_stale = stale_share(10.0, 1.0, 0.01)
    requests, changes = rates_from(observed_hit, observed_stale, 10.0)
    assert requests == pytest.approx(1.0)
    assert changes == pytest.approx(0.01, rel=1e-6)
    found = recommend_ttl(observed_hit, observed_stale, 10.0, stale_budget=0.01)
    assert stale_share(found.ttl_s, 1.0, 0.01) == pytest.approx(0.01, rel=1e-4)
    assert found.ttl_s < 10.0  # 10 s served ~4.4% stale answers: over the 1% budget
    longer = recommend_ttl(observed_hit, observed_stale, 10.0, stale_budget=0.2)
    assert longer.ttl_s > 10.0
    assert longer.hit_ratio > observed_hit
    never_changes = recommend_ttl(0.5, 0.0, 10.0, stale_budget=0.01, max_ttl_s=3600)
    assert never_changes.ttl_s == 3600  # nothing goes stale: as long as allowed
    with pytest.raises(ValueError, match="stale share"):
        rates_from(0.5, 0.6, 10.0)
    with pytest.raises(ValueError, match="hit ratio"):
        rates_from(1.0, 0.0, 10.0)


def _measured(p95: float, errors: float = 0.0, **objective: float) -> Any:
    from models.optimization import Measurement

    return Measurement(
        label="before",
        at=datetime(2026, 12, 6, tzinfo=UTC),
        requests=100,
        errors=int(errors * 100),
        error_ratio=errors,
        p95_ms=p95,
        objective=objective,
        detail="",
    )


def _judged(before: Any, after: Any, slo: float | None = None, budget: float | None = None) -> Any:
    from models.healing import PlaybookStep
    from models.optimization import ClaimedRecommendation, JudgeInput, Objective
    from nofx.optimization.apply import judge

    claimed = ClaimedRecommendation(
        id="r",
        service="api",
        optimization_type="cache",
        target="ttl_s",
        current_state={},
        recommended_state={},
        expected_improvement={"x": 1},
        risk_assessment={},
        steps=[PlaybookStep(action="validate_requests")],
        endpoint="http://127.0.0.1:1",
        objective=Objective(stale_budget=budget),
        latency_p95_ms=slo,
        windowed=False,
    )
    return judge(
        JudgeInput(
            claimed=claimed, before=before, after=after, tolerance=0.5, max_error_increase=0.02
        )
    )


def test_a_change_regresses_on_errors_latency_over_the_slo_slower_queries_or_stale_answers() -> (
    None
):
    assert not _judged(_measured(20), _measured(34)).regressed  # 34 < 20 * 1.5 + 5
    assert _judged(_measured(20), _measured(36)).regressed  # over it, and no SLO
    assert not _judged(_measured(20), _measured(60), slo=250).regressed  # within the SLO
    assert _judged(_measured(200), _measured(320), slo=250).regressed
    errors = _judged(_measured(20), _measured(20, errors=0.05))
    assert errors.regressed
    assert "error ratio" in errors.reasons[0]
    slower = _judged(_measured(20, query_mean_ms=1.0), _measured(20, query_mean_ms=9.0))
    assert slower.reasons == ["query mean 1.00 -> 9.00 ms"]
    stale = _judged(_measured(20, stale_share=0.005), _measured(20, stale_share=0.03), budget=0.01)
    assert stale.regressed
    kept = _judged(_measured(20, hit_ratio=0.8), _measured(19, hit_ratio=0.9))
    assert kept.realised["verdict"] == "kept"
    assert kept.realised["hit_ratio_change"] == pytest.approx(0.1)
    assert kept.realised["expected"] == {"x": 1}
