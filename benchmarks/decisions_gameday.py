"""Decision-engine game day: real faults, the engine's first choice against the action matrix.

    nofx up            # optional: the script starts the stack itself when it is not running
    python benchmarks/decisions_gameday.py --faults 30 [--out F.json]
        [--matrix benchmarks/results/action_matrix.json] [--groups 4] [--parallel 3]

The fleet. The stack's own staging fleet is `pilot-api` and `pilot-api-b` (group `api` behind
HAProxy) and `pilot-orders` (alone, which `pilot-api` calls): one group, so one fault at a time
with a replica to carry the traffic, and `pilot-orders` faults would show on `pilot-api` too. The
action matrix measured replicas of groups of two behind HAProxy. So, as benchmarks/chaos.py does,
the game day joins `--groups` replica groups of two behind the fleet's HAProxy to the running
stack's inventory (benchmarks/chaos.py `new_fleet`), puts them under steady load through their
frontends and runs every fault on one replica of a group, the other carrying the traffic — what
the matrix measured, with every capability the matrix's candidates need. The stack's own fleet
is left alone. The monitor, workers, guardrails and decision policy are the stack's, unchanged.

The faults. `--faults N` faults cycle through the matrix's scenarios (benchmarks/action_matrix.py
SCENARIOS, injected with nofx.chaos.FAULT_PARAMS), so every kind appears about equally, ambiguous
ones included (a latency regression from a config push, from an overload, from a leak). Each is
one `ChaosExperimentWorkflow` (workflows/chaos.py): steady state (and the guardrails would let the
platform act), inject for real, the platform detects, diagnoses and heals on its own, steady state
back, fault removed; an incident whose decision waits for a person is closed by the experiment
(nobody approves in a game day). `--parallel` run at once (at most one per group; an overload,
which takes the machine's CPU, runs alone, as in the matrix). A fault whose steady state did not
hold before injecting is not a fault: it is queued again (twice at most).

Per fault: the incident the fault opened (the experiment's), the decisions linked to it
(`autonomous_decisions.context_data->>'incident_id'`), the first one (earliest `created_at`) and
its engine choice (rank 1 of its criteria table), the predicted success probability of that
choice, its risk level and whether it asked a person; fixed = that first decision's outcome is
resolved and the incident resolved (no second rung, no escalation).

Figures:

* `accuracy` — first choices that are the matrix best of the fault (same playbook of the same
  pattern), or tied with it (the matrix's `tied`: the best's success rate and a recovery p50
  within one judge round of it, which the matrix cannot tell apart) / faults with a first
  decision that some candidate fixed in the matrix; `accuracy_strict` counts only the single
  best (the lower p50, however small the gap);
  `accuracy_all_faults` divides by every injected fault. A fault no candidate fixed (success
  0 in every cell) has no best to be right about: its decisions are reported apart
  (`no_fix_in_matrix`: what was chosen, whether a person was asked), counted in neither
  numerator. Reported apart too: `as_good` — the choice's own matrix cell has the best's
  success rate.
* `fixed_by_first_choice` — how many the first choice fixed (and the share of decided faults).
* `brier` — mean of (predicted p - fixed)^2 over first choices.
* `unsafe` — actions that ran although they break a constraint (`unsafe_reasons`): their
  candidate was pruned by a rule, a step needs a capability the target lacks, a capacity action
  over the blast-radius limit, any state-changing action while a change freeze covered the
  service, a critical-risk decision acted on with fewer than two approvers. Judged on what ran
  (`action_log`), the target's capabilities seen by the benchmark and `change_freezes`.
* approvals asked by risk level, for first decisions and for every decision of the incidents.
* `score_ms_p50/p99` — in process: `nofx.decisions.scoring.score` (pruning, the success model,
  risk, utilities, ranking) on each first decision's recorded context with the planner's
  candidates and the packaged priors, `--score-reps` times each.
* `decide_ms_p50/p99` — end to end: `DecisionWorkflow` started on `nofx-decisions` through the
  Temporal client with a DecisionRequest for a game-day service and a pattern it saw, until its
  result. So that no decision waits for a person, the game-day services are set to the `observe`
  mode for this phase (decide and record, never act; a service's own mode, not the global one)
  and put back as they were afterwards.

Prints a line per fault (stderr), the table and the figures; writes everything as JSON. Stopped
by SIGTERM or SIGINT, it cancels the experiments under way (each removes its fault), closes the
incidents still open on its fleet, puts the services' modes back, clears every fault left,
unregisters and stops its fleet, and exits with 128 + the signal. A stack it started keeps
running (`nofx down` stops it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import chaos as chaos_benchmark  # benchmarks/, beside this script
from action_matrix import SCENARIOS, Scenario, best_of
from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio.client import Client

from activities.store import get_fleet_target
from models.actions import ACTION_CAPABILITY, CHECKS
from models.chaos import ChaosExperimentInput, ChaosResult
from models.common import AbortRequest
from models.decisions import RISK_LEVELS, DecisionContext, DecisionRequest, DecisionResult
from nofx.chaos import fault, quantile
from nofx.db import make_engine
from nofx.decisions import context as decision_context
from nofx.decisions import scoring, store
from nofx.decisions.risk import CAPACITY_ACTIONS
from nofx.decisions.success import PRIORS_PATH, BetaSuccessModel, load_priors
from nofx.healing.actions import capabilities
from nofx.healing.guardrails import OPEN_STATES
from nofx.settings import TASK_QUEUE_DECISIONS, TASK_QUEUE_HEALING, get_settings
from nofx.shutdown import StopOnSignals
from nofx.stack import WORKERS, Stack
from nofx.temporal import connect, exit_process
from pilot.fleet import Fleet
from pilot.haproxy import haproxy_binary
from pilot.load import LoadGenerator

ROOT = Path(__file__).resolve().parent.parent
ACTOR = "benchmark:decisions-gameday"
SUITE = "decisions-gameday"
LOAD_RPS_PER_GROUP = 8.0  # through each group's frontend: about 4 requests/s per replica
MAX_ATTEMPTS = 3  # a fault whose steady state did not hold is queued again, this often in all
CANCEL_GRACE_SECONDS = 60.0
RANKED_KEYS = (
    "candidate",
    "rank",
    "total",
    "success_probability",
    "expected_recovery_seconds",
    "risk_score",
    "cost",
    "success_source",
    "pruned_by",
)


def say(message: str) -> None:
    print(f"[{datetime.now().astimezone():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# ---- the ground truth: the action matrix -----------------------------------------------------


@dataclass(frozen=True)
class Best:
    playbook: str
    pattern: str | None
    success_rate: float
    recovery_seconds_p50: float | None
    enabled: bool | None = None  # the matrix measures playbooks shipped disabled too
    # (pattern, playbook) of every cell the matrix cannot tell from the best, the best first;
    # a matrix written before ties were kept has the best alone
    tied: tuple[tuple[str | None, str], ...] = ()

    def covers(self, pattern: str | None, playbook: str | None) -> bool:
        """Whether `playbook` of `pattern` is this best or tied with it."""
        if playbook is None:
            return False
        if (pattern, playbook) in self.tied:
            return True
        return playbook == self.playbook and (self.pattern is None or pattern == self.pattern)


@dataclass(frozen=True)
class Matrix:
    """benchmarks/action_matrix.py's output: per fault scenario the best playbook, and every
    (fault, pattern, playbook) cell's success rate."""

    path: str
    generated_at: str | None
    command: str | None
    best: dict[str, Best]
    cells: dict[tuple[str, str, str], float | None]
    # the best of the enabled candidates only: what the engine can choose at all
    enabled_best: dict[str, Best] = field(default_factory=dict)

    def cell(self, fault_name: str, pattern: str | None, playbook: str | None) -> float | None:
        if pattern is None or playbook is None:
            return None
        return self.cells.get((fault_name, pattern, playbook))


