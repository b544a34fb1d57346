"""Does the decision engine learn? Train on one scenario file, judge on another.

    python benchmarks/decisions.py --train TRAIN.jsonl --eval EVAL.jsonl [--seed N]
        [--override-rate R] [--retrain-every K] [--out F.json] [--database-url URL]

Scenario files are JSON Lines, one decision each (benchmarks/scenarios.py writes them): an
`incident` (service, pattern, optionally cause), a `context` (current_state with its metrics,
historical_data, predicted_outcomes, constraints, objectives, service with its tier),
`candidates` (action, reversible, blast_radius, cost) and the answers `success_probability` and
`recovery_seconds` per action. Unknown keys anywhere are ignored; metric names are whatever the
file has. A candidate is allowed when blast_radius <= max_blast_radius and (reversible or not
require_reversible); the best action is the allowed candidate of the highest success
probability, candidates within 0.02 of it tie, and the tie goes to the shortest recovery —
where several share that recovery exactly, each of them is a best action (`accuracy`;
`accuracy_first_listed` takes the first of them in file order, which the engine cannot know,
and `several_best_lines` counts such lines). A line with no allowed candidate is decided right
by choosing nothing.

The engine starts cold: a scratch database of its own (on `--database-url`, else
`NOFX_TEST_DATABASE_URL`, else an embedded pgserver; migrations applied), no model, no feedback,
no action-matrix priors (Beta(1, 1) per candidate, +1 for full-auto). The harness hides the
answers (`visible`) and turns what is left into the engine's own contract: a DecisionContext
(metrics, replicas, tier, pattern and cause, the constraints; every other number kept by its
path in `observations`) and Candidates with their declared traits; the file's objective weights
are the criteria weights, a criterion the file does not weigh counting 0 — except recovery time,
which the format's own rule weighs: within 0.02 of the best success the faster recovery wins,
said to the engine as a success tolerance of 0.02 (`objectives.success_tolerance`: success the
evidence cannot tell from the best one's within it scores as the best) and a recovery weight of
0.02 per unit of success weight.

Train phase, lines in order: the engine decides as in production — `nofx.decisions.scoring`
with the champion in force (`ActiveSuccessModel`), the recorded outcomes of the pattern and tier
(the context analyser's query), and safe exploration on (`ExplorationPolicy(enabled=True)`, a
budget of `EXPLORE_PER_SERVICE_DAY` per service, spent within the run); the decision is
recorded (`store.save_decision`); with `--override-rate R` a simulated person overrides a choice
that is not the best with the best that often (an `override` feedback row); the outcome of what
ran is drawn from its success probability with the seed and reported through
`store.record_outcome` (with its recovery seconds when it worked). Every `--retrain-every`
episodes the success model is trained by `nofx.decisions.training.train_and_judge` — the code of
`TrainingWorkflow` — and replaces the champion only when it beats it on the time-ordered
hold-out; each time, and once before the first episode, the eval file is judged
(`learning_curve`).

Eval phase: no exploration, no feedback, the first choice per line: `accuracy` (the best
action), `unsafe` (a choice that is not allowed), `regret` (best p minus chosen p). Also
`cumulative_regret` over the train phase (what the choices cost in success probability) and
`decide_ms_p50/p99` (scoring one decision, in process). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import action_matrix  # benchmarks/, beside this script
from sqlalchemy import text
from sqlalchemy.engine import Engine

from models.actions import ActionName
from models.decisions import (
    BusinessObjectives,
    Candidate,
    CriteriaWeights,
    DecisionContext,
    DecisionOutcome,
    DecisionResult,
    DeclaredTraits,
    Explanation,
    ExplorationPolicy,
    HistoricalMetrics,
    OperationalConstraints,
    Scoring,
    SystemState,
    Tier,
)
from models.healing import PlaybookStep
from nofx.chaos import quantile
from nofx.db import make_engine
from nofx.decisions import context as analyser
from nofx.decisions import scoring, store, training
from nofx.decisions.learned import LearningError
from nofx.decisions.success import BetaSuccessModel
from nofx.shutdown import StopOnSignals

ANSWERS = ("success_probability", "recovery_seconds")
TIE = 0.02
RETRAIN_EVERY = 250
EXPLORE_PER_SERVICE_DAY = 50  # the run is minutes long: a day's budget for it
TIERS: dict[int, Tier] = {0: "tier-0", 1: "tier-1", 2: "tier-2", 3: "tier-3"}
# an action the platform does not know: scored on its declared traits
GENERIC_STEP: ActionName = "validate_health"


def say(message: str) -> None:
    print(f"[{datetime.now().astimezone():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# ---- reading a scenario ------------------------------------------------------------------------


class ScenarioError(ValueError):
    """A line that cannot be a decision; the message names the line and the field."""


def read_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except json.JSONDecodeError as err:
            raise ScenarioError(f"{path}:{number}: not JSON ({err.msg})") from None
        if not isinstance(line, dict) or not line.get("candidates"):
            raise ScenarioError(f"{path}:{number}: needs a non-empty `candidates` list")
        for key in ANSWERS:
            if not isinstance(line.get(key), dict):
                raise ScenarioError(f"{path}:{number}: needs `{key}` per action")
        line["_where"] = f"{path.name}:{number}"
        lines.append(line)
    if not lines:
        raise ScenarioError(f"{path}: no scenario lines")
    return lines


def visible(line: Mapping[str, Any]) -> dict[str, Any]:
    """The line without its answers: all the engine is given."""
    return {k: v for k, v in line.items() if k not in ANSWERS and not k.startswith("_")}


def _numbers(prefix: str, value: Any) -> Iterator[tuple[str, float]]:
    if isinstance(value, bool) or (isinstance(value, int | float) and math.isfinite(value)):
        yield prefix, float(value)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _numbers(f"{prefix}.{k}", v)


NAMED = {
    "context.current_state.replicas",
    "context.constraints.max_blast_radius",
    "context.constraints.require_reversible",
    "context.constraints.change_freeze",
    "context.service.tier",
    "context.objectives.rto_seconds",
}


def decision_of(seen: Mapping[str, Any]) -> tuple[DecisionContext, list[Candidate], str, str]:
    """The engine's contract for a visible line: context, candidates, service, pattern."""
    incident = seen.get("incident") or {}
    ctx = seen.get("context") or {}
    state = ctx.get("current_state") or {}
    constraints = ctx.get("constraints") or {}
    service_info = ctx.get("service") or {}
    service = str(incident.get("service") or service_info.get("name") or "service")
    pattern = str(incident.get("pattern") or "unknown")
    tier = service_info.get("tier")
    metrics = dict(_numbers("m", state.get("metrics") or {}))
    candidates = []
    for index, raw in enumerate(seen["candidates"], start=1):
        action = str(raw.get("action") or f"candidate-{index}")
        candidates.append(
            Candidate(
                name=action,
                steps=[PlaybookStep(action=GENERIC_STEP)],
                escalation_rank=index,
                declared=DeclaredTraits(
                    blast_radius=min(1.0, max(0.0, float(raw.get("blast_radius") or 0.0))),
                    reversible=bool(raw.get("reversible", True)),
                    cost=max(0.0, float(raw.get("cost") or 0.0)),
                ),
            )
        )
    objectives = ctx.get("objectives") or {}
    weights_given = objectives.get("weights") or {}
    weights = (
        CriteriaWeights(
            success=float(weights_given.get("success", 0.0)),
            # the format's own rule: within TIE of the best success the faster recovery wins —
            # a success tolerance of TIE (below), and recovery weighed TIE per unit of success
            recovery_time=float(
                weights_given.get("recovery_time", TIE * float(weights_given.get("success", 0)))
            ),
            risk=float(weights_given.get("risk", 0.0)),
            cost=float(weights_given.get("cost", 0.0)),
        )
        if weights_given
        else CriteriaWeights()
    )
    rto = objectives.get("rto_seconds")
    rto = float(rto) if isinstance(rto, int | float) and rto > 0 else 300.0
    replicas = state.get("replicas")
    replicas = int(replicas) if isinstance(replicas, int | float) and replicas >= 1 else 1
    observations = {
        path.removeprefix("context."): value
        for path, value in _numbers("context", ctx)
        if path not in NAMED and not path.startswith("context.current_state.metrics.")
    }
    cause = incident.get("cause")
    context = DecisionContext(
        current_state=SystemState(
            service=service,
            tier=TIERS.get(tier, "tier-2") if isinstance(tier, int) else "tier-2",
            pattern=pattern,
            cause=cause if cause in ("configuration", "dependency", "self") else None,
            metrics={k.removeprefix("m."): v for k, v in metrics.items()},
            replicas=replicas,
            serving_replicas=replicas,
        ),
        historical_data=HistoricalMetrics(config_change_rollbackable=True),
        constraints=OperationalConstraints(
            capabilities=["probe.http"],
            max_blast_radius=min(1.0, max(0.01, float(constraints.get("max_blast_radius", 1.0)))),
            require_reversible=bool(constraints.get("require_reversible", False)),
            change_freeze="scenario freeze" if constraints.get("change_freeze") else None,
        ),
        objectives=BusinessObjectives(weights=weights, rto_seconds=rto, success_tolerance=TIE),
        observations=observations,
    )
    return context, candidates, service, pattern


