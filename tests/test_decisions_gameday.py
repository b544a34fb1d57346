"""The decision game day's pure parts on hand-made inputs: reading the action matrix, judging a
first choice against its best, the Brier score, the unsafe-action check, the fault plan and the
scheduler (benchmarks/decisions_gameday.py; the run itself needs a stack and real faults)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # the script imports its neighbours by name

import decisions_gameday as gd  # noqa: E402
from action_matrix import SCENARIOS  # noqa: E402

from tests.test_action_matrix import cell  # noqa: E402

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def matrix(tmp_path: Path) -> gd.Matrix:
    data = {
        "generated_at": "2026-12-01T22:15:37+00:00",
        "command": "python benchmarks/action_matrix.py --runs 2",
        "cells": [
            cell("memory_leak", "memory_leak", "restart-leaking", 2, 2),
            cell("memory_leak", "latency_regression", "restart-slow", 2, 2),
            cell("memory_leak", "latency_regression", "shift-slow", 2, 0),
            cell("overload", "overload", "shift-overloaded", 2, 2),
            cell("overload", "overload", "restart-overloaded", 2, 1),
            cell("connection_leak", "db_pool_exhaustion", "grow-pool", 2, 2, 0.1, enabled=False),
            cell("connection_leak", "db_pool_exhaustion", "release", 2, 2, 3.0),
            cell("kill", "service_down", "drain-and-restart", 2, 2, 1.05),
            cell("kill", "service_down", "restart", 2, 2, 1.09),
            cell("connection_leak", "db_pool_exhaustion", "restart", 2, 2, 1.6),
            cell("hang", "service_hung", "shift-hung", 2, 0),
        ],
        "best": {
            "kill": {
                "playbook": "drain-and-restart",
                "pattern": "service_down",
                "success_rate": 1.0,
                "recovery_seconds_p50": 1.05,
                "tied": [
                    {"pattern": "service_down", "playbook": "drain-and-restart"},
                    {"pattern": "service_down", "playbook": "restart"},
                ],
            },
            "memory_leak": {
                "playbook": "restart-slow",
                "pattern": "latency_regression",
                "success_rate": 1.0,
                "recovery_seconds_p50": 2.1,
            },
            "overload": {
                "playbook": "shift-overloaded",
                "pattern": "overload",
                "success_rate": 1.0,
                "recovery_seconds_p50": 0.1,
            },
            "connection_leak": {
                "playbook": "grow-pool",
                "pattern": "db_pool_exhaustion",
                "enabled": False,
                "success_rate": 1.0,
                "recovery_seconds_p50": 0.1,
            },
            "hang": {
                "playbook": "shift-hung",
                "pattern": "service_hung",
                "success_rate": 0.0,
                "recovery_seconds_p50": None,
            },
        },
    }
    path = tmp_path / "matrix.json"
    path.write_text(json.dumps(data))
    return gd.read_matrix(path)


def test_reads_the_best_and_every_cell(matrix: gd.Matrix) -> None:
    assert matrix.best["overload"].playbook == "shift-overloaded"
    assert matrix.best["memory_leak"].pattern == "latency_regression"
    assert matrix.cell("overload", "overload", "restart-overloaded") == 0.5
    assert matrix.cell("overload", "latency_regression", "restart-overloaded") is None
    assert matrix.generated_at == "2026-12-01T22:15:37+00:00"


def test_a_file_without_best_or_cells_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"cells": []}))
    with pytest.raises(ValueError, match="best"):
        gd.read_matrix(path)
    path.write_text(json.dumps({"best": {"kill": {"pattern": "service_down"}}, "cells": []}))
    with pytest.raises(ValueError, match="kill"):
        gd.read_matrix(path)


def test_correct_only_for_the_best_playbook_of_the_best_pattern(matrix: gd.Matrix) -> None:
    right = gd.judge_choice(matrix, "memory_leak", "latency_regression", "restart-slow")
    assert (right.correct, right.as_good) == (True, True)
    # another pattern's playbook, as successful: not the best, but as good
    other = gd.judge_choice(matrix, "memory_leak", "memory_leak", "restart-leaking")
    assert (other.correct, other.as_good, other.choice_rate) == (False, True, 1.0)
    assert other.best == "restart-slow"
    # the best playbook's name under a pattern the matrix did not pair it with
    renamed = gd.judge_choice(matrix, "memory_leak", "memory_leak", "restart-slow")
    assert (renamed.correct, renamed.as_good) == (False, None)
    worse = gd.judge_choice(matrix, "overload", "overload", "restart-overloaded")
    assert (worse.correct, worse.as_good, worse.choice_rate) == (False, False, 0.5)
    nothing = gd.judge_choice(matrix, "overload", "overload", None)
    assert (nothing.correct, nothing.as_good) == (False, None)
    unknown = gd.judge_choice(matrix, "disk_fill", "disk_filling", "quarantine")
    assert (unknown.best, unknown.correct) == (None, False)


def test_a_choice_tied_with_the_best_is_correct_but_not_strictly(matrix: gd.Matrix) -> None:
    # 1.09 s against 1.05 s: inside one judge round, which the matrix cannot tell apart
    tied = gd.judge_choice(matrix, "kill", "service_down", "restart")
    assert (tied.correct, tied.strict, tied.as_good) == (True, False, True)
    best = gd.judge_choice(matrix, "kill", "service_down", "drain-and-restart")
    assert (best.correct, best.strict) == (True, True)
    # the tie names its pattern: the same playbook name diagnosed otherwise is not in it
    other = gd.judge_choice(matrix, "kill", "service_hung", "restart")
    assert not other.correct
    assert matrix.best["kill"].tied[1] == ("service_down", "restart")
    # a matrix from before ties were kept: the best alone
    assert matrix.best["memory_leak"].tied == ()


def test_the_best_enabled_candidate_is_judged_apart(matrix: gd.Matrix) -> None:
    # the matrix best ships disabled: the engine cannot choose it; against the best enabled
    # candidate (ties by the lower recovery p50) the choice can still be right
    chosen = gd.judge_choice(matrix, "connection_leak", "db_pool_exhaustion", "restart")
    assert (chosen.correct, chosen.as_good, chosen.best_enabled) == (False, True, False)
    assert chosen.correct_vs_enabled_best
    slower = gd.judge_choice(matrix, "connection_leak", "db_pool_exhaustion", "release")
    assert not slower.correct_vs_enabled_best
    best = gd.judge_choice(matrix, "overload", "overload", "shift-overloaded")
    assert best.correct
    assert best.correct_vs_enabled_best
    notes = gd.matrix_notes(matrix, ["connection_leak", "hang", "overload"])
    assert len(notes) == 2
    assert notes[0].startswith("connection_leak: its best (grow-pool) ships disabled")
    assert "restart" in notes[0]
    assert notes[1].startswith("hang: no candidate fixed it")


def test_a_fault_no_candidate_fixes_is_not_judged(matrix: gd.Matrix) -> None:
    # every hang cell failed: choosing its "best" is no more right than anything else
    first_of_equals = gd.judge_choice(matrix, "hang", "service_hung", "shift-hung")
    assert first_of_equals.fixable is False
    assert (first_of_equals.correct, first_of_equals.as_good) == (False, None)
    assert not first_of_equals.correct_vs_enabled_best
    assert gd.judge_choice(matrix, "memory_leak", "memory_leak", "restart-leaking").fixable

    def row(index: int, fault: str, pattern: str, choice: str, **done: Any) -> gd.FaultRow:
        r = gd.FaultRow(index, fault, fault, {}, "s", "g", f"x{index}", "healed", injected=True)
        r.incident_id, r.pattern, r.first_choice = f"i{index}", pattern, choice
        judged = gd.judge_choice(matrix, fault, pattern, choice)
        r.correct, r.as_good, r.fixable = judged.correct, judged.as_good, judged.fixable
        r.correct_vs_enabled_best = judged.correct_vs_enabled_best
        for key, value in done.items():
            setattr(r, key, value)
        return r

    rows = [
        row(1, "memory_leak", "latency_regression", "restart-slow"),
        row(2, "memory_leak", "memory_leak", "restart-leaking"),
        row(3, "hang", "service_hung", "shift-hung", approval_asked=True, outcome="escalated"),
    ]
    report = gd.figures(rows)
    assert (report["decided"], report["judged"], report["correct"]) == (3, 2, 1)
    assert report["accuracy"] == 0.5
    assert report["accuracy_all_faults"] == round(1 / 3, 3)
    assert report["no_fix_in_matrix"] == {
        "decided": 1,
        "first_choices": {"service_hung/shift-hung": 1},
        "approval_asked": 1,
        "outcomes": {"escalated": 1},
    }
    assert gd.by_fault(rows)["hang"]["judged"] == 0


def test_brier_is_the_mean_squared_gap() -> None:
    assert gd.brier([(0.8, True), (0.8, False), (None, True)]) == pytest.approx(
        ((0.8 - 1) ** 2 + 0.8**2) / 2
    )
    assert gd.brier([(1.0, True), (0.0, False)]) == 0.0
    assert gd.brier([(None, True)]) is None


def view(**changes: Any) -> gd.DecisionView:
    base: dict[str, Any] = {
        "workflow_id": "decision-i1",
        "choice": "restart",
        "status": "approved",
        "risk_level": "low",
        "approvers": 0,
        "pruned_by": [],
        "replicas": 2,
        "serving": True,
        "max_blast_radius": 0.5,
    }
    return gd.DecisionView(**(base | changes))


RESTART = [gd.ActionRun("restart_service", T0)]
OFFERED = {"process.restart", "probe.http", "config.rollback"}


def test_a_capable_unpruned_low_risk_action_is_safe() -> None:
    assert gd.unsafe_reasons(view(), RESTART, OFFERED) == []
    # nothing ran: nothing unsafe, whatever the decision says
    assert gd.unsafe_reasons(view(risk_level="critical"), [], set()) == []


def test_each_broken_constraint_is_unsafe() -> None:
    pruned = gd.unsafe_reasons(view(pruned_by=["change_freeze: …"]), RESTART, OFFERED)
    assert len(pruned) == 1
    assert "pruned" in pruned[0]
    lacking = gd.unsafe_reasons(view(), [gd.ActionRun("shift_weight", T0)], OFFERED)
    assert lacking == ["shift_weight needs traffic.weight, not offered"]
    blast = gd.unsafe_reasons(view(max_blast_radius=0.25), RESTART, OFFERED)
    assert len(blast) == 1
    assert "blast-radius" in blast[0]
    # a lone replica, or one serving nothing, takes no capacity others would miss
    assert gd.unsafe_reasons(view(max_blast_radius=0.25, replicas=1), RESTART, OFFERED) == []
    assert gd.unsafe_reasons(view(max_blast_radius=0.25, serving=False), RESTART, OFFERED) == []
    freeze = gd.Freeze(T0 - timedelta(minutes=1), T0 + timedelta(minutes=1), "release")
    frozen = gd.unsafe_reasons(view(), RESTART, OFFERED, [freeze])
    assert frozen == ["restart_service ran during a change freeze (release)"]
    later = gd.Freeze(T0 + timedelta(minutes=1), T0 + timedelta(minutes=2), "later")
    assert gd.unsafe_reasons(view(), RESTART, OFFERED, [later]) == []
    alone = gd.unsafe_reasons(view(risk_level="critical", approvers=1), RESTART, OFFERED)
    assert alone == ["critical risk acted on with 1 approver(s), not two"]
    assert gd.unsafe_reasons(view(risk_level="critical", approvers=2), RESTART, OFFERED) == []


def test_view_of_a_decision_row() -> None:
    row = {
        "workflow_id": "decision-i1-rung2",
        "chosen_action": "restart",
        "status": "approved",
        "risk_assessment": {"level": "critical"},
        "approval": {
            "verdicts": [
                {"approver": "alice", "kind": "approve", "accepted": True},
                {"approver": "alice", "kind": "approve", "accepted": True},
                {"approver": "bob", "kind": "approve", "accepted": False},
            ]
        },
        "explanation": {
            "criteria": [
                {"candidate": "shift", "rank": 1},
                {"candidate": "restart", "rank": None, "pruned_by": ["blast_radius: 100%"]},
            ]
        },
        "context_data": {
            "incident_id": "i1",
            "current_state": {"replicas": 2, "serving_replicas": 1, "healthy": True},
            "constraints": {"max_blast_radius": 0.4},
        },
    }
    seen = gd.view_of(row)
    assert (seen.choice, seen.approvers, seen.pruned_by) == ("restart", 1, ["blast_radius: 100%"])
    assert (seen.replicas, seen.serving, seen.max_blast_radius) == (2, True, 0.4)
    assert gd.view_of(row | {"chosen_action": "none"}).choice == "shift"
    assert gd.rung_of_decision("decision-i1-rung2") == 2
    assert gd.rung_of_decision("decision-i1") == 1
    assert gd.rung_of_decision("decision-i1-ask1") is None
    prefix = "incident-s-p/i1/"
    assert gd.rung_of(prefix + "r2/0-restart_service", prefix) == 2
    assert gd.rung_of(prefix + "0-restart_service", prefix) == 1


def test_the_plan_cycles_every_scenario_and_the_scheduler_spreads_it() -> None:
    plan = gd.plan_faults(30, SCENARIOS)
    counts = {s.name: sum(p is s for p in plan) for s in SCENARIOS}
    assert set(counts.values()) == {3}
    overload = next(s for s in SCENARIOS if s.exclusive)
    kill = next(s for s in SCENARIOS if s.name == "kill")
    scheduler = gd.Scheduler({"g0": ["g0-r0", "g0-r1"], "g1": ["g1-r0", "g1-r1"]}, parallel=2)
    first = scheduler.pick(kill)
    second = scheduler.pick(kill)
    assert first is not None
    assert second is not None
    assert first[0] != second[0]  # one fault per group
    assert scheduler.pick(kill) is None  # parallel 2
    scheduler.release(first[0])
    assert scheduler.pick(overload) is None  # an overload runs alone
    scheduler.release(second[0])
    alone = scheduler.pick(overload)
    assert alone is not None
    assert scheduler.pick(kill) is None
    scheduler.release(alone[0])
    # every replica is faulted once before any twice
    used = {first[1], second[1], alone[1]}
    fourth = scheduler.pick(kill)
    assert fourth is not None
    assert fourth[1] not in used

    # one at a time: the next fault goes to the other group, not to the sibling of the replica
    # just faulted (its group may still be re-admitting it)
    one = gd.Scheduler({"g0": ["g0-r0", "g0-r1"], "g1": ["g1-r0", "g1-r1"]}, parallel=1)
    picks = []
    for _ in range(4):
        where = one.pick(kill)
        assert where is not None
        one.release(where[0])
        picks.append(where)
    assert [g for g, _ in picks] == ["g0", "g1", "g0", "g1"]
    assert len({s for _, s in picks}) == 4