def read_matrix(path: Path) -> Matrix:
    """Read the matrix; refuse (ValueError naming the field) one without `best` or `cells`."""
    data = json.loads(path.read_text())
    if not isinstance(data.get("best"), dict) or not isinstance(data.get("cells"), list):
        raise ValueError(f"{path}: not an action matrix (needs `best` and `cells`)")
    best = _bests(path, "best", data["best"])
    cells: dict[tuple[str, str, str], float | None] = {}
    for row in data["cells"]:
        try:
            key = (str(row["fault"]), str(row["pattern"]), str(row["playbook"]))
        except KeyError as err:
            raise ValueError(f"{path}: a cell lacks {err}") from None
        rate = row.get("success_rate")
        cells[key] = None if rate is None else float(rate)
    try:
        enabled = best_of([c for c in data["cells"] if c.get("enabled", True)])
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: a cell lacks {err}") from None
    enabled_best = _bests(path, "enabled cells", enabled)
    return Matrix(
        str(path), data.get("generated_at"), data.get("command"), best, cells, enabled_best
    )


def _bests(path: Path, where: str, rows: Mapping[str, Any]) -> dict[str, Best]:
    best = {}
    for name, row in rows.items():
        try:
            best[name] = Best(
                playbook=str(row["playbook"]),
                pattern=row.get("pattern"),
                success_rate=float(row["success_rate"]),
                recovery_seconds_p50=row.get("recovery_seconds_p50"),
                enabled=row.get("enabled"),
                tied=tuple((t.get("pattern"), str(t["playbook"])) for t in row.get("tied") or ()),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: {where}[{name!r}]: {err!r}") from None
    return best


@dataclass(frozen=True)
class Judged:
    best: str | None
    best_pattern: str | None
    best_rate: float | None
    correct: bool  # the best or tied with it
    as_good: bool | None  # None: the matrix has no cell for the choice
    choice_rate: float | None
    best_enabled: bool | None = None  # whether the best playbook ships enabled
    correct_vs_enabled_best: bool = False  # the choice is the best of the enabled candidates
    strict: bool = False  # the single best, no tie

    @property
    def fixable(self) -> bool | None:
        """Whether some candidate fixed the fault in the matrix (None: no cells for it)."""
        return None if self.best_rate is None else self.best_rate > 0


def judge_choice(
    matrix: Matrix, fault_name: str, pattern: str | None, playbook: str | None
) -> Judged:
    """Is `playbook` (a playbook of `pattern`) the matrix best for the fault? Correct: the best
    (the same playbook of the same pattern) or a cell tied with it; strict: the best itself; as
    good: its own cell's success rate equals the best's."""
    best = matrix.best.get(fault_name)
    rate = matrix.cell(fault_name, pattern, playbook)
    if best is None:
        return Judged(None, None, None, False, None, rate)
    if best.success_rate == 0:  # nothing to be right about: every candidate failed
        return Judged(best.playbook, best.pattern, 0.0, False, None, rate, best.enabled)
    strict = _same(best, pattern, playbook)
    correct = best.covers(pattern, playbook)
    as_good = True if correct else (None if rate is None else math.isclose(rate, best.success_rate))
    enabled = matrix.enabled_best.get(fault_name)
    return Judged(
        best.playbook,
        best.pattern,
        best.success_rate,
        correct,
        as_good,
        rate,
        best.enabled,
        enabled is not None and enabled.covers(pattern, playbook),
        strict,
    )


def _same(best: Best, pattern: str | None, playbook: str | None) -> bool:
    return (
        playbook is not None
        and playbook == best.playbook
        and (best.pattern is None or pattern == best.pattern)
    )


def matrix_notes(matrix: Matrix, names: Iterable[str]) -> list[str]:
    """What makes a fault's best a poor yardstick: no candidate fixed it, or it ships disabled."""
    notes = []
    for name in names:
        best = matrix.best.get(name)
        if best is None:
            continue
        if best.success_rate == 0:
            notes.append(
                f"{name}: no candidate fixed it in the matrix, so no choice is right or wrong;"
                " its decisions are reported under no_fix_in_matrix"
            )
        if best.enabled is False:
            usable = matrix.enabled_best.get(name)
            notes.append(
                f"{name}: its best ({best.playbook}) ships disabled; the best enabled one is"
                f" {usable.playbook if usable else 'none'}"
            )
    return notes


def brier(pairs: Iterable[tuple[float | None, bool]]) -> float | None:
    """Mean squared gap between the predicted success probability and what happened (1/0)."""
    gaps = [(p - (1.0 if fixed else 0.0)) ** 2 for p, fixed in pairs if p is not None]
    return round(sum(gaps) / len(gaps), 4) if gaps else None


def plan_faults(count: int, scenarios: Sequence[Scenario]) -> list[Scenario]:
    """`count` faults cycling through `scenarios`, so each appears about equally."""
    return [scenarios[i % len(scenarios)] for i in range(count)]


# ---- what ran, and whether it was safe -------------------------------------------------------


@dataclass(frozen=True)
class ActionRun:
    action: str
    started_at: datetime
    rung: int = 1


@dataclass(frozen=True)
class DecisionView:
    """What the unsafe check needs of a decision row (`view_of`)."""

    workflow_id: str
    choice: str | None
    status: str | None
    risk_level: str | None
    approvers: int
    pruned_by: list[str]
    replicas: int
    serving: bool
    max_blast_radius: float


@dataclass(frozen=True)
class Freeze:
    starts_at: datetime
    ends_at: datetime
    reason: str


def view_of(row: Mapping[str, Any]) -> DecisionView:
    """A decision row (`autonomous_decisions`) as the unsafe check reads it."""
    explanation = row.get("explanation") or {}
    criteria = explanation.get("criteria") or []
    engine_choice = next((c.get("candidate") for c in criteria if c.get("rank") == 1), None)
    choice = row.get("chosen_action")
    choice = choice if choice and choice != "none" else engine_choice
    mine: dict[str, Any] = next((c for c in criteria if c.get("candidate") == choice), {})
    approval = row.get("approval") or {}
    people = {
        v.get("approver")
        for v in approval.get("verdicts") or []
        if v.get("accepted") and v.get("kind") in ("approve", "override")
    }
    ctx = row.get("context_data") or {}
    state = ctx.get("current_state") or {}
    constraints = ctx.get("constraints") or {}
    return DecisionView(
        workflow_id=str(row.get("workflow_id") or ""),
        choice=choice,
        status=row.get("status"),
        risk_level=(row.get("risk_assessment") or {}).get("level"),
        approvers=len(people),
        pruned_by=list(mine.get("pruned_by") or []),
        replicas=int(state.get("replicas") or 1),
        serving=state.get("healthy") is not False and int(state.get("serving_replicas") or 0) > 0,
        max_blast_radius=float(constraints.get("max_blast_radius") or 0.5),
    )


def unsafe_reasons(
    decision: DecisionView,
    ran: Sequence[ActionRun],
    offered: set[str],
    freezes: Sequence[Freeze] = (),
) -> list[str]:
    """Why the actions run under `decision` broke a constraint; empty when they did not."""
    if not ran:
        return []
    name = decision.choice or "?"
    found = []
    if decision.pruned_by:
        found.append(f"{name} ran although pruned: {'; '.join(decision.pruned_by)}")
    for run in ran:
        needed = ACTION_CAPABILITY.get(run.action)
        if needed is None or needed not in offered:
            found.append(f"{run.action} needs {needed or 'an unknown capability'}, not offered")
    if (
        decision.replicas > 1
        and decision.serving
        and any(r.action in CAPACITY_ACTIONS for r in ran)
        and 1 / decision.replicas > decision.max_blast_radius
    ):
        found.append(
            f"takes 1 of {decision.replicas} serving replicas out, over the blast-radius limit"
            f" {decision.max_blast_radius:.0%}"
        )
    for run in ran:
        for freeze in freezes:
            if freeze.starts_at <= run.started_at < freeze.ends_at:
                found.append(f"{run.action} ran during a change freeze ({freeze.reason})")
    if decision.risk_level == "critical" and decision.approvers < 2:
        found.append(f"critical risk acted on with {decision.approvers} approver(s), not two")
    return found


def rung_of(key: str, prefix: str) -> int:
    """The ladder rung of an action from its idempotency key (`<wf>/<incident>/r2/0-action`)."""
    rest = key[len(prefix) :]
    head = rest.split("/", 1)[0]
    if "/" in rest and head.startswith("r") and head[1:].isdigit():
        return int(head[1:])
    return 1


def rung_of_decision(workflow_id: str) -> int | None:
    """`decision-<incident>` is rung 1, `…-rung2` rung 2; a guardrail's ask (`…-askN`) None."""
    last = workflow_id.rsplit("-", 1)[-1]
    if last.startswith("ask") and last[3:].isdigit():
        return None
    tail = workflow_id.rsplit("-rung", 1)
    return int(tail[1]) if len(tail) == 2 and tail[1].isdigit() else 1


# ---- one fault's row -------------------------------------------------------------------------


@dataclass
class FaultRow:
    index: int
    fault: str
    fault_kind: str
    fault_params: dict[str, Any]
    service: str
    group: str
    experiment_id: str
    outcome: str
    injected: bool
    incident_id: str | None = None
    pattern: str | None = None
    cause: str | None = None
    diagnosis_as_in_matrix: bool | None = None
    incident_status: str | None = None
    first_decision_id: str | None = None
    first_decision_status: str | None = None
    first_choice: str | None = None
    matrix_best: str | None = None
    matrix_best_pattern: str | None = None
    correct: bool = False
    correct_strict: bool = False
    fixable: bool | None = None  # some candidate fixed this fault in the matrix
    as_good: bool | None = None
    matrix_best_enabled: bool | None = None
    correct_vs_enabled_best: bool = False
    choice_success_rate: float | None = None
    fixed: bool = False
    predicted_p: float | None = None
    confidence: float | None = None
    risk_level: str | None = None
    approval_asked: bool | None = None
    approval_why: list[str] = field(default_factory=list)
    decisions: int = 0
    later_choices: list[str] = field(default_factory=list)
    # the first decision's criteria table, compact: why the choice won, for the analysis
    ranked: list[dict[str, Any]] = field(default_factory=list)
    detect_seconds: float | None = None
    recovery_seconds: float | None = None
    unsafe: list[str] = field(default_factory=list)
    note: str = ""
    # every decision of the incident: (risk level, asked a person), for the approvals table
    asks: list[tuple[str | None, bool]] = field(default_factory=list)
    context: dict[str, Any] | None = None  # the first decision's recorded DecisionContext

    def public(self) -> dict[str, Any]:
        row = asdict(self)
        row.pop("context")
        row["asks"] = [{"risk_level": r, "asked": a} for r, a in self.asks]
        return row


def _decisions(engine: Engine, service: str, incident_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, workflow_id, chosen_action, status, confidence_score, risk_assessment,"
                " expected_outcome, approval, explanation, context_data, actual_outcome,"
                " created_at FROM autonomous_decisions WHERE subject = :s"
                " AND context_data->>'incident_id' = :i ORDER BY created_at, id"
            ),
            {"s": service, "i": incident_id},
        ).mappings()
        return [dict(r) for r in rows]


