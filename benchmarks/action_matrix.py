"""Which candidate playbook actually fixes which fault: every pilot fault against every candidate.

    python benchmarks/action_matrix.py --runs 2 --rto 90 [--hold 60] [--faults kill,hang]
        [--out F.json] [--priors nofx/decisions/action_priors.json] [--database-url URL]
        [--lanes 4]

The benchmark builds everything it uses: a platform database of its own (a scratch database on
`--database-url`, else `NOFX_TEST_DATABASE_URL`, else an embedded pgserver; migrations applied),
a fleet of `--lanes` replica groups of two behind the fleet's HAProxy (so the traffic actions
apply), registered in that database's inventory, each group under steady load through its
frontend. No platform workers run: nothing decides and no guardrail waits.

For each fault scenario, each candidate playbook (`recovery_playbooks`) of the patterns the
fault can be diagnosed as — the ones shipped disabled too, marked so, to show whether they would
fix it — `--runs` times, on the first replica of a group: check the steady
state, inject the fault for real, wait until the judge sees it, apply the candidate's
state-changing steps directly through the platform's own action code (nofx.healing.actions'
capture/perform, the supervisord provider's restart — what the activities call; the validate_*
steps are left to the judge), then judge the steady state until the RTO, record the outcome and
its side effects, and restore: undo the traffic and disk actions from their captured prior
state, clear the fault (`Fleet.clear`), put the pre-fault configuration back and wait for the
steady state again.

The judge is one configuration for every fault, and its steady state is the replica itself
fixed and back in service: the replica answers /health; it is in rotation (its HAProxy admin
state is ready and its weight above 0 — a lowered weight still serves, drain, maintenance or
weight 0 do not); a round of 20 real requests straight to the replica's own endpoint and one
through what its users reach (the group's frontend) each come back with at most 5% errors, p95
within `JUDGE.max_p95_ms` and no stale cache read (nofx.healing.probes, the code of
`validate_requests`); the replica's resident memory and data directory are no more than
`RESOURCE_MARGIN_MIB` above what they were before the fault. So a mitigation that leaves the
replica out of rotation (drain, weight 0) is not a recovery, however well the frontend answers
on the other replica: the replica is still broken, or at best idle, and the group runs at half
capacity. Neither is a postponement: a run succeeds when the judge passes for `--hold` seconds
in a row (default `HOLD_SECONDS`, long enough for a leak that a bigger pool only delays to come
back), the streak beginning within the RTO of the candidate's first step; its recovery time is
from that first step to the streak's first passing round. A run whose action is refused or whose
fault cannot be injected is a failed run with its error.

Scenarios run on `--lanes` groups at once (each scenario's runs in order on one group). Prints a
line per run (stderr) and the matrix; writes the matrix to `--out` and, with `--priors`, the
success counts per (pattern, cause, playbook) the decision engine starts from. The best action
of a fault is the highest success rate, ties broken by the lower mean recovery time (the
expected time to recover, which the engine's criterion estimates; the nearest-rank p50 of two
runs is the faster run and would hide a slow one). Recovery times come from judge rounds a
second apart, so candidates of the best success rate whose mean recovery times differ by less
than a round (`RESOLUTION_SECONDS`) are measured as equally fast: the matrix lists them all as
the fault's `tied` best, the fastest first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import pgserver
import redis
from sqlalchemy import text
from sqlalchemy.engine import Engine

from activities.store import get_fleet_target
from models.actions import ACTION_CAPABILITY, ACTION_PARAMS, CHECKS, ValidateRequestsParams
from models.healing import FleetTarget, PlaybookStep
from nofx import faults
from nofx.chaos import FAULT_PARAMS, quantile
from nofx.db import make_engine, migrate, scratch_database
from nofx.healing.actions import ACTIONS, Action, ActionContext, capabilities
from nofx.healing.probes import check_health, request_round
from nofx.inventory import register_fleet, unregister
from nofx.providers.config import ConfigError, ConfigStore
from nofx.providers.haproxy import HAProxyError, HAProxyRuntime, UnknownServerError
from nofx.providers.supervisor import SupervisorProvider
from pilot.config import cache_prefix, config_path, read_config
from pilot.fleet import Fleet, FleetError, FleetSpec, GroupSpec, ServiceSpec, free_port
from pilot.haproxy import haproxy_binary
from pilot.load import LoadGenerator, LoadStats

ROOT = Path(__file__).resolve().parent.parent
ACTOR = "benchmark:action-matrix"
MIB = 1024 * 1024

# The judge: one configuration for every fault (module doc).
JUDGE = ValidateRequestsParams(
    requests=20, max_error_ratio=0.05, max_p95_ms=200, fresh_cache=True, request_timeout_seconds=2
)
HEALTH_TIMEOUT_SECONDS = 2.0
RESOURCE_MARGIN_MIB = 32
HOLD_SECONDS = 60.0  # the default of --hold
ROUND_SECONDS = 1.0
# A recovery time is the start of the first passing judge round, so the judge knows it only to
# within a round: mean recovery times closer than this are a tie (best_of's `tied`).
RESOLUTION_SECONDS = ROUND_SECONDS
# Deadlines around a run: the fault must show within EFFECT_SECONDS of its injection; the steady
# state must hold STEADY_ROUNDS rounds in a row within STEADY_SECONDS before a run and after it.
EFFECT_SECONDS = 60.0
STEADY_SECONDS = 60.0
STEADY_ROUNDS = 3
# Steady load on each group, through its frontend (what its users send).
LOAD_RPS_PER_GROUP = 5.0
# The undo of these puts back the pre-fault state; a config action is reverted by restoring the
# pre-fault configuration (its own undo would re-apply a bad push), the rest need no undo.
UNDONE_AFTER_RUN = frozenset({"drain_traffic", "shift_weight", "cleanup_disk"})


@dataclass(frozen=True)
class Scenario:
    """A fault, with the (pattern, root-cause kind) pairs it can be diagnosed as."""

    name: str
    label: str  # its parameters: nofx.chaos.FAULT_PARAMS, as the chaos suites inject it
    diagnoses: tuple[tuple[str, str], ...]
    # Runs with no other lane at work: an overload takes the machine's CPU, and every other
    # lane's latency with it.
    exclusive: bool = False

    @property
    def kind(self) -> str:
        return FAULT_PARAMS[self.label][0]

    @property
    def params(self) -> dict[str, Any]:
        return dict(FAULT_PARAMS[self.label][1])


SCENARIOS = (
    Scenario("kill", "kill", (("service_down", "self"),)),
    Scenario("crash", "crash", (("service_down", "self"),)),
    Scenario("hang", "hang", (("service_hung", "self"),)),
    Scenario(
        "bad_config_errors",
        "bad_config",
        (("error_spike_after_config_change", "configuration"),),
    ),
    Scenario(
        "bad_config_latency", "latency_regression", (("latency_regression", "configuration"),)
    ),
    Scenario(
        "overload",
        "overload",
        (("overload", "self"), ("latency_regression", "self")),
        exclusive=True,
    ),
    Scenario(
        "memory_leak", "memory_leak", (("memory_leak", "self"), ("latency_regression", "self"))
    ),
    Scenario("connection_leak", "connection_leak", (("db_pool_exhaustion", "self"),)),
    Scenario("stale_cache", "stale_cache", (("stale_cache", "self"),)),
    Scenario("disk_fill", "disk_fill", (("disk_filling", "self"),)),
)

STOPPING = threading.Event()


class Interrupted(Exception):
    """The benchmark is stopping (SIGINT/SIGTERM): a lane gives up its run and restores."""


def say(message: str) -> None:
    print(f"[{datetime.now().astimezone():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def pause(seconds: float) -> None:
    if STOPPING.wait(seconds):
        raise Interrupted


@dataclass(frozen=True)
class Deadlines:
    """A run's: the success streak begins within `rto` of the first step, holds for `hold`."""

    rto: float
    hold: float


