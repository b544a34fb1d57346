"""Training the success model on decisions recorded in a real PostgreSQL: the data set from
outcomes, overrides and rejections, the time-ordered hold-out, champion and challenger, promotion
and rollback through the registry (nofx/decisions/training.py, nofx/model_registry.py), and
`nofx autonomous train | models` through TrainingWorkflow on a real Temporal dev server."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio.client import Client

from models.decisions import (
    Candidate,
    HistoricalMetrics,
    OperationalConstraints,
    SuccessModelReport,
    TrainRequest,
)
from nofx import model_registry as registry
from nofx.decisions import scoring, store, training
from nofx.decisions.engine import DecisionEngine
from nofx.decisions.learned import MODEL_TYPE, LearningError
from nofx.decisions.success import BetaSuccessModel, load_priors
from nofx.settings import TASK_QUEUE_DECISIONS, get_settings
from tests.decision_cases import CAPS, RESTART, ROLLBACK
from tests.helpers import assert_replays
from tests.test_learned_success import situation
from workers import decisions
from workers.common import Dependencies, build_worker

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def record(
    engine: Engine,
    at: datetime,
    minutes: float,
    chosen: Candidate,
    outcome: dict[str, Any] | None,
    feedback: list[tuple[str, dict[str, Any]]] = (),  # type: ignore[assignment]
) -> str:
    decision_id = str(uuid.uuid4())
    ctx = {"incident_id": None, **situation(minutes).model_dump(mode="json")}
    alternatives = [{"candidate": c.model_dump(mode="json")} for c in (ROLLBACK, RESTART)]
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO autonomous_decisions (id, decision_type, context_data, chosen_action,"
                " alternatives_considered, actual_outcome, created_at) VALUES (:id, 'healing',"
                " CAST(:ctx AS jsonb), :chosen, CAST(:alts AS jsonb), CAST(:outcome AS jsonb),"
                " :at)"
            ),
            {
                "id": decision_id,
                "ctx": json.dumps(ctx),
                "chosen": chosen.name,
                "alts": json.dumps(alternatives),
                "outcome": json.dumps(outcome) if outcome else None,
                "at": at,
            },
        )
    for kind, lessons in feedback:
        store.add_feedback(
            engine,
            decision_id=decision_id,
            feedback_type=kind,  # type: ignore[arg-type]
            idempotency_key=f"{decision_id}/{kind}",
            lessons=lessons,
        )
    return decision_id


def fill(engine: Engine, n: int = 160, seed: int = 5) -> None:
    """Decisions a context-blind engine made (it alternates), with outcomes from the rule of
    tests/test_learned_success.py: after a recent config push rolling back works."""
    rng = random.Random(seed)  # noqa: S311 - reproducible made-up history
    for i in range(n):
        minutes = rng.uniform(0, 120)
        chosen = ROLLBACK if i % 2 else RESTART
        works = (minutes < 30) == (chosen is ROLLBACK)
        fixed = works if rng.random() < 0.9 else not works
        outcome = {"resolved": fixed, "recovery_seconds": 6.0 if fixed else None}
        record(engine, T0 + timedelta(minutes=i), minutes, chosen, outcome)


def test_the_data_set_reads_outcomes_overrides_and_rejections(fresh_engine: Engine) -> None:
    # the engine chose a restart, a person overrode it with the rollback, which fixed it
    record(
        fresh_engine,
        T0,
        5,
        ROLLBACK,
        {"resolved": True, "recovery_seconds": 4.0},
        [("override", {"engine_choice": RESTART.name, "person_choice": ROLLBACK.name})],
    )
    # overridden, but the person's choice failed too: no verdict on the engine's choice
    record(
        fresh_engine,
        T0 + timedelta(minutes=1),
        5,
        ROLLBACK,
        {"resolved": False},
        [("override", {"engine_choice": RESTART.name, "person_choice": ROLLBACK.name})],
    )
    # rejected: nothing ran
    record(
        fresh_engine,
        T0 + timedelta(minutes=2),
        90,
        ROLLBACK,
        None,
        [("rejection", {"engine_choice": ROLLBACK.name})],
    )
    # approved and carried out with an action the candidates do not name
    record(fresh_engine, T0 + timedelta(minutes=3), 5, ROLLBACK, None)
    found = training.history(fresh_engine)
    seen = [
        [(e.candidate.name, e.success, e.weight, e.source) for e in ep.examples]
        for ep in found.episodes
    ]
    assert seen == [
        [("rollback-config", True, 1.0, "outcome"), ("restart-service", False, 0.5, "override")],
        [("rollback-config", False, 1.0, "outcome")],
        [("rollback-config", False, 0.5, "rejection")],
    ]
    assert [ep.good for ep in found.episodes] == ["rollback-config", None, None]
    assert found.episodes[0].examples[0].recovery_seconds == 4.0


def test_trains_on_the_older_decisions_and_promotes_a_better_model(fresh_engine: Engine) -> None:
    fill(fresh_engine)
    messages: list[str] = []
    report = training.train_and_judge(
        fresh_engine, now=T0 + timedelta(days=1), progress=messages.append
    )
    assert report.data["holdout_decisions"] == 40  # the latest quarter of 160
    assert report.data["holdout_from"] == (T0 + timedelta(minutes=120)).isoformat()
    # the Beta prior cannot see the context; the model can
    assert report.promoted, report.verdict
    assert report.challenger["brier"] < report.champion["brier"]
    assert report.challenger["decision_accuracy"] >= 0.8
    assert report.challenger["auc"] > 0.8
    assert any("judging on 40 held-out" in m for m in messages)
    active = training.load_active(fresh_engine)
    assert active is not None
    assert active.version == report.version
    assert active.estimate(situation(5), ROLLBACK).probability > 0.7
    row = registry.get(fresh_engine, report.model_id)
    assert row.active
    assert row.metrics["champion"]["model_id"] == "beta-prior"


def test_a_challenger_no_better_than_the_champion_is_kept_not_promoted(
    fresh_engine: Engine,
) -> None:
    fill(fresh_engine)
    now = T0 + timedelta(days=1)
    first = training.train_and_judge(fresh_engine, now=now)
    assert first.promoted
    # the same data, the same hold-out, a deterministic model: no better than the champion
    again = training.train_and_judge(fresh_engine, now=now + timedelta(seconds=1))
    assert not again.promoted
    assert "not below the champion" in again.verdict
    assert again.champion_id == first.model_id
    assert registry.active_id(fresh_engine, MODEL_TYPE) == first.model_id


def test_rollback_restores_the_previous_champion(fresh_engine: Engine) -> None:
    fill(fresh_engine)
    now = T0 + timedelta(days=1)
    first = training.train_and_judge(fresh_engine, now=now)
    second = training.train_and_judge(fresh_engine, now=now + timedelta(seconds=1))
    registry.promote(fresh_engine, second.model_id)
    assert training.load_active(fresh_engine).version == second.version  # type: ignore[union-attr]
    back = registry.rollback(fresh_engine, MODEL_TYPE)
    assert (back.model_id, back.active) == (first.model_id, True)
    assert training.load_active(fresh_engine).version == first.version  # type: ignore[union-attr]
    with pytest.raises(registry.RegistryError, match="replaced none"):
        registry.rollback(fresh_engine, MODEL_TYPE)  # the first model was the first champion


def test_too_few_decisions_for_a_hold_out_is_refused(fresh_engine: Engine) -> None:
    fill(fresh_engine, n=8)
    with pytest.raises(LearningError, match="hold-out"):
        training.train_and_judge(fresh_engine, now=T0 + timedelta(days=1))
    assert registry.list_models(fresh_engine, MODEL_TYPE) == []


def test_the_engine_follows_promotions_without_a_restart(fresh_engine: Engine) -> None:
    prior = BetaSuccessModel(load_priors())
    decisions = DecisionEngine(fresh_engine)
    follows = decisions.model
    assert isinstance(follows, training.ActiveSuccessModel)
    follows.refresh()
    assert follows.version == "beta-prior"
    ctx = situation(5)
    before = follows.estimate(ctx, ROLLBACK)
    assert before == prior.estimate(ctx, ROLLBACK)
    fill(fresh_engine)
    first = training.train_and_judge(fresh_engine, now=T0 + timedelta(days=1))
    follows.refresh()
    assert follows.version == first.version
    after = follows.estimate(ctx, ROLLBACK)
    assert after.source.startswith(f"model {first.version}")
    # the scoring keeps what moved the learned model on the chosen candidate
    offered = ctx.model_copy(
        update={
            "constraints": OperationalConstraints(capabilities=CAPS),
            "historical_data": HistoricalMetrics(
                minutes_since_config_change=5, config_change_rollbackable=True
            ),
        }
    )
    chosen = scoring.score(offered, [ROLLBACK, RESTART], follows).best()
    assert chosen is not None
    assert chosen.success is not None
    assert chosen.success.drivers
    assert "historical_data.minutes_since_config_change" in chosen.success.drivers
    # a model whose artifact was altered is not used: the engine decides on the prior
    second = training.train_and_judge(fresh_engine, now=T0 + timedelta(days=1, seconds=1))
    with fresh_engine.begin() as conn:
        conn.execute(
            text("UPDATE model_artifacts SET artifact = artifact || ' ' WHERE model_id = :id"),
            {"id": second.model_id},
        )
    registry.promote(fresh_engine, second.model_id)
    follows.refresh()
    assert follows.version == "beta-prior"
    registry.rollback(fresh_engine, MODEL_TYPE)
    follows.refresh()
    assert follows.version == first.version


async def test_train_list_promote_and_roll_back_from_the_cli(
    client: Client, fresh_engine: Engine, autonomous_cli: Any
) -> None:
    cli = autonomous_cli
    deps = Dependencies(engine=fresh_engine, client=client, settings=get_settings())
    async with build_worker(deps, TASK_QUEUE_DECISIONS, decisions.WORKFLOWS, decisions.activities):
        empty = await asyncio.to_thread(cli, "train")
        assert empty.exit_code == 1
        assert "not enough history to train" in empty.output
        assert "hold-out" in empty.output
        nothing = await asyncio.to_thread(cli, "models", "list")
        assert "no success model yet" in nothing.output

        await asyncio.to_thread(fill, fresh_engine)
        first = await asyncio.to_thread(cli, "train")
        assert first.exit_code == 0, first.output
        assert "PROMOTED" in first.output
        assert "champion (the Beta prior)" in first.output
        again = await asyncio.to_thread(cli, "train", "--json")
        assert again.exit_code == 0, again.output
        second = json.loads(again.output)
        assert second["promoted"] is False
        assert "not below the champion" in second["verdict"]

        listed = await asyncio.to_thread(cli, "models", "list", "--json")
        models = json.loads(listed.output)
        assert [m["active"] for m in models] == [False, True]  # newest first
        assert models[1]["metrics"]["holdout"]["decision_accuracy"] >= 0.8

        promoted = await asyncio.to_thread(
            cli, "models", "promote", second["model_id"], "--as", "alice", "--reason", "try it"
        )
        assert promoted.exit_code == 0, promoted.output
        assert second["version"] in promoted.output
        back = await asyncio.to_thread(cli, "models", "rollback", "--as", "alice")
        assert back.exit_code == 0, back.output
        assert models[1]["version"] in back.output
        unknown = await asyncio.to_thread(cli, "models", "promote", "not-a-model")
        assert unknown.exit_code == 1
        assert "no success model 'not-a-model'" in unknown.output
        first_again = await asyncio.to_thread(cli, "models", "rollback")
        assert first_again.exit_code == 1
        assert "replaced none" in first_again.output

    with fresh_engine.connect() as conn:
        audited = conn.execute(
            text(
                "SELECT action, actor, reason FROM audit_events"
                " WHERE entity_type = 'decision_model' ORDER BY id"
            )
        ).all()
    assert [tuple(a) for a in audited] == [
        ("model.promoted", "nofx:training", None),
        ("model.promoted", "alice", "try it"),
        ("model.rolled_back", "alice", None),
    ]


async def test_the_scheduled_run_skips_a_short_history_and_both_runs_replay(
    client: Client, fresh_engine: Engine
) -> None:
    queue = f"training-{uuid.uuid4().hex[:8]}"
    deps = Dependencies(engine=fresh_engine, client=client, settings=get_settings())
    async with build_worker(deps, queue, decisions.WORKFLOWS, decisions.activities):
        quiet = await client.start_workflow(
            "TrainingWorkflow",
            TrainRequest(skip_without_history=True),
            id=f"training-quiet-{uuid.uuid4().hex[:6]}",
            task_queue=queue,
            result_type=SuccessModelReport,
        )
        skipped = await quiet.result()
        assert skipped.model_id is None
        assert skipped.verdict.startswith("skipped: ")
        assert await quiet.query("step") == skipped.verdict
        await asyncio.to_thread(fill, fresh_engine)
        trained = await client.start_workflow(
            "TrainingWorkflow",
            TrainRequest(),
            id=f"training-{uuid.uuid4().hex[:6]}",
            task_queue=queue,
            result_type=SuccessModelReport,
        )
        report = await trained.result()
        assert report.promoted
        assert await trained.query("step") == f"done: {report.version} promoted"
    await assert_replays(quiet)
    await assert_replays(trained)