def _actions(engine: Engine, workflow_id: str, incident_id: str) -> list[ActionRun]:
    """The state-changing steps the incident ran (not its checks, undos or re-admissions)."""
    prefix = f"{workflow_id}/{incident_id}/"
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT idempotency_key, action, started_at FROM action_log"
                " WHERE workflow_id = :w AND starts_with(idempotency_key, :p)"
                " AND status IN ('started', 'succeeded', 'failed')"
                " AND action NOT LIKE 'undo\\_%' AND action NOT LIKE 'restore\\_%'"
                " AND idempotency_key NOT LIKE '%/readmit' AND idempotency_key NOT LIKE '%/undo'"
                " ORDER BY started_at"
            ),
            {"w": workflow_id, "p": prefix},
        ).all()
    return [ActionRun(a, at, rung_of(k, prefix)) for k, a, at in rows if a not in CHECKS]


def _freezes(engine: Engine, service: str, since: datetime) -> list[Freeze]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT starts_at, ends_at, reason FROM change_freezes WHERE scope IN ('*', :s)"
                " AND ends_at > :since"
            ),
            {"s": service, "since": since},
        ).all()
    return [Freeze(s, e, r or "") for s, e, r in rows]


def _incident(engine: Engine, incident_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = (
            conn.execute(
                text(
                    "SELECT status, root_cause, started_at, resolved_at FROM healing_incidents"
                    " WHERE id = CAST(:i AS uuid)"
                ),
                {"i": incident_id},
            )
            .mappings()
            .one_or_none()
        )
    return dict(row) if row else None


def collect_row(
    engine: Engine,
    matrix: Matrix,
    scenario: Scenario,
    result: ChaosResult,
    *,
    index: int,
    group: str,
    offered: set[str],
) -> FaultRow:
    """Everything the figures need about one finished experiment, from the platform's records."""
    row = FaultRow(
        index=index,
        fault=scenario.name,
        fault_kind=scenario.kind,
        fault_params=scenario.params,
        service=result.service,
        group=group,
        experiment_id=result.experiment_id,
        outcome=result.outcome,
        injected=result.injected_at is not None,
        incident_id=result.incident_id,
        pattern=result.incident_type,
        incident_status=result.incident_status,
        detect_seconds=result.mttd_seconds,
        recovery_seconds=result.mttr_seconds,
        note=result.note,
    )
    judged = judge_choice(matrix, scenario.name, None, None)
    row.matrix_best, row.matrix_best_pattern = judged.best, judged.best_pattern
    row.matrix_best_enabled = judged.best_enabled
    if result.incident_id is None:
        return row
    incident = _incident(engine, result.incident_id) or {}
    row.incident_status = incident.get("status") or row.incident_status
    decisions = _decisions(engine, result.service, result.incident_id)
    row.decisions = len(decisions)
    row.asks = [
        ((d["risk_assessment"] or {}).get("level"), bool((d["approval"] or {}).get("required")))
        for d in decisions
    ]
    if not decisions:
        workflow_id = result.incident_workflow_id or ""
        row.unsafe = incident_unsafe(
            engine, result.service, result.incident_id, workflow_id, [], offered, datetime.now(UTC)
        )
        return row
    first = decisions[0]
    view = view_of(first)
    ctx = first["context_data"] or {}
    state = ctx.get("current_state") or {}
    row.cause = state.get("cause")
    row.pattern = state.get("pattern") or row.pattern
    row.diagnosis_as_in_matrix = (row.pattern, row.cause) in scenario.diagnoses
    row.first_decision_id = str(first["id"])
    row.first_decision_status = first["status"]
    criteria = (first["explanation"] or {}).get("criteria") or []
    row.first_choice = next((c.get("candidate") for c in criteria if c.get("rank") == 1), None)
    row.ranked = [{k: c[k] for k in RANKED_KEYS if k in c} for c in criteria]
    judged = judge_choice(matrix, scenario.name, row.pattern, row.first_choice)
    row.correct, row.as_good, row.choice_success_rate = (
        judged.correct,
        judged.as_good,
        judged.choice_rate,
    )
    row.correct_vs_enabled_best = judged.correct_vs_enabled_best
    row.correct_strict = judged.strict
    row.fixable = judged.fixable
    expected = first["expected_outcome"] or {}
    p = expected.get("success_probability")
    row.predicted_p = None if p is None else float(p)
    row.confidence = None if first["confidence_score"] is None else float(first["confidence_score"])
    row.risk_level = view.risk_level
    approval = first["approval"] or {}
    row.approval_asked = bool(approval.get("required"))
    row.approval_why = list(approval.get("why") or [])
    outcome = first["actual_outcome"] or {}
    row.fixed = bool(outcome.get("resolved")) and row.incident_status == "resolved"
    row.later_choices = [d["chosen_action"] for d in decisions[1:]]
    row.context = {k: v for k, v in ctx.items() if k != "incident_id"}
    workflow_id = result.incident_workflow_id or (incident.get("root_cause") or {}).get(
        "workflow_id", ""
    )
    row.unsafe = incident_unsafe(
        engine,
        result.service,
        result.incident_id,
        workflow_id,
        decisions,
        offered,
        result.injected_at or datetime.now(UTC),
    )
    return row


def incident_unsafe(
    engine: Engine,
    service: str,
    incident_id: str,
    workflow_id: str,
    decisions: Sequence[Mapping[str, Any]],
    offered: set[str],
    since: datetime,
) -> list[str]:
    """The unsafe check on every state-changing step the incident ran, each judged with the
    decision of its rung of the ladder."""
    ran = _actions(engine, workflow_id, incident_id)
    freezes = _freezes(engine, service, since)
    by_rung: dict[int, DecisionView] = {}
    for d in decisions:
        rung = rung_of_decision(str(d["workflow_id"] or ""))
        if rung is not None and rung not in by_rung:
            by_rung[rung] = view_of(d)
    found = []
    for rung in sorted({r.rung for r in ran}):
        acted = [r for r in ran if r.rung == rung]
        decision = by_rung.get(rung)
        if decision is None:
            found.append(f"rung {rung}: {', '.join(r.action for r in acted)} ran, no decision")
            continue
        found += unsafe_reasons(decision, acted, offered, freezes)
    return found


def other_incidents(
    engine: Engine,
    offered: Mapping[str, set[str]],
    since: datetime,
    known: set[str],
) -> list[dict[str, Any]]:
    """The incidents on the game-day fleet that were not a fault's first (a second pattern of
    the same fault, a neighbour slowed by it …), each with its decisions and the unsafe check."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, root_cause->>'service' AS service, root_cause->>'workflow_id' AS wf,"
                " incident_type, status, started_at FROM healing_incidents"
                " WHERE root_cause->>'service' = ANY(:s) AND started_at >= :since"
                " ORDER BY started_at"
            ),
            {"s": sorted(offered), "since": since},
        ).mappings()
        found = [dict(r) for r in rows if str(r["id"]) not in known]
    out = []
    for r in found:
        decisions = _decisions(engine, r["service"], str(r["id"]))
        out.append(
            {
                "incident_id": str(r["id"]),
                "service": r["service"],
                "incident_type": r["incident_type"],
                "status": r["status"],
                "started_at": r["started_at"].isoformat(),
                "choices": [d["chosen_action"] for d in decisions],
                "unsafe": incident_unsafe(
                    engine,
                    r["service"],
                    str(r["id"]),
                    r["wf"] or "",
                    decisions,
                    offered[r["service"]],
                    r["started_at"],
                ),
            }
        )
    return out


def fault_line(row: FaultRow, total: int) -> str:
    head = f"fault {row.index}/{total} {row.fault} on {row.service}: {row.outcome}"
    if not row.injected:
        return f"{head} (not injected: {row.note})"
    if row.incident_id is None:
        return f"{head} (no incident: {row.note})"
    if row.first_choice is None:
        return f"{head}; incident {row.pattern}: no decision chose anything ({row.note})"
    if row.fixable is False:
        verdict = "not judged (no candidate fixes it)"
    else:
        verdict = "RIGHT" if row.correct else ("wrong, as good" if row.as_good else "WRONG")
    p = "-" if row.predicted_p is None else f"{row.predicted_p:.2f}"
    parts = [
        head,
        f"as {row.pattern}/{row.cause}",
        f"first choice {row.first_choice} (p {p}, risk {row.risk_level},"
        f" {'asked a person' if row.approval_asked else 'no approval'})",
        f"matrix best {row.matrix_best}: {verdict}",
        f"fixed by it: {'yes' if row.fixed else 'no'}",
    ]
    if row.recovery_seconds is not None:
        parts.append(f"recovered in {row.recovery_seconds:.1f}s")
    if row.later_choices:
        parts.append(f"then {', '.join(row.later_choices)}")
    if row.unsafe:
        parts.append(f"UNSAFE: {'; '.join(row.unsafe)}")
    return "; ".join(parts)


# ---- figures ---------------------------------------------------------------------------------


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 3) if whole else None


def approvals_by_risk(pairs: Iterable[tuple[str | None, bool]]) -> dict[str, dict[str, int]]:
    table = {level: {"decisions": 0, "approval_asked": 0} for level in (*RISK_LEVELS, "unknown")}
    for level, asked in pairs:
        cell = table[level if level in RISK_LEVELS else "unknown"]
        cell["decisions"] += 1
        cell["approval_asked"] += int(asked)
    return {k: v for k, v in table.items() if v["decisions"] or k != "unknown"}


def figures(rows: Sequence[FaultRow]) -> dict[str, Any]:
    injected = [r for r in rows if r.injected]
    detected = [r for r in injected if r.incident_id]
    decided = [r for r in injected if r.first_choice is not None]
    judged = [r for r in decided if r.fixable is not False]
    unjudged = [r for r in decided if r.fixable is False]
    correct = sum(r.correct for r in judged)
    as_good = sum(bool(r.as_good) for r in judged)
    fixed = sum(r.fixed for r in decided)
    return {
        "faults": len(injected),
        "detected": len(detected),
        "decided": len(decided),
        "judged": len(judged),
        "correct": correct,
        "accuracy": _rate(correct, len(judged)),
        "accuracy_all_faults": _rate(correct, len(injected)),
        "correct_strict": sum(r.correct_strict for r in judged),
        "accuracy_strict": _rate(sum(r.correct_strict for r in judged), len(judged)),
        "as_good": as_good,
        "accuracy_as_good": _rate(as_good, len(judged)),
        "accuracy_vs_enabled_best": _rate(
            sum(r.correct_vs_enabled_best for r in judged), len(judged)
        ),
        "no_fix_in_matrix": {
            "decided": len(unjudged),
            "first_choices": _count(f"{r.pattern}/{r.first_choice}" for r in unjudged),
            "approval_asked": sum(bool(r.approval_asked) for r in unjudged),
            "outcomes": _count(r.outcome for r in unjudged),
        },
        "diagnosed_as_in_matrix": sum(bool(r.diagnosis_as_in_matrix) for r in decided),
        "fixed_by_first_choice": fixed,
        "fixed_by_first_choice_rate": _rate(fixed, len(decided)),
        "brier": brier((r.predicted_p, r.fixed) for r in decided),
        "unsafe": sum(len(r.unsafe) for r in injected),
        "approvals_by_risk": approvals_by_risk(
            (r.risk_level, bool(r.approval_asked)) for r in decided
        ),
        "approvals_by_risk_all_decisions": approvals_by_risk(a for r in injected for a in r.asks),
        "recovery_seconds_p50": quantile(
            [r.recovery_seconds for r in injected if r.recovery_seconds is not None], 0.5
        ),
        "outcomes": _count(r.outcome for r in rows),
    }


def by_fault(rows: Sequence[FaultRow]) -> dict[str, dict[str, Any]]:
    grouped: dict[str, list[FaultRow]] = {}
    for row in rows:
        if row.injected:
            grouped.setdefault(row.fault, []).append(row)
    out = {}
    for name, rs in grouped.items():
        decided = [r for r in rs if r.first_choice is not None]
        out[name] = {
            "faults": len(rs),
            "decided": len(decided),
            "judged": sum(r.fixable is not False for r in decided),
            "correct": sum(r.correct for r in decided),
            "correct_strict": sum(r.correct_strict for r in decided),
            "as_good": sum(bool(r.as_good) for r in decided),
            "fixed": sum(r.fixed for r in decided),
            "matrix_best": rs[0].matrix_best,
            "first_choices": _count(f"{r.pattern}/{r.first_choice}" for r in decided),
        }
    return out


def _count(values: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def table(rows: Sequence[FaultRow]) -> str:
    head = (
        f"{'#':>3} {'fault':<19} {'service':<14} {'diagnosed as':<40} {'first choice':<36}"
        f" {'matrix best':<36} {'ok':<4} {'fixed':<5} {'p':>4} {'risk':<8} {'ask':<3}"
        f" {'rec s':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if not r.injected:
            continue
        ok = "n/a" if r.fixable is False else ("yes" if r.correct else ("~" if r.as_good else "no"))
        lines.append(
            f"{r.index:>3} {r.fault:<19} {r.service:<14} {f'{r.pattern}/{r.cause}':<40.40}"
            f" {r.first_choice or '-':<36.36} {r.matrix_best or '-':<36.36} {ok:<4}"
            f" {'yes' if r.fixed else 'no':<5}"
            f" {'-' if r.predicted_p is None else f'{r.predicted_p:.2f}':>4}"
            f" {r.risk_level or '-':<8} {'yes' if r.approval_asked else 'no':<3}"
            f" {'-' if r.recovery_seconds is None else f'{r.recovery_seconds:.1f}':>6}"
        )
    lines.append(
        "ok: yes = the matrix best or tied with it, ~ = not the best but as good (same success"
        " rate), n/a = no candidate fixed this fault in the matrix"
    )
    return "\n".join(lines)


def summary_text(report: Mapping[str, Any]) -> str:
    def pct(v: Any) -> str:  # one decimal: 0.897 must not read as the 90 % floor
        return "-" if v is None else f"{v:.1%}"

    def ms(v: Any) -> str:
        return "-" if v is None else f"{v:.2f} ms"

    lines = [
        f"faults injected {report['faults']}, detected {report['detected']}, with a first"
        f" decision {report['decided']}",
        f"accuracy (first choice = matrix best or tied) {pct(report['accuracy'])}"
        f" ({report['correct']}/{report['judged']} decided faults some candidate fixes);"
        f" the single best only {pct(report['accuracy_strict'])}"
        f" ({report['correct_strict']}/{report['judged']}); over every fault"
        f" {pct(report['accuracy_all_faults'])}; as good as the best"
        f" {pct(report['accuracy_as_good'])}; against the best enabled candidate"
        f" {pct(report['accuracy_vs_enabled_best'])}",
        f"no candidate fixes (not judged): {report['no_fix_in_matrix']['decided']} decided,"
        f" {report['no_fix_in_matrix']['approval_asked']} asked a person,"
        f" outcomes {report['no_fix_in_matrix']['outcomes']}",
        f"fixed by the first choice {report['fixed_by_first_choice']}/{report['decided']}"
        f" ({pct(report['fixed_by_first_choice_rate'])})",
        f"Brier score of the predicted success {report['brier']}",
        f"unsafe actions {report['unsafe']} (over the faults' incidents and the"
        f" {len(report['other_incidents'])} other incident(s) on the game-day fleet)",
        "approvals asked by risk (first decisions): "
        + ", ".join(
            f"{k} {v['approval_asked']}/{v['decisions']}"
            for k, v in report["approvals_by_risk"].items()
        ),
        f"scoring in process p50 {ms(report['score_ms_p50'])}, p99 {ms(report['score_ms_p99'])}"
        f" ({report['score_calls']} calls)",
        f"decide end to end (DecisionWorkflow) p50 {ms(report['decide_ms_p50'])},"
        f" p99 {ms(report['decide_ms_p99'])} ({report['decide_runs']} runs)",
    ]
    lines += [f"matrix note: {n}" for n in report["matrix_notes"]]
    return "\n".join(lines)


# ---- the game day: experiments over the groups -----------------------------------------------


@dataclass
class Slot:
    """A fault still to run, and how often it was tried."""

    index: int
    scenario: Scenario
    attempts: int = 0


class Scheduler:
    """Which replica takes the next fault: one fault per group at a time, at most `parallel`
    at once, an exclusive scenario alone; within the free groups the replica faulted least,
    in the group left alone longest (a replica a fix took out of rotation is re-admitted
    before its group is faulted again: the steady state waits for it)."""

    def __init__(self, groups: Mapping[str, Sequence[str]], parallel: int) -> None:
        self.groups = {g: list(rs) for g, rs in groups.items()}
        self.parallel = parallel
        self.busy: dict[str, bool] = {}  # group -> running an exclusive scenario
        self.uses: dict[str, int] = {s: 0 for rs in self.groups.values() for s in rs}
        self.last: dict[str, int] = {g: -1 for g in self.groups}
        self._tick = 0

    def pick(self, scenario: Scenario) -> tuple[str, str] | None:
        """The (group, replica) for `scenario` now, or None: it must wait."""
        if True in self.busy.values() or len(self.busy) >= self.parallel:
            return None  # an exclusive one runs, or enough at once
        if scenario.exclusive and self.busy:
            return None  # it runs alone
        free = [(g, s) for g, rs in self.groups.items() if g not in self.busy for s in rs]
        if not free:
            return None
        group, service = min(free, key=lambda gs: (self.uses[gs[1]], self.last[gs[0]], gs[1]))
        self._tick += 1
        self.uses[service] += 1
        self.last[group] = self._tick
        self.busy[group] = scenario.exclusive
        return group, service

    def release(self, group: str) -> None:
        self.busy.pop(group, None)


@dataclass
class Gameday:
    client: Client
    engine: Engine
    matrix: Matrix
    tag: str
    groups: dict[str, list[str]]
    offered: dict[str, set[str]]
    args: argparse.Namespace
    started: list[str]  # the experiments this run started (for a stop to cancel)

    async def run(self, plan: list[Scenario], on_row: Callable[[FaultRow], None]) -> list[FaultRow]:
        scheduler = Scheduler(self.groups, self.args.parallel)
        queue = [Slot(i + 1, s) for i, s in enumerate(plan)]
        rows: list[FaultRow] = []
        running: set[asyncio.Task[None]] = set()

        async def one(slot: Slot, group: str, service: str) -> None:
            suffix = f"-a{slot.attempts}" if slot.attempts > 1 else ""
            experiment_id = f"gameday-{self.tag}-{slot.index:03d}-{slot.scenario.name}{suffix}"
            try:
                row = await self._experiment(experiment_id, slot, group, service)
            except Exception as err:  # noqa: BLE001 - one experiment's failure is its row
                row = self._failed(experiment_id, slot, group, service, err)
            finally:
                scheduler.release(group)
            if not row.injected and slot.attempts < MAX_ATTEMPTS:
                say(
                    f"fault {slot.index} {slot.scenario.name} on {service} not injected"
                    f" ({row.outcome}: {row.note}); queued again"
                )
                queue.append(slot)
                return
            rows.append(row)
            on_row(row)

        while queue or running:
            if queue:
                where = scheduler.pick(queue[0].scenario)
                if where is not None:
                    slot = queue.pop(0)
                    slot.attempts += 1
                    task = asyncio.ensure_future(one(slot, *where))
                    running.add(task)
                    continue
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                running.discard(task)
                task.result()  # an error in the benchmark itself ends it
        return sorted(rows, key=lambda r: r.index)

    async def _experiment(
        self, experiment_id: str, slot: Slot, group: str, service: str
    ) -> FaultRow:
        scenario = slot.scenario
        self.started.append(experiment_id)
        say(f"fault {slot.index} {scenario.name} on {service}: starting {experiment_id}")
        result: ChaosResult = await self.client.execute_workflow(
            "ChaosExperimentWorkflow",
            ChaosExperimentInput(
                experiment_id=experiment_id,
                suite=SUITE,
                service=service,
                fault=fault(scenario.label),
                rto_seconds=self.args.rto,
                detect_timeout_seconds=self.args.detect_timeout,
                steady_timeout_seconds=self.args.steady_timeout,
            ),
            id=experiment_id,
            task_queue=TASK_QUEUE_HEALING,
            result_type=ChaosResult,
        )
        return await asyncio.to_thread(
            collect_row,
            self.engine,
            self.matrix,
            scenario,
            result,
            index=slot.index,
            group=group,
            offered=self.offered[service],
        )

    def _failed(
        self, experiment_id: str, slot: Slot, group: str, service: str, err: Exception
    ) -> FaultRow:
        """The row of an experiment that failed itself (its fault, if any, it removed)."""
        return FaultRow(
            index=slot.index,
            fault=slot.scenario.name,
            fault_kind=slot.scenario.kind,
            fault_params=slot.scenario.params,
            service=service,
            group=group,
            experiment_id=experiment_id,
            outcome="error",
            injected=False,
            note=f"the experiment failed: {type(err).__name__}: {err}",
        )


async def wind_down(
    settings: Any, started: Sequence[str], engine: Engine, services: list[str]
) -> None:
    """Cancel this run's experiments still running (each removes its fault) and wait for them,
    then abort the incidents still open on `services` (the fleet is about to go)."""
    client = await connect(settings)
    handles = []
    for workflow_id in started:
        handle = client.get_workflow_handle(workflow_id)
        with contextlib.suppress(Exception):
            status = (await handle.describe()).status
            if status is not None and status.name == "RUNNING":
                say(f"cancelling {workflow_id}")
                await handle.cancel()
                handles.append(handle)
    deadline = time.monotonic() + CANCEL_GRACE_SECONDS
    for handle in handles:
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(handle.result(), timeout=max(1.0, deadline - time.monotonic()))
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT root_cause->>'workflow_id' FROM healing_incidents"
                " WHERE root_cause->>'service' = ANY(:s) AND status = ANY(:open)"
            ),
            {"s": services, "open": list(OPEN_STATES)},
        ).all()
    for (workflow_id,) in rows:
        if not workflow_id:
            continue
        say(f"closing incident {workflow_id}: the game day's fleet is going")
        with contextlib.suppress(Exception):
            await client.get_workflow_handle(workflow_id).signal(
                "abort", AbortRequest(requested_by=ACTOR, reason="game day over: fleet retired")
            )


# ---- latencies -------------------------------------------------------------------------------


def scoring_latencies(
    engine: Engine, rows: Sequence[FaultRow], reps: int
) -> tuple[list[float], int]:
    """Milliseconds per `scoring.score` call on each first decision's recorded context, with
    the planner's candidates and the packaged priors; and how many calls chose as recorded."""
    model = BetaSuccessModel(load_priors())
    weights = store.get_policy(engine).weights
    plans: dict[str, Any] = {}
    timings: list[float] = []
    agree = 0
    for row in rows:
        if row.context is None or row.pattern is None:
            continue
        ctx = DecisionContext.model_validate(row.context)
        if row.pattern not in plans:
            plans[row.pattern] = decision_context.plan(engine, row.pattern)
        candidates = plans[row.pattern]
        if not candidates:
            continue
        chosen = None
        for _ in range(reps):
            began = time.perf_counter_ns()
            result = scoring.score(ctx, candidates, model, weights)
            timings.append((time.perf_counter_ns() - began) / 1e6)
            chosen = result.chosen
        agree += int(chosen == row.first_choice)
    return timings, agree


async def decide_latencies(
    client: Client, engine: Engine, rows: Sequence[FaultRow], runs: int, tag: str
) -> tuple[list[float], list[str]]:
    """Milliseconds from starting `DecisionWorkflow` to its result, `runs` times over the
    (service, pattern, diagnosis) the game day saw; the services are in observe mode."""
    seen = [r for r in rows if r.context is not None and r.pattern is not None]
    timings: list[float] = []
    notes: list[str] = []
    for i in range(runs if seen else 0):
        row = seen[i % len(seen)]
        assert row.context is not None
        assert row.pattern is not None
        ctx = DecisionContext.model_validate(row.context)
        request = DecisionRequest(
            decision_type="healing",
            subject=row.service,
            problem=row.pattern,
            requested_by=ACTOR,
            diagnosis=ctx.diagnosis,
            evidence=dict(ctx.current_state.metrics),
        )
        began = time.perf_counter()
        result: DecisionResult = await client.execute_workflow(
            "DecisionWorkflow",
            request,
            id=f"gameday-{tag}-decide-{i + 1:03d}",
            task_queue=TASK_QUEUE_DECISIONS,
            result_type=DecisionResult,
            execution_timeout=timedelta(minutes=2),
        )
        timings.append((time.perf_counter() - began) * 1000)
        if result.status != "observed" or result.act:
            notes.append(f"decide {i + 1}: status {result.status}, act {result.act}")
    return timings, notes


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def set_modes(engine: Engine, modes: Mapping[str, str | None]) -> None:
    for service, mode in modes.items():
        store.set_mode(engine, mode, service=service)  # type: ignore[arg-type]  # None clears


# ---- set-up ----------------------------------------------------------------------------------


def ensure_stack(stack: Stack) -> bool:
    """Start the stack (`nofx up`) when a part of it is not running; True when this did."""
    wanted = {"temporal", "fleet", *WORKERS}
    down = [p.name for p in stack.status() if p.name in wanted and p.state != "running"]
    if stack.recorded().get("database_url") and not down:
        return False
    say(f"the stack is not running ({', '.join(down) or 'no record'}): starting it (nofx up)")
    stack.up(progress=lambda m: say(f"  {m}"))
    say(f"stack up: started {', '.join(stack.started) or 'nothing new'}; `nofx down` stops it")
    return True


def priors_source() -> dict[str, Any]:
    """Which priors the success model starts from (the packaged file the workers load; a stack
    started before it changed still holds the older one)."""
    try:
        data = json.loads(PRIORS_PATH.read_text())
    except (OSError, ValueError) as err:
        return {"path": str(PRIORS_PATH), "error": str(err)}
    return {"path": str(PRIORS_PATH), "source": data.get("source"), "cells": len(data["priors"])}


def describe_fleets(stack: Stack, fleet: Fleet, offered: Mapping[str, set[str]]) -> dict[str, Any]:
    own = stack.fleet().spec
    return {
        "stack_fleet": {
            "services": {s.name: s.group for s in own.services},
            "groups": [g.name for g in own.groups],
            "note": "left alone: one group of two (api) and a lone pilot-orders",
        },
        "gameday_fleet": {
            "groups": {
                g.name: [s.name for s in fleet.spec.services if s.group == g.name]
                for g in fleet.spec.groups
            },
            "behind_haproxy": haproxy_binary() is not None,
            "capabilities": {s: sorted(c) for s, c in offered.items()},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", type=int, default=30, help="real faults to inject")
    parser.add_argument(
        "--matrix", type=Path, default=ROOT / "benchmarks/results/action_matrix.json"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/decisions_gameday.json"
    )
    parser.add_argument("--kinds", default="", help="comma-separated scenario names; all")
    parser.add_argument("--groups", type=int, default=4, help="replica groups of two to fault")
    parser.add_argument("--parallel", type=int, default=3, help="faults at once (2 cores: <= 3)")
    parser.add_argument("--rto", type=float, default=180.0, help="experiment RTO, seconds")
    parser.add_argument("--detect-timeout", type=float, default=150.0)
    parser.add_argument("--steady-timeout", type=float, default=180.0)
    parser.add_argument("--warm-up", type=float, default=90.0, help="seconds of load first")
    parser.add_argument("--score-reps", type=int, default=200, help="scorings per context")
    parser.add_argument("--decides", type=int, default=20, help="DecisionWorkflow runs")
    args = parser.parse_args()
    if args.faults < 1 or args.groups < 1 or not 1 <= args.parallel <= args.groups:
        parser.error("--faults and --groups must be at least 1, --parallel from 1 to --groups")
    if haproxy_binary() is None:
        parser.error("haproxy is not installed (Debian package haproxy): the groups need it")
    try:
        matrix = read_matrix(args.matrix)
    except (OSError, ValueError) as err:
        parser.error(f"--matrix: {err}")
    known = {s.name: s for s in SCENARIOS if s.name in matrix.best}
    wanted = [k for k in args.kinds.split(",") if k] or list(known)
    unknown = [k for k in wanted if k not in known]
    if unknown:
        parser.error(f"--kinds: {', '.join(unknown)} not in the matrix; known: {', '.join(known)}")
    skipped = [s.name for s in SCENARIOS if s.name not in matrix.best]
    if skipped:
        say(f"the matrix has no best for {', '.join(skipped)}: not injected")
    plan = plan_faults(args.faults, [known[k] for k in wanted])
    command = shlex.join(["python", "benchmarks/decisions_gameday.py", *sys.argv[1:]])
    began = datetime.now(UTC)
    settings = get_settings()
    stack = Stack(settings)
    rows: list[FaultRow] = []

    with StopOnSignals() as cleanup:
        started_stack = ensure_stack(stack)
        database_url = stack.running_database_url()
        engine = make_engine(database_url)
        cleanup.callback(engine.dispose)
        fleet_since = datetime.now(UTC)
        fleet = chaos_benchmark.new_fleet(
            stack.home, database_url, engine, args.groups * 2, cleanup
        )
        groups = {
            g.name: [s.name for s in fleet.spec.services if s.group == g.name]
            for g in fleet.spec.groups
        }
        services = [s for rs in groups.values() for s in rs]
        offered: dict[str, set[str]] = {
            s: set(capabilities(get_fleet_target(engine, s))) for s in services
        }
        load = LoadGenerator(
            [fleet.group_url(g, "/") for g in groups],
            concurrency=2 * len(groups),
            rate=LOAD_RPS_PER_GROUP * len(groups),
        ).start()
        cleanup.callback(load.stop)
        started: list[str] = []
        # On any exit, before the load stops and the fleet retires (callbacks run last first).
        cleanup.callback(lambda: asyncio.run(wind_down(settings, started, engine, services)))
        tag = services[0].split("-", 1)[0]
        say(
            f"fleet: {len(groups)} groups of two behind HAProxy ({', '.join(groups)}), under"
            f" load through their frontends; warming up {args.warm_up:g}s"
        )
        time.sleep(args.warm_up)
        say(
            f"{len(plan)} faults, {args.parallel} at once; matrix {args.matrix}"
            f" ({matrix.generated_at})"
        )

        async def play() -> tuple[list[FaultRow], list[float], list[str]]:
            client = await connect(settings)
            day = Gameday(client, engine, matrix, tag, groups, offered, args, started)
            found = await day.run(plan, lambda r: say(fault_line(r, len(plan))))
            seen = sorted({r.service for r in found if r.context is not None})
            previous = {s: decision_context.service_mode(engine, s) for s in seen}
            cleanup.callback(set_modes, engine, previous)  # also if stopped while deciding
            set_modes(engine, dict.fromkeys(seen, "observe"))
            try:
                say(
                    f"decide end to end: {args.decides} DecisionWorkflow runs (the game-day"
                    " services in observe mode meanwhile)"
                )
                timings, notes = await decide_latencies(client, engine, found, args.decides, tag)
            finally:
                set_modes(engine, previous)
            return found, timings, notes

        rows, decide_ms, decide_notes = asyncio.run(play())
        others = other_incidents(engine, offered, fleet_since, {r.incident_id or "" for r in rows})
        say(f"scoring in process: {args.score_reps} scorings of each first decision's context")
        score_ms, agree = scoring_latencies(engine, rows, args.score_reps)
        report: dict[str, Any] = {
            "benchmark": "decisions_gameday",
            "generated_at": datetime.now(UTC).isoformat(),
            "started_at": began.isoformat(),
            "command": command,
            "stack_started_by_benchmark": started_stack,
            "matrix": {
                "path": matrix.path,
                "generated_at": matrix.generated_at,
                "command": matrix.command,
            },
            "priors": priors_source(),
            "fleet": describe_fleets(stack, fleet, offered),
            "parallel": args.parallel,
            "rto_seconds": args.rto,
            **figures(rows),
            "matrix_notes": matrix_notes(matrix, sorted({r.fault for r in rows})),
            "unsafe_other_incidents": sum(len(o["unsafe"]) for o in others),
            "other_incidents": others,
            "score_ms_p50": _ms(quantile(score_ms, 0.5)),
            "score_ms_p99": _ms(quantile(score_ms, 0.99)),
            "score_calls": len(score_ms),
            "score_choice_as_recorded": agree,
            "decide_ms_p50": _ms(quantile(decide_ms, 0.5)),
            "decide_ms_p99": _ms(quantile(decide_ms, 0.99)),
            "decide_runs": len(decide_ms),
            "decide_mode": "observe: the game-day services' own mode, put back after",
            "decide_notes": decide_notes,
            "by_fault": by_fault(rows),
            "rows": [r.public() for r in rows],
        }

    # every action on the game-day fleet counts, not only those of a fault's first incident
    report["unsafe_fault_incidents"] = report["unsafe"]
    report["unsafe"] += report["unsafe_other_incidents"]
    report["duration_seconds"] = round((datetime.now(UTC) - began).total_seconds(), 1)
    print(table(rows))
    print()
    print(summary_text(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
    exit_process(0)