@dataclass(frozen=True)
class Candidate:
    pattern: str
    cause: str
    playbook: str
    steps: tuple[PlaybookStep, ...]
    # Shipped disabled (the engine does not offer it); measured all the same, to show whether
    # it deserves enabling.
    enabled: bool = True


@dataclass
class RunResult:
    success: bool = False
    recovery_seconds: float | None = None
    action_seconds: float | None = None
    side_effects: list[str] = field(default_factory=list)
    error: str | None = None
    fault_seen: str = ""
    last_judge: str = ""

    def detail(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "recovery_seconds": self.recovery_seconds,
            "action_seconds": self.action_seconds,
            "fault_seen": self.fault_seen,
            "last_judge": self.last_judge,
            "side_effects": self.side_effects,
            "error": self.error,
        }


@dataclass
class Cell:
    scenario: Scenario
    candidate: Candidate
    runs: list[RunResult] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        recoveries = [r.recovery_seconds for r in self.runs if r.recovery_seconds is not None]
        successes = sum(r.success for r in self.runs)
        return {
            "fault": self.scenario.name,
            "fault_kind": self.scenario.kind,
            "fault_params": self.scenario.params,
            "pattern": self.candidate.pattern,
            "cause": self.candidate.cause,
            "playbook": self.candidate.playbook,
            "enabled": self.candidate.enabled,
            "runs": len(self.runs),
            "successes": successes,
            "success_rate": round(successes / len(self.runs), 3) if self.runs else None,
            "recovery_seconds": recoveries,
            "recovery_seconds_p50": quantile(recoveries, 0.5),
            "recovery_seconds_mean": _mean(recoveries),
            "side_effects": sorted({s for r in self.runs for s in r.side_effects}),
            "errors": [r.error for r in self.runs if r.error],
            "run_details": [r.detail() for r in self.runs],
        }