# ---- the yardstick -----------------------------------------------------------------------------


def allowed(line: Mapping[str, Any]) -> list[str]:
    constraints = (line.get("context") or {}).get("constraints") or {}
    limit = float(constraints.get("max_blast_radius", 1.0))
    strict = bool(constraints.get("require_reversible", False))
    return [
        str(c["action"])
        for c in line["candidates"]
        if float(c.get("blast_radius") or 0.0) <= limit
        and (bool(c.get("reversible", True)) or not strict)
    ]


def best_actions(line: Mapping[str, Any]) -> list[str]:
    """The format's best actions, in file order: the allowed candidates within TIE of the
    highest success probability that share the shortest recovery among those. Several when
    that recovery is itself a tie (the rule does not tell them apart); none when nothing is
    allowed."""
    ok = allowed(line)
    if not ok:
        return []
    p = line["success_probability"]
    top = max(float(p.get(a, 0.0)) for a in ok)
    tied = [a for a in ok if float(p.get(a, 0.0)) >= top - TIE]
    seconds = line["recovery_seconds"]
    fastest = min(float(seconds.get(a, math.inf)) for a in tied)
    return [a for a in tied if float(seconds.get(a, math.inf)) == fastest]


def best_action(line: Mapping[str, Any]) -> str | None:
    """The first best action in file order (what the simulated person picks)."""
    best = best_actions(line)
    return best[0] if best else None


