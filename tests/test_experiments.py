"""A/B tests of decision strategies (nofx/decisions/experiments.py): the assignment is stable
and even, the test statistic matches a hand computation, the report and stop rule read real
decisions in PostgreSQL, the engine decides by the subject's arm, and the CLI drives it."""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.engine import Engine

from models.decisions import ArmSpec, DecisionRequest, ExperimentSpec
from nofx.decisions import experiments
from nofx.decisions.engine import DecisionEngine
from tests.test_decision_operations import SERVICE, add_service

SPEC = ExperimentSpec(
    name="learned-vs-prior",
    arms=[ArmSpec(name="learned", model="champion"), ArmSpec(name="prior", model="prior")],
    min_per_arm=20,
    max_per_arm=100,
)


def test_a_subject_keeps_its_arm_and_subjects_spread_evenly() -> None:
    first = experiments.assign(SPEC, "checkout")
    assert all(experiments.assign(SPEC, "checkout") == first for _ in range(5))
    arms = [experiments.assign(SPEC, f"svc-{i}").arm for i in range(400)]
    assert 0.4 < arms.count("learned") / len(arms) < 0.6
    # another experiment shuffles anew
    other = SPEC.model_copy(update={"name": "another"})
    moved = sum(experiments.assign(other, f"svc-{i}").arm != arms[i] for i in range(400))
    assert 120 < moved < 280


def test_the_z_test_matches_a_hand_computation() -> None:
    # 45/50 against 35/50: pooled 0.8, se sqrt(0.8 * 0.2 * (1/50 + 1/50)) = 0.08, z = 0.2/0.08
    z, p = experiments.two_proportion_z(45, 50, 35, 50)  # type: ignore[misc]
    assert z == pytest.approx(2.5)
    assert p == pytest.approx(math.erfc(2.5 / math.sqrt(2)))
    assert p == pytest.approx(0.012419, abs=1e-6)
    assert experiments.two_proportion_z(0, 0, 3, 5) is None
    assert experiments.two_proportion_z(5, 5, 5, 5) == (0.0, 1.0)


def test_a_bad_spec_is_refused_field_by_field() -> None:
    with pytest.raises(ValidationError, match="arm names repeat"):
        ExperimentSpec(name="x", arms=[ArmSpec(name="a"), ArmSpec(name="a")])
    with pytest.raises(ValidationError, match="at least 2"):
        ExperimentSpec(name="x", arms=[ArmSpec(name="a")])
    with pytest.raises(ValidationError, match="max_per_arm"):
        ExperimentSpec(
            name="x", arms=[ArmSpec(name="a"), ArmSpec(name="b")], min_per_arm=9, max_per_arm=3
        )


def decided(engine: Engine, arm: str, fixed: bool | None) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO autonomous_decisions (id, decision_type, context_data, chosen_action,"
                " actual_outcome, result) VALUES (:id, 'healing', '{}', 'restart-service',"
                " CAST(:o AS jsonb), CAST(:r AS jsonb))"
            ),
            {
                "id": str(uuid.uuid4()),
                "o": None if fixed is None else json.dumps({"resolved": fixed}),
                "r": json.dumps({"experiment": {"experiment": SPEC.name, "arm": arm}}),
            },
        )


def test_report_and_stop_rule_on_recorded_decisions(fresh_engine: Engine) -> None:
    experiments.start(fresh_engine, SPEC, actor="alice")
    with pytest.raises(experiments.ExperimentError, match="is running: stop it first"):
        experiments.start(fresh_engine, SPEC.model_copy(update={"name": "b"}), actor="alice")
    for i in range(25):
        decided(fresh_engine, "learned", i < 23)  # 23/25
        decided(fresh_engine, "prior", i < 14)  # 14/25
    decided(fresh_engine, "prior", None)  # no outcome yet: a decision, not an outcome
    report = experiments.report(fresh_engine, SPEC.name)
    learned, prior = report.arms
    assert (learned.decisions, learned.outcomes, learned.fixed) == (25, 25, 23)
    assert (prior.decisions, prior.outcomes, prior.fixed) == (26, 25, 14)
    z, p = experiments.two_proportion_z(23, 25, 14, 25)  # type: ignore[misc]
    assert (report.z, report.p_value) == (round(z, 4), round(p, 6))
    assert report.should_stop
    assert report.verdict.startswith("learned wins")
    stopped = experiments.stop(fresh_engine, SPEC.name, actor="alice", reason="learned wins")
    assert (stopped.status, stopped.stop_reason) == ("stopped", "learned wins")
    with pytest.raises(experiments.ExperimentError, match="already stopped"):
        experiments.stop(fresh_engine, SPEC.name, actor="alice", reason="again")
    with pytest.raises(experiments.ExperimentError, match="no experiment named 'nope'"):
        experiments.report(fresh_engine, "nope")
    with fresh_engine.connect() as conn:
        audited = conn.execute(
            text(
                "SELECT action FROM audit_events WHERE entity_type = 'decision_experiment'"
                " ORDER BY id"
            )
        ).scalars()
        assert list(audited) == ["experiment.started", "experiment.stopped"]


def test_too_few_outcomes_keep_collecting(fresh_engine: Engine) -> None:
    experiments.start(fresh_engine, SPEC, actor="alice")
    for i in range(5):
        decided(fresh_engine, "learned", True)
        decided(fresh_engine, "prior", i < 1)
    report = experiments.report(fresh_engine, SPEC.name)
    assert not report.should_stop
    assert report.verdict.startswith("collecting")


def test_the_engine_decides_by_the_subjects_arm(fresh_engine: Engine) -> None:
    add_service(fresh_engine)
    decisions = DecisionEngine(fresh_engine)
    request = DecisionRequest(subject=SERVICE, problem="service_down")
    _, before = decisions.simulate(request)
    assert before.experiment is None
    experiments.start(fresh_engine, SPEC, actor="alice")
    _, during = decisions.simulate(request)
    assert during.experiment == experiments.assign(SPEC, SERVICE)
    experiments.stop(fresh_engine, SPEC.name, actor="alice", reason="done")
    _, after = decisions.simulate(request)
    assert after.experiment is None


def test_start_report_stop_from_the_cli(autonomous_cli: Any) -> None:
    def cli(*args: str) -> Any:
        return autonomous_cli("experiments", *args)

    bad = cli("start", "x", "--arm", "only")
    assert bad.exit_code == 1
    assert "--arm 'only': model: Input should be 'champion' or 'prior'" in bad.output
    alone = cli("start", "x", "--arm", "champion")
    assert alone.exit_code == 1
    assert "arms: List should have at least 2 items" in alone.output
    started = cli("start", "ab1", "--arm", "learned:champion", "--arm", "prior", "--as", "alice")
    assert started.exit_code == 0, started.output
    assert "learned (champion), prior (prior)" in started.output
    again = cli("start", "ab2", "--arm", "champion", "--arm", "prior")
    assert again.exit_code == 1
    assert "'ab1' is running" in again.output
    shown = cli("report", "ab1", "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["verdict"].startswith("collecting")
    stopped = cli("stop", "ab1", "--reason", "enough")
    assert stopped.exit_code == 0, stopped.output
    assert "stopped: enough" in stopped.output
    missing = cli("report", "nope")
    assert missing.exit_code == 1
    assert "no experiment named 'nope'" in missing.output