# ---- looking at a replica: the judge ---------------------------------------------------------


def _gauges(endpoint: str) -> dict[str, float]:
    """The unlabelled samples of a replica's /metrics (resident memory, disk used)."""
    body = httpx.get(f"{endpoint}/metrics", timeout=HEALTH_TIMEOUT_SECONDS).text
    found: dict[str, float] = {}
    for line in body.splitlines():
        name, _, value = line.partition(" ")
        if line.startswith("#") or "{" in name or not value:
            continue
        with contextlib.suppress(ValueError):
            found[name] = float(value)
    return found


@dataclass(frozen=True)
class Footprint:
    """What a replica holds: resident memory and its data directory, in bytes."""

    rss: float
    disk: float

    @classmethod
    def of(cls, endpoint: str) -> Footprint:
        seen = _gauges(endpoint)
        return cls(
            seen.get("process_resident_memory_bytes", 0.0), seen.get("pilot_disk_used_bytes", 0.0)
        )


def traffic(target: FleetTarget) -> tuple[int, str]:
    """The replica's HAProxy runtime weight and admin state."""
    meta = target.metadata
    state = HAProxyRuntime(Path(meta["haproxy_socket"])).server(
        str(meta["haproxy_backend"]), str(meta["haproxy_server"])
    )
    return state.weight, state.admin_state


def judge(target: FleetTarget, before: Footprint, client: httpx.Client) -> list[str]:
    """What keeps `target` from its steady state now (module doc); empty when it is steady."""
    healthy, seen, _ = check_health(target.endpoint, HEALTH_TIMEOUT_SECONDS)
    if not healthy:
        return [f"health: {seen}"]
    problems = []
    try:
        weight, state = traffic(target)
    except (HAProxyError, UnknownServerError) as err:
        problems.append(f"rotation unreadable: {err}")
    else:
        # A lowered weight still serves; drain, maintenance or weight 0 takes no new requests.
        if state != "ready" or weight <= 0:
            problems.append(f"out of rotation ({state}, weight {weight})")
    # The replica itself, then what its users reach (with the replica out of rotation the
    # frontend alone would pass on the other replica).
    for where, endpoint in (
        ("replica", target.endpoint),
        ("frontend", str(target.metadata["haproxy_frontend"])),
    ):
        check = request_round(client, endpoint, target.service, JUDGE, 1)
        if not check.passed:
            problems.append(f"{where} requests: {check.detail}")
    try:
        now = Footprint.of(target.endpoint)
    except httpx.HTTPError as err:
        return [*problems, f"metrics: {type(err).__name__}"]
    margin = RESOURCE_MARGIN_MIB * MIB
    if now.rss > before.rss + margin:
        problems.append(f"memory {now.rss / MIB:.0f} MiB (was {before.rss / MIB:.0f})")
    if now.disk > before.disk + margin:
        problems.append(f"disk {now.disk / MIB:.0f} MiB (was {before.disk / MIB:.0f})")
    return problems


def judge_client() -> httpx.Client:
    """No keep-alive: every request is a new session, so HAProxy balances each one."""
    return httpx.Client(
        timeout=JUDGE.request_timeout_seconds,
        limits=httpx.Limits(max_keepalive_connections=0),
        trust_env=False,
    )


# ---- one lane: a replica group, its load and the runs on its first replica -------------------