def is_right(line: Mapping[str, Any], chosen: str | None) -> bool:
    """A best action, or no choice when nothing is allowed."""
    best = best_actions(line)
    return chosen in best if best else chosen is None


# ---- the run -----------------------------------------------------------------------------------


@dataclass
class Harness:
    engine: Engine
    model: training.ActiveSuccessModel
    tiers: dict[str, str]

    def context(
        self,
        ctx: DecisionContext,
        service: str,
        pattern: str,
        frozen: dict[tuple[str, str], Any] | None = None,
    ) -> DecisionContext:
        """What the context analyser adds from the platform's own records. `frozen`: records
        that cannot change meanwhile (an eval pass writes nothing), read once per pattern and
        tier."""
        tier = ctx.current_state.tier
        if self.tiers.get(service) != tier:
            with self.engine.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO services (name, tier, owner, provider, endpoint)"
                        " VALUES (:n, :t, 'benchmark', 'none', 'http://127.0.0.1:1')"
                        " ON CONFLICT (name) DO UPDATE SET tier = EXCLUDED.tier"
                    ),
                    {"n": service, "t": tier},
                )
            self.tiers[service] = tier
        key = (pattern, tier)
        if frozen is not None and key in frozen:
            outcomes, explored = frozen[key]
        else:
            with self.engine.connect() as conn:
                outcomes = analyser.outcomes_of(conn, pattern, tier)
                explored = conn.execute(
                    text(
                        "SELECT count(*) FROM autonomous_decisions WHERE subject = :s"
                        " AND result->'exploration'->>'explored' = 'true'"
                    ),
                    {"s": service},
                ).scalar_one()
            if frozen is not None:
                frozen[key] = (outcomes, explored)
        history = ctx.historical_data.model_copy(
            update={"outcomes": outcomes, "explorations_24h": int(explored)}
        )
        return ctx.model_copy(update={"historical_data": history})


def decide(
    ctx: DecisionContext, candidates: list[Candidate], model: Any, explore: bool, seed: int
) -> tuple[Scoring, float]:
    policy = ExplorationPolicy(
        enabled=explore, per_service_per_day=EXPLORE_PER_SERVICE_DAY, never_tiers=["tier-0"]
    )
    began = time.perf_counter()
    result = scoring.score(
        ctx, candidates, model, ctx.objectives.weights, policy if explore else None, seed=seed
    )
    return result, (time.perf_counter() - began) * 1000


