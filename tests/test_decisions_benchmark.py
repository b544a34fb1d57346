"""The decision benchmark's harness on hand-made lines: the engine never sees the answers, the
yardstick follows the format's rule, unknown keys and other metric names are taken, a bad file
is refused naming the line (benchmarks/decisions.py, benchmarks/scenarios.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # the scripts import their neighbours by name

import decisions as bench  # noqa: E402
import scenarios  # noqa: E402

from nofx.decisions import scoring  # noqa: E402
from nofx.decisions.success import BetaSuccessModel  # noqa: E402

# answers no context value could equal by chance
SECRET_P, SECRET_S = 0.123457, 98.7654


def line(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "s-00001",
        "decision_type": "healing",
        "incident": {"service": "checkout", "pattern": "latency_regression"},
        "context": {
            "current_state": {"metrics": {"cpu_util": 0.62, "error_ratio": 0.08}, "replicas": 3},
            "historical_data": {"incidents_7d": 2},
            "predicted_outcomes": [],
            "constraints": {
                "change_freeze": False,
                "max_blast_radius": 0.5,
                "require_reversible": False,
            },
            "objectives": {"weights": {"success": 1.0}},
            "service": {"name": "checkout", "tier": 1},
            "a_key_nobody_knows": {"nested": 7},
        },
        "candidates": [
            {"action": "rollback_config", "reversible": True, "blast_radius": 0.33, "cost": 1.5},
            {"action": "restart", "reversible": False, "blast_radius": 0.34, "cost": 0.5},
            {"action": "drain_all", "reversible": True, "blast_radius": 1.0, "cost": 0.1},
        ],
        "success_probability": {"rollback_config": SECRET_P, "restart": 0.9, "drain_all": 0.99},
        "recovery_seconds": {"rollback_config": SECRET_S, "restart": 30.0, "drain_all": 5.0},
    }
    base.update(changes)
    return base


def test_the_engine_never_sees_the_answers() -> None:
    seen = bench.visible(line())
    assert not set(bench.ANSWERS) & set(seen)
    ctx, candidates, service, pattern = bench.decision_of(seen)
    given = json.dumps(
        [ctx.model_dump(mode="json"), [c.model_dump(mode="json") for c in candidates]]
    )
    assert "success_probability" not in given
    assert "recovery_seconds" not in given
    assert str(SECRET_P) not in given
    assert str(SECRET_S) not in given
    # and scoring what it was given cannot reach them either
    result = scoring.score(ctx, candidates, BetaSuccessModel([]), ctx.objectives.weights)
    assert str(SECRET_P) not in result.model_dump_json()
    assert (service, pattern) == ("checkout", "latency_regression")


def test_what_the_engine_is_given_keeps_every_number_and_ignores_the_rest() -> None:
    ctx, candidates, _, _ = bench.decision_of(bench.visible(line()))
    assert ctx.current_state.metrics == {"cpu_util": 0.62, "error_ratio": 0.08}
    assert ctx.current_state.tier == "tier-1"
    assert ctx.current_state.replicas == 3
    assert ctx.observations == {
        "historical_data.incidents_7d": 2.0,
        "objectives.weights.success": 1.0,
        "a_key_nobody_knows.nested": 7.0,
    }
    assert [c.name for c in candidates] == ["rollback_config", "restart", "drain_all"]
    assert candidates[1].declared is not None
    assert candidates[1].declared.reversible is False
    # the file's weights, and the format's own tie rule for recovery
    w = ctx.objectives.weights
    assert (w.success, w.recovery_time, w.risk, w.cost) == (1.0, bench.TIE, 0.0, 0.0)


def test_the_yardstick_follows_the_formats_rule() -> None:
    # drain_all takes the whole service (over the 0.5 limit); restart is allowed here
    assert bench.allowed(line()) == ["rollback_config", "restart"]
    assert bench.best_action(line()) == "restart"
    strict = line()
    strict["context"]["constraints"]["require_reversible"] = True
    assert bench.allowed(strict) == ["rollback_config"]
    # within 0.02 of the best success, the shortest recovery wins
    close = line(
        success_probability={"rollback_config": 0.89, "restart": 0.9, "drain_all": 0.99},
        recovery_seconds={"rollback_config": 3.0, "restart": 30.0, "drain_all": 5.0},
    )
    assert bench.best_action(close) == "rollback_config"
    # a tie on that recovery too leaves several best actions, any of them right
    even = line(
        success_probability={"rollback_config": 0.89, "restart": 0.9, "drain_all": 0.99},
        recovery_seconds={"rollback_config": 3.0, "restart": 3.0, "drain_all": 5.0},
    )
    assert bench.best_actions(even) == ["rollback_config", "restart"]
    assert bench.is_right(even, "restart")
    assert bench.is_right(even, "rollback_config")
    assert not bench.is_right(even, "drain_all")
    # with nothing allowed, choosing nothing is right and anything else wrong
    nothing = line()
    nothing["context"]["constraints"].update(max_blast_radius=0.1, require_reversible=True)
    assert bench.best_actions(nothing) == []
    assert bench.is_right(nothing, None)
    assert not bench.is_right(nothing, "rollback_config")
    # the format's tie is told to the engine as its success tolerance
    assert bench.decision_of(bench.visible(close))[0].objectives.success_tolerance == bench.TIE
    # and the engine's pruning agrees with the format on what is allowed
    ctx, candidates, _, _ = bench.decision_of(bench.visible(strict))
    result = scoring.score(ctx, candidates, BetaSuccessModel([]), ctx.objectives.weights)
    assert {c.candidate.name for c in result.ranked if c.rank} == {"rollback_config"}


def test_a_bad_file_is_refused_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(line()) + "\n{not json\n")
    with pytest.raises(bench.ScenarioError, match=r"bad.jsonl:2: not JSON"):
        bench.read_lines(path)
    path.write_text(json.dumps(line(candidates=[])) + "\n")
    with pytest.raises(bench.ScenarioError, match=r"bad.jsonl:1: needs a non-empty"):
        bench.read_lines(path)
    path.write_text(json.dumps({k: v for k, v in line().items() if k != "recovery_seconds"}))
    with pytest.raises(bench.ScenarioError, match="recovery_seconds"):
        bench.read_lines(path)


def test_generated_lines_hide_nothing_in_their_order_and_carry_real_evidence() -> None:
    matrix = scenarios.load_matrix(scenarios.DEFAULT_MATRIX)
    evidence = scenarios.load_evidence(scenarios.DEFAULT_EVIDENCE)
    lines = list(scenarios.generate(400, 3, matrix, evidence, {}, 90.0))
    assert {ln["fault"] for ln in lines} == set(matrix)
    # the best candidate is not always listed first (the matrix order would give it away)
    firsts = [bench.best_action(ln) == ln["candidates"][0]["action"] for ln in lines]
    assert 0.2 < sum(firsts) / len(firsts) < 0.8
    leak = next(ln for ln in lines if ln["fault"] == "memory_leak")
    assert leak["context"]["current_state"]["metrics"]["rss_bytes"] > 0