@dataclass
class Lane:
    fleet: Fleet
    engine: Engine
    database_url: str
    group: str
    service: str
    load: LoadGenerator
    target: FleetTarget = field(init=False)

    def __post_init__(self) -> None:
        self.target = get_fleet_target(self.engine, self.service)

    # -- steady state --------------------------------------------------------------------------

    def wait_steady(self, before: Footprint | None, seconds: float) -> list[str]:
        """Until the judge passes STEADY_ROUNDS in a row (empty), or what it saw last."""
        deadline = time.monotonic() + seconds
        streak, problems = 0, ["not checked"]
        with judge_client() as client:
            while time.monotonic() < deadline:
                footprint = before or Footprint.of(self.target.endpoint)
                problems = judge(self.target, footprint, client)
                streak = 0 if problems else streak + 1
                if streak >= STEADY_ROUNDS:
                    return []
                pause(ROUND_SECONDS)
        return problems

    def running_config(self) -> dict[str, Any]:
        """The configuration the pilot runs now (its file, which the fleet keeps current)."""
        versioned = read_config(config_path(self.fleet.state_dir, self.service))
        return versioned.config.model_dump()

    # -- one run -------------------------------------------------------------------------------

    def run(self, scenario: Scenario, candidate: Candidate, deadlines: Deadlines) -> RunResult:
        result = RunResult()
        applied: list[tuple[Action, ActionContext, Any]] = []
        config_before: dict[str, Any] | None = None
        try:
            self._forget_config_history()
            problems = self.wait_steady(None, STEADY_SECONDS)
            if problems:
                result.error = f"not steady before the fault: {'; '.join(problems)}"
                return result
            before = Footprint.of(self.target.endpoint)
            traffic_before = traffic(self.target)
            config_before = self.running_config()
            injected = self.load.stats()
            try:
                faults.inject(
                    self.fleet, self.engine, scenario.kind, self.service, **scenario.params
                )
            except FleetError as err:
                result.error = f"fault refused: {err}"
                return result
            observed_at = self._wait_effect(before, result)
            if observed_at is None:
                result.error = f"the fault did not show within {EFFECT_SECONDS:g}s"
                return result
            config_faulted = self.running_config()
            started = time.monotonic()
            acting = self.load.stats()
            try:
                result.side_effects += self._apply(candidate, observed_at, applied)
            except Interrupted:
                raise
            except Exception as err:  # noqa: BLE001 - any refusal is this run's failure
                result.error = f"{type(err).__name__}: {err}"
            result.action_seconds = round(time.monotonic() - started, 2)
            if _worse(injected, acting, self.load.stats()):
                result.side_effects.append("steady-load errors rose during the action")
            if result.error is None:
                self._judge_recovery(result, before, started, deadlines)
            result.side_effects += self._lasting_changes(
                traffic_before, config_before, config_faulted
            )
            return result
        finally:
            self._restore(applied, config_before, result)

    def _forget_config_history(self) -> None:
        """Start every run from the same history: none (the pilot keeps the config it runs).

        Otherwise "the previous version" a rollback returns to would depend on earlier runs.
        """
        with self.engine.begin() as conn:
            conn.execute(
                text("DELETE FROM config_versions WHERE service = :s"), {"s": self.service}
            )

    def _wait_effect(self, before: Footprint, result: RunResult) -> float | None:
        """When the judge first fails after the injection (epoch seconds), None if it never did;
        what it saw goes on the run."""
        deadline = time.monotonic() + EFFECT_SECONDS
        with judge_client() as client:
            while time.monotonic() < deadline:
                problems = judge(self.target, before, client)
                if problems:
                    result.fault_seen = "; ".join(problems)
                    return time.time()
                pause(ROUND_SECONDS / 2)
        return None

    def _apply(
        self,
        candidate: Candidate,
        observed_at: float,
        applied: list[tuple[Action, ActionContext, Any]],
    ) -> list[str]:
        """The candidate's state-changing steps, in order, through the platform's action code.

        Each action's prior state is captured and kept (in `applied`) before it acts, as the
        saga registers a compensation before its step. Returns what each did worth noting.
        """
        offered = capabilities(self.target)
        missing = [
            ACTION_CAPABILITY[s.action]
            for s in candidate.steps
            if ACTION_CAPABILITY[s.action] not in offered
        ]
        if missing:
            raise RuntimeError(f"{self.service} lacks {', '.join(missing)}")
        key = f"{ACTOR}/{uuid.uuid4().hex[:12]}"
        notes: list[str] = []
        for index, step in enumerate(candidate.steps):
            if STOPPING.is_set():
                raise Interrupted
            if step.action in CHECKS:
                continue
            if step.action == "restart_service":
                provider = SupervisorProvider(Path(self.target.metadata["supervisor_socket"]))
                outcome = provider.restart(
                    str(self.target.metadata.get("process", self.service)),
                    not_before=math.floor(observed_at),
                )
                if outcome.restarted:
                    notes.append("process restarted (in-memory state lost)")
                continue
            action = ACTIONS[step.action]
            params = ACTION_PARAMS[step.action].model_validate(step.params)
            ctx = ActionContext(
                self.target, self.engine, self.database_url, f"{key}/{index}-{step.action}"
            )
            prior = action.capture(ctx, params)
            applied.append((action, ctx, prior))
            done = action.perform(ctx, params, prior)
            notes += _noted(step.action, done.detail) if done.performed else []
        return notes

    def _judge_recovery(
        self, result: RunResult, before: Footprint, started: float, deadlines: Deadlines
    ) -> None:
        """Judge until the steady state held for the hold, or no streak began within the RTO."""
        rto = deadlines.rto
        streak_began: float | None = None
        with judge_client() as client:
            while True:
                round_began = time.monotonic()
                problems = judge(self.target, before, client)
                result.last_judge = "; ".join(problems) or "steady"
                if problems:
                    streak_began = None
                    if round_began - started > rto:
                        return
                else:
                    if streak_began is None:
                        if round_began - started > rto:
                            return
                        streak_began = round_began
                    if time.monotonic() - streak_began >= deadlines.hold:
                        result.success = True
                        result.recovery_seconds = round(streak_began - started, 2)
                        return
                pause(max(0.0, ROUND_SECONDS - (time.monotonic() - round_began)))

    def _lasting_changes(
        self,
        traffic_before: tuple[int, str],
        config_before: dict[str, Any],
        config_faulted: dict[str, Any],
    ) -> list[str]:
        """What the candidate left changed once the judging ended (before the restore).

        A configuration key counts when the candidate changed it to something other than its
        pre-fault value (a rollback that undoes the fault's push changes nothing lasting).
        """
        changes = []
        try:
            weight, state = traffic(self.target)
            now = self.running_config()
        except Exception as err:  # noqa: BLE001 - what could not be read is said so
            return [f"state after the run unreadable: {type(err).__name__}"]
        if (weight, state) != traffic_before:
            changes.append(f"replica left out of rotation ({state}, weight {weight})")
        differ = sorted(
            k for k in now if now[k] != config_faulted.get(k) and now[k] != config_before.get(k)
        )
        if differ:
            changes.append(f"configuration changed: {', '.join(differ)}")
        return changes

    # -- restore -------------------------------------------------------------------------------

    def _restore(
        self,
        applied: list[tuple[Action, ActionContext, Any]],
        config_before: dict[str, Any] | None,
        result: RunResult,
    ) -> None:
        """Undo, clear, put the configuration back, wait for the steady state (module doc).

        Never raises: a restore that fails is noted on the run and the next run's steady-state
        check decides whether the lane can go on.
        """
        trouble: list[str] = []
        for action, ctx, prior in reversed(applied):
            if action.name not in UNDONE_AFTER_RUN:
                continue
            try:
                action.undo(ctx, prior)
                restored, check = action.restored(ctx, prior)
                if not restored:
                    trouble.append(f"undo {action.name}: {check}")
            except Exception as err:  # noqa: BLE001 - noted, the rest of the restore goes on
                trouble.append(f"undo {action.name}: {err}")
        for attempt in range(2):
            try:
                faults.clear(self.fleet, self.engine, self.service)
                break
            except FleetError as err:
                if attempt:
                    trouble.append(f"clear: {err}")
                time.sleep(1.0)
        self._forget_refresh_lock()
        try:
            if config_before is not None and self.running_config() != config_before:
                ConfigStore.of(self.engine, self.service).push(
                    config_before,
                    applied_by=ACTOR,
                    reason="restore the configuration from before the fault",
                )
        except (ConfigError, OSError, ValueError) as err:
            trouble.append(f"config restore: {err}")
        if STOPPING.is_set():
            return
        try:
            problems = self.wait_steady(None, STEADY_SECONDS)
            if problems:
                # Last resort between runs: a fresh process (the next check decides).
                provider = SupervisorProvider(Path(self.target.metadata["supervisor_socket"]))
                provider.restart(self.service, not_before=time.time() + 1)
                problems = self.wait_steady(None, STEADY_SECONDS)
                if problems:
                    trouble.append(f"not steady after the restore: {'; '.join(problems)}")
        except Interrupted:
            return
        except Exception as err:  # noqa: BLE001 - noted on the run
            trouble.append(f"restore: {err}")
        if trouble:
            say(f"{self.service}: restore: {'; '.join(trouble)}")

    def _forget_refresh_lock(self) -> None:
        """A stale-cache fault's lock outlives the process that took it; clear removes it only
        from a process that still lists the fault."""
        client = redis.Redis.from_url(self.fleet.redis_url, socket_timeout=2.0)
        try:
            client.delete(f"{cache_prefix(self.fleet.root, self.service)}:cache:refresh-lock")
        except redis.RedisError as err:
            say(f"{self.service}: could not delete the cache refresh lock: {err}")
        finally:
            client.close()