def record(
    engine: Engine,
    ctx: DecisionContext,
    result: Scoring,
    ran: str,
    resolved: bool,
    seconds: float | None,
    overridden: bool,
    service: str,
    pattern: str,
) -> None:
    decision_id = str(uuid.uuid4())
    picked = result.find(ran)
    decision = DecisionResult(
        decision_id=decision_id,
        workflow_id=f"benchmark-decisions-{decision_id[:8]}",
        decision_type="healing",
        subject=service,
        problem=pattern,
        status="approved",
        mode="autonomous",
        act=True,
        chosen=ran,
        engine_choice=result.chosen,
        confidence=result.confidence,
        expected_outcome={},
        alternatives=[c for c in result.ranked if c.candidate.name != ran],
        explanation=Explanation(text="benchmark decision"),
        exploration=result.exploration,
        chosen_candidate=picked.candidate if picked else None,
        decided_by="benchmark:person" if overridden else "nofx-decisions",
    )
    store.save_decision(engine, decision, ctx)
    if overridden:
        store.add_feedback(
            engine,
            decision_id=decision_id,
            feedback_type="override",
            idempotency_key=f"{decision_id}/override",
            lessons={"engine_choice": result.chosen, "person_choice": ran, "approver": "sim"},
        )
    store.record_outcome(
        engine,
        DecisionOutcome(
            decision_id=decision_id,
            resolved=resolved,
            recovery_seconds=seconds if resolved else None,
        ),
    )


def evaluate(
    engine: Harness, lines: list[dict[str, Any]], by_pattern: bool = False
) -> dict[str, Any]:
    right = unsafe = first_listed = 0
    regret = 0.0
    frozen: dict[tuple[str, str], Any] = {}
    patterns: dict[str, list[int]] = {}
    for line in lines:
        ctx, candidates, service, pattern = decision_of(visible(line))
        ctx = engine.context(ctx, service, pattern, frozen)
        result, _ = decide(ctx, candidates, engine.model, False, 0)
        best = best_action(line)
        chosen = result.chosen
        if chosen is not None and chosen not in allowed(line):
            unsafe += 1
        ok = is_right(line, chosen)
        right += ok
        first_listed += chosen == best
        tally = patterns.setdefault(pattern, [0, 0])
        tally[0] += ok
        tally[1] += 1
        p = line["success_probability"]
        if best is not None:
            regret += float(p.get(best, 0.0)) - float(p.get(chosen, 0.0) if chosen else 0.0)
    n = len(lines)
    out: dict[str, Any] = {
        "accuracy": round(right / n, 4),
        "accuracy_first_listed": round(first_listed / n, 4),
        "unsafe": unsafe,
        "mean_regret": round(regret / n, 4),
    }
    if by_pattern:
        out["by_pattern"] = {
            k: {"lines": t, "accuracy": round(r / t, 4)} for k, (r, t) in sorted(patterns.items())
        }
    return out