def _noted(action: str, detail: Mapping[str, Any]) -> list[str]:
    """The side effect of one performed action, in words that do not vary from run to run."""
    if action == "terminate_idle_connections" and detail.get("terminated"):
        return ["database sessions ended"]
    if action == "invalidate_cache" and detail.get("deleted"):
        return ["cache entries deleted"]
    if action == "cleanup_disk" and detail.get("moved"):
        return ["files moved to quarantine"]
    if action == "rollback_config":
        return ["configuration rolled back"]
    return []


def _worse(injected: LoadStats, acting: LoadStats, acted: LoadStats) -> bool:
    """Whether the steady load's error ratio during the action was above the fault's own
    (from the injection to the action) by more than the judge tolerates."""

    def ratio(a: LoadStats, b: LoadStats) -> float:
        sent = b.sent - a.sent
        return (b.errors + b.failures - a.errors - a.failures) / sent if sent else 0.0

    return ratio(acting, acted) > ratio(injected, acting) + JUDGE.max_error_ratio


# ---- the matrix ------------------------------------------------------------------------------


def load_candidates(engine: Engine, scenario: Scenario) -> list[Candidate]:
    """The playbooks of each pattern the scenario can be diagnosed as, ladder order; the
    disabled ones too (marked), so the matrix says whether they would fix it."""
    found = []
    with engine.connect() as conn:
        for pattern, cause in scenario.diagnoses:
            rows = conn.execute(
                text(
                    "SELECT playbook_name, recovery_steps, enabled FROM recovery_playbooks"
                    " WHERE incident_type = :t"
                    " ORDER BY escalation_rank, created_at, playbook_name"
                ),
                {"t": pattern},
            ).all()
            found += [
                Candidate(
                    pattern,
                    cause,
                    name,
                    tuple(PlaybookStep.model_validate(s) for s in steps),
                    enabled,
                )
                for name, steps, enabled in rows
            ]
    return found


def run_scenario(lane: Lane, cells: list[Cell], runs: int, deadlines: Deadlines) -> None:
    for cell in cells:
        for index in range(runs):
            if STOPPING.is_set():
                return
            began = time.monotonic()
            try:
                result = lane.run(cell.scenario, cell.candidate, deadlines)
            except Interrupted:
                return
            except Exception as err:  # noqa: BLE001 - a run never ends the matrix
                result = RunResult(error=f"{type(err).__name__}: {err}")
            cell.runs.append(result)
            outcome = (
                f"recovered in {result.recovery_seconds:.1f}s"
                if result.success
                else f"FAILED ({result.error or result.last_judge})"
            )
            say(
                f"{cell.scenario.name} x {cell.candidate.pattern}/{cell.candidate.playbook}"
                f" run {index + 1}/{runs} on {lane.service}: {outcome}"
                f"{' — ' + ', '.join(result.side_effects) if result.side_effects else ''}"
                f" [{time.monotonic() - began:.0f}s]"
            )


def best_of(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per fault: the highest success rate, ties by the lower mean recovery time, and `tied` —
    every cell of that success rate whose mean recovery is within `RESOLUTION_SECONDS` of the
    best's (the best first): what the judge cannot tell apart. A fault no candidate fixed has
    no tie.
    """
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        if not row["runs"]:
            continue
        key = (-row["success_rate"], _recovery(row))
        held = best.get(row["fault"])
        if held is None or key < held["_key"]:
            best[row["fault"]] = {
                "playbook": row["playbook"],
                "pattern": row["pattern"],
                "enabled": row["enabled"],
                "success_rate": row["success_rate"],
                "recovery_seconds_p50": row["recovery_seconds_p50"],
                "recovery_seconds_mean": _recovery_or_none(row),
                "_key": key,
            }
    for fault, b in best.items():
        rivals = [
            r
            for r in rows
            if r["fault"] == fault
            and r["runs"]
            and b["success_rate"] > 0
            and math.isclose(r["success_rate"], b["success_rate"])
            and _recovery(r) - b["_key"][1] < RESOLUTION_SECONDS
        ]
        rivals.sort(key=lambda r: (_recovery(r), r["pattern"], r["playbook"]))
        b["tied"] = [{"pattern": r["pattern"], "playbook": r["playbook"]} for r in rivals]
    return {fault: {k: v for k, v in b.items() if k != "_key"} for fault, b in best.items()}


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 2) if values else None


def _recovery_or_none(row: Mapping[str, Any]) -> float | None:
    value = _recovery(row)
    return None if math.isinf(value) else value


def _recovery(row: Mapping[str, Any]) -> float:
    """A cell's recovery time for ranking: the mean of its recovered runs (the expected time to
    recover, the engine's criterion; the nearest-rank p50 of two runs is the faster one and hides
    a slow run), the p50 for a cell written without its runs' times; inf when none recovered."""
    recoveries = row.get("recovery_seconds")
    value = _mean(recoveries) if recoveries else row["recovery_seconds_p50"]
    return math.inf if value is None else float(value)


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'fault':<19} {'pattern/cause':<40} {'playbook':<36} {'ok':>5} {'p50 s':>6}"
    lines = [head, "-" * len(head)]
    for row in rows:
        p50 = row["recovery_seconds_p50"]
        lines.append(
            f"{row['fault']:<19} {row['pattern'] + '/' + row['cause']:<40}"
            f" {row['playbook'] + ('' if row['enabled'] else ' (off)'):<36}"
            f" {str(row['successes']) + '/' + str(row['runs']):>5}"
            f" {'-' if p50 is None else f'{p50:.1f}':>6}"
        )
    return "\n".join(lines)