def run(args: argparse.Namespace, database_url: str) -> dict[str, Any]:
    train_lines = read_lines(args.train)
    eval_lines = read_lines(args.eval)
    rng = random.Random(args.seed)  # noqa: S311 - the outcomes' draws, reproducible by --seed
    engine = make_engine(database_url)
    prior = BetaSuccessModel([])  # cold: no action-matrix priors either
    model = training.ActiveSuccessModel(engine, prior)
    harness = Harness(engine, model, {})
    curve = [{"episodes": 0, "champion": model.version, **evaluate(harness, eval_lines)}]
    say(f"cold start: eval accuracy {curve[0]['accuracy']:.3f}")
    decide_ms: list[float] = []
    cumulative_regret = 0.0
    explored = overridden = resolved_count = unsafe_train = 0
    trainings: list[dict[str, Any]] = []
    for episode, line in enumerate(train_lines, start=1):
        ctx, candidates, service, pattern = decision_of(visible(line))
        ctx = harness.context(ctx, service, pattern)
        result, ms = decide(ctx, candidates, model, True, rng.randrange(2**31))
        decide_ms.append(ms)
        chosen = result.chosen
        best = best_action(line)
        # a line every candidate of which was pruned decides nothing (and is not unsafe)
        if chosen is not None:
            if chosen not in allowed(line):
                unsafe_train += 1
            p = line["success_probability"]
            if best is not None:
                cumulative_regret += float(p.get(best, 0.0)) - float(p.get(chosen, 0.0))
            explored += bool(result.exploration and result.exploration.explored)
            ran, person = chosen, False
            if best is not None and chosen != best and rng.random() < args.override_rate:
                ran, person = best, True
                overridden += 1
            resolved = rng.random() < float(p.get(ran, 0.0))
            resolved_count += resolved
            seconds = float(line["recovery_seconds"].get(ran, 0.0)) if resolved else None
            record(engine, ctx, result, ran, resolved, seconds, person, service, pattern)
        if episode % args.retrain_every == 0 or episode == len(train_lines):
            try:
                report = training.train_and_judge(engine, prior=prior)
            except LearningError as err:
                trainings.append({"episodes": episode, "error": str(err)})
            else:
                trainings.append(
                    {
                        "episodes": episode,
                        "version": report.version,
                        "promoted": report.promoted,
                        "verdict": report.verdict,
                        "holdout": report.challenger,
                    }
                )
            model.refresh()
            point = {"episodes": episode, "champion": model.version}
            point.update(evaluate(harness, eval_lines))
            curve.append(point)
            say(
                f"{episode} episodes: champion {model.version}, eval accuracy"
                f" {point['accuracy']:.3f}, regret so far {cumulative_regret:.1f}"
            )
    final = evaluate(harness, eval_lines, by_pattern=True)
    engine.dispose()
    return {
        "accuracy": final["accuracy"],
        "accuracy_first_listed": final["accuracy_first_listed"],
        "by_pattern": final["by_pattern"],
        "several_best_lines": sum(len(best_actions(ln)) > 1 for ln in eval_lines),
        "unsafe": final["unsafe"],
        "eval_mean_regret": final["mean_regret"],
        "eval_lines": len(eval_lines),
        "train_lines": len(train_lines),
        "cumulative_regret": round(cumulative_regret, 2),
        "learning_curve": curve,
        "decide_ms_p50": round(quantile(decide_ms, 0.5) or 0.0, 3),
        "decide_ms_p99": round(quantile(decide_ms, 0.99) or 0.0, 3),
        "train": {
            "explored": explored,
            "overridden": overridden,
            "resolved": resolved_count,
            "unsafe": unsafe_train,
            "retrain_every": args.retrain_every,
            "trainings": trainings,
        },
    }


def table(report: Mapping[str, Any]) -> str:
    lines = [f"{'episodes':>9} {'champion':<26} {'accuracy':>9} {'unsafe':>7} {'regret':>7}"]
    for p in report["learning_curve"]:
        lines.append(
            f"{p['episodes']:>9} {p['champion']:<26} {p['accuracy']:>9.3f} {p['unsafe']:>7}"
            f" {p['mean_regret']:>7.3f}"
        )
    lines.append(
        f"eval accuracy {report['accuracy']:.3f} on {report['eval_lines']} lines, unsafe"
        f" {report['unsafe']}; train: cumulative regret {report['cumulative_regret']},"
        f" explored {report['train']['explored']}, overridden {report['train']['overridden']};"
        f" decide p50 {report['decide_ms_p50']} ms, p99 {report['decide_ms_p99']} ms"
    )
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--eval", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--override-rate", type=float, default=0.0)
    parser.add_argument("--retrain-every", type=int, default=RETRAIN_EVERY)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args(list(argv) if argv is not None else None)
    if not 0.0 <= args.override_rate <= 1.0:
        parser.error("--override-rate must lie in [0, 1]")
    if args.retrain_every < 1:
        parser.error("--retrain-every must be at least 1")
    for path in (args.train, args.eval):
        if not path.exists():
            parser.error(f"{path} does not exist")
    url = args.database_url or os.environ.get("NOFX_TEST_DATABASE_URL")
    began = datetime.now(UTC)
    try:
        # a SIGTERM or SIGINT unwinds too: the scratch database is dropped, not left behind
        with StopOnSignals() as cleanup:
            database_url = cleanup.enter_context(
                action_matrix.platform_database(url, prefix="nofx_decisions")
            )
            report = run(args, database_url)
    except ScenarioError as err:
        parser.exit(2, f"error: {err}\n")
    report = {
        "benchmark": "decisions",
        "command": " ".join(["python", "benchmarks/decisions.py", *sys.argv[1:]]),
        "started_at": began.isoformat(),
        "duration_seconds": round((datetime.now(UTC) - began).total_seconds(), 1),
        "seed": args.seed,
        "override_rate": args.override_rate,
        **report,
    }
    print(table(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