def spread(scenarios: list[tuple[Scenario, list[Cell]]], lanes: int) -> list[list[list[Cell]]]:
    """Scenarios over lanes, most cells first onto the least loaded lane."""
    plan: list[list[list[Cell]]] = [[] for _ in range(lanes)]
    load = [0] * lanes
    for _scenario, cells in sorted(scenarios, key=lambda s: -len(s[1])):
        lane = load.index(min(load))
        plan[lane].append(cells)
        load[lane] += len(cells)
    return plan


# ---- set-up and tear-down --------------------------------------------------------------------


@contextlib.contextmanager
def platform_database(url: str | None, prefix: str = "nofx_action_matrix") -> Iterator[str]:
    """A migrated scratch database on `url`'s server, or on an embedded pgserver."""
    if url:
        with scratch_database(url, prefix=prefix) as scratch:
            migrate(scratch)
            yield scratch
        return
    base = Path(tempfile.mkdtemp(prefix="nofx-matrix-pg-"))
    server = pgserver.get_server(base / "pgdata", cleanup_mode="stop")  # type: ignore[attr-defined]
    try:
        with scratch_database(server.get_uri(), prefix=prefix) as scratch:
            migrate(scratch)
            yield scratch
    finally:
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def new_fleet(home: Path, database_url: str, groups: int) -> Fleet:
    """`groups` replica groups of two, each behind the fleet's HAProxy."""
    specs = [GroupSpec(name=f"m{i}", port=free_port()) for i in range(groups)]
    return Fleet(
        home,
        FleetSpec(
            services=[
                ServiceSpec(name=f"m{g}-r{r}", port=free_port(), group=f"m{g}")
                for g in range(groups)
                for r in range(2)
            ],
            groups=specs,
        ),
        database_url=database_url,
    )


def run_lanes(
    lanes: list[Lane], plan: list[list[list[Cell]]], runs: int, deadlines: Deadlines
) -> None:
    """Each lane's scenarios in order, the lanes at once; on an interrupt, let them restore."""

    def lane_work(lane: Lane, work: list[list[Cell]]) -> None:
        for cells in work:
            run_scenario(lane, cells, runs, deadlines)

    threads = [
        threading.Thread(
            target=lane_work,
            args=(lane, work),
            name=f"lane-{lane.group}",
            daemon=True,
        )
        for lane, work in zip(lanes, plan, strict=False)
        if work
    ]
    for thread in threads:
        thread.start()
    try:
        while any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(timeout=1.0)
    except BaseException:
        STOPPING.set()
        say("stopping: lanes restore what they changed")
        for thread in threads:
            thread.join(timeout=60)
        raise


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="runs per cell")
    parser.add_argument("--rto", type=float, default=90.0, help="recovery-time objective, s")
    parser.add_argument(
        "--hold",
        type=float,
        default=HOLD_SECONDS,
        help="seconds the steady state must hold for a run to succeed",
    )
    parser.add_argument("--faults", default="", help="comma-separated scenario names; all")
    parser.add_argument("--lanes", type=int, default=4, help="replica groups run at once")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/action_matrix.json")
    parser.add_argument("--priors", type=Path, default=None, help="also write the priors here")
    parser.add_argument(
        "--update",
        action="store_true",
        help="re-measure only --faults and keep the other faults' cells of --out (same runs,"
        " RTO, hold and judge, or refused); the file lists which command measured which fault",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("NOFX_TEST_DATABASE_URL"),
        help="a PostgreSQL server to create the scratch database on (default"
        " NOFX_TEST_DATABASE_URL, else an embedded pgserver)",
    )
    args = parser.parse_args()
    known = {s.name: s for s in SCENARIOS}
    wanted = [f for f in args.faults.split(",") if f] or list(known)
    unknown = [f for f in wanted if f not in known]
    if unknown:
        parser.error(f"--faults: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    if args.runs < 1 or args.rto <= 0 or args.hold <= 0 or args.lanes < 1:
        parser.error("--runs and --lanes must be at least 1, --rto and --hold positive")
    if haproxy_binary() is None:
        parser.error("haproxy is not installed (Debian package haproxy): traffic actions need it")
    kept: dict[str, Any] | None = None
    if args.update:
        if not args.faults:
            parser.error("--update needs --faults: the faults to measure again")
        try:
            kept = kept_cells(args, wanted)
        except ValueError as err:
            parser.error(f"--update: {err}")
    signal.signal(signal.SIGTERM, _interrupt)
    command = shlex.join(["python", "benchmarks/action_matrix.py", *sys.argv[1:]])
    began = datetime.now(UTC)
    scenarios = [known[f] for f in wanted]
    lanes_count = min(args.lanes, len(scenarios))
    home = Path(tempfile.mkdtemp(prefix="nofx-matrix-"))
    everything: list[Cell] = []
    try:
        with platform_database(args.database_url) as database_url:
            engine = make_engine(database_url)
            fleet = new_fleet(home, database_url, lanes_count)
            loads: list[LoadGenerator] = []
            try:
                say(f"starting a fleet of {lanes_count} replica groups of two in {home}")
                fleet.start(timeout=120)
                register_fleet(engine, fleet)
                planned = []
                for scenario in scenarios:
                    cells = [Cell(scenario, c) for c in load_candidates(engine, scenario)]
                    planned.append((scenario, cells))
                    everything += cells
                lanes = []
                for index in range(lanes_count):
                    group = f"m{index}"
                    load = LoadGenerator(
                        [fleet.group_url(group, "/")], concurrency=2, rate=LOAD_RPS_PER_GROUP
                    ).start()
                    loads.append(load)
                    lanes.append(Lane(fleet, engine, database_url, group, f"{group}-r0", load))
                say(
                    f"{len(everything)} cells x {args.runs} runs over {lanes_count} lanes;"
                    f" RTO {args.rto:g}s, hold {args.hold:g}s"
                )
                shared = [(sc, cells) for sc, cells in planned if not sc.exclusive]
                alone = [cells for sc, cells in planned if sc.exclusive]
                deadlines = Deadlines(rto=args.rto, hold=args.hold)
                run_lanes(lanes, spread(shared, lanes_count), args.runs, deadlines)
                run_lanes(lanes[:1], [alone], args.runs, deadlines)
            finally:
                for load in loads:
                    load.stop()
                with contextlib.suppress(Exception):
                    unregister(engine, [s.name for s in fleet.spec.services])
                fleet.stop()
                engine.dispose()
    except KeyboardInterrupt:
        say("interrupted: writing what was measured")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    write_results(args, command, began, everything, kept)


def judge_settings(hold: float) -> dict[str, Any]:
    return {
        **JUDGE.model_dump(include={"requests", "max_error_ratio", "max_p95_ms", "fresh_cache"}),
        "resource_margin_mib": RESOURCE_MARGIN_MIB,
        "hold_seconds": hold,
    }


def kept_cells(args: argparse.Namespace, wanted: list[str]) -> dict[str, Any]:
    """What `--update` keeps of `--out`: the other faults' cells and who measured them.

    Raises:
        ValueError: no such file, or it was measured under another configuration (runs, RTO,
            judge): one matrix is one configuration.
    """
    try:
        old = json.loads(args.out.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {args.out}: {err}") from None
    mine = {"runs_per_cell": args.runs, "rto_seconds": args.rto, "judge": judge_settings(args.hold)}
    for key, value in mine.items():
        if old.get(key) != value:
            raise ValueError(f"{args.out} has {key} {old.get(key)!r}, this run {value!r}")
    rows = [r for r in old.get("cells", []) if r["fault"] not in wanted]
    measured = old.get("measured") or [
        {
            "command": old.get("command"),
            "started_at": old.get("started_at"),
            "faults": sorted({r["fault"] for r in old.get("cells", [])}),
        }
    ]
    for entry in measured:
        entry["faults"] = [f for f in entry["faults"] if f not in wanted]
    return {"cells": rows, "measured": [m for m in measured if m["faults"]]}


def write_results(
    args: argparse.Namespace,
    command: str,
    began: datetime,
    cells: list[Cell],
    kept: Mapping[str, Any] | None = None,
) -> None:
    fresh = [c.row() for c in cells]
    print(table(fresh))
    rows = [*(kept["cells"] if kept else []), *fresh]
    missing = [f"{r['fault']}/{r['playbook']}" for r in rows if r["runs"] < args.runs]
    measured = [
        *(kept["measured"] if kept else []),
        {
            "command": command,
            "started_at": began.isoformat(),
            "faults": sorted({r["fault"] for r in fresh}),
        },
    ]
    report = {
        "generated_at": datetime.now(UTC).isoformat(),
        "started_at": began.isoformat(),
        "command": command,
        "measured": measured,
        "runs_per_cell": args.runs,
        "rto_seconds": args.rto,
        "judge": judge_settings(args.hold),
        "recovery_resolution_seconds": RESOLUTION_SECONDS,
        "incomplete_cells": missing,
        "cells": rows,
        "best": best_of(rows),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    if args.priors:
        priors = {
            "source": "; ".join(f"{m['command']} ({m['started_at'][:10]})" for m in measured),
            "rto_seconds": args.rto,
            "priors": [
                {
                    "pattern": r["pattern"],
                    "cause": r["cause"],
                    "playbook": r["playbook"],
                    "runs": r["runs"],
                    "successes": r["successes"],
                    "recovery_seconds_p50": r["recovery_seconds_p50"],
                    "recovery_seconds_mean": _recovery_or_none(r),
                }
                for r in rows
            ],
        }
        args.priors.parent.mkdir(parents=True, exist_ok=True)
        args.priors.write_text(json.dumps(priors, indent=2) + "\n")
        print(f"wrote {args.priors}")


if __name__ == "__main__":
    main()
