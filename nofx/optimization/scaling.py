"""Forecast-driven replica counts for a replica group: capacity before a peak, removed after it,
within a disruption budget.

From a forecast of the group's load (the upper edge of a forecast band, so the plan covers what
the load may plausibly reach, not its mean) and what one replica serves within its SLO, the
replicas needed at each step are

    need(t) = clamp(ceil(upper(t) / (capacity_per_replica * target_utilisation)), min, max)

and the plan keeps, at each step t, the most any step of [t - cooldown, t + lead] needs:

* a rise is met `lead` ahead of it (a new replica takes time to start and to warm up, and a
  forecast's timing is not exact);
* capacity is given back only once the forecast has stayed low for `cooldown` (a dip between two
  peaks is not worth two changes). Before the plan's first step the group is taken to have
  needed what it runs now, so a scale-in waits a cool-down from the start too.

The disruption budget: at most `max_changes_per_day` changes (each a scale-out or a scale-in, of
any size) per day. Walking the plan in time, a change is made while the day has budget; the
day's last change goes straight to the most the rest of that day needs, so the budget never
leaves the group short of a forecast peak — what the budget holds back is only capacity given
back late. Days are UTC days of `day_seconds` (86 400; a staging benchmark compresses them).

Plain functions on arrays: no I/O. `nofx.optimization.recommendations` feeds it the platform's
forecast of the inventory's load metric; `benchmarks/scaling.py` feeds it a forecast of a
compressed day.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

DAY_S = 86_400.0


@dataclass(frozen=True)
class ScalingPolicy:
    """What a plan must respect (the inventory's ``optimization.scaling``, in seconds).

    Raises:
        ValueError: a bound out of range, named with its value.
    """

    capacity_per_replica: float
    target_utilisation: float = 0.7
    min_replicas: int = 1
    max_replicas: int = 10
    lead_s: float = 900.0
    cooldown_s: float = 3600.0
    max_changes_per_day: int = 6
    day_seconds: float = DAY_S

    def __post_init__(self) -> None:
        if not (self.capacity_per_replica > 0 and math.isfinite(self.capacity_per_replica)):
            raise ValueError(
                f"capacity_per_replica must be a finite number > 0, not {self.capacity_per_replica}"
            )
        if not 0 < self.target_utilisation <= 1:
            raise ValueError(f"target_utilisation must be in (0, 1], not {self.target_utilisation}")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError(
                f"need 1 <= min_replicas <= max_replicas, not {self.min_replicas}.."
                f"{self.max_replicas}"
            )
        for name in ("lead_s", "cooldown_s"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, not {value}")
        if self.max_changes_per_day < 1:
            raise ValueError(f"max_changes_per_day must be >= 1, not {self.max_changes_per_day}")
        if not self.day_seconds > 0:
            raise ValueError(f"day_seconds must be > 0, not {self.day_seconds}")

    @property
    def per_replica(self) -> float:
        """The load one replica is planned to carry."""
        return self.capacity_per_replica * self.target_utilisation


@dataclass(frozen=True)
class ScaleStep:
    """One change of the plan: at `at` (epoch seconds), from one replica count to another."""

    at: float
    from_replicas: int
    to_replicas: int
    why: str

    @property
    def action(self) -> Literal["scale_out", "scale_in"]:
        return "scale_out" if self.to_replicas > self.from_replicas else "scale_in"

    @property
    def replicas(self) -> int:
        """How many replicas the step adds or removes."""
        return abs(self.to_replicas - self.from_replicas)


@dataclass(frozen=True)
class ScalingPlan:
    """Replicas per step of the forecast, the changes that get there, and what they cost."""

    times: FloatArray
    needed: IntArray  # what each step needs (no lead, cool-down or budget)
    wanted: IntArray  # with lead and cool-down, before the budget
    replicas: IntArray  # the plan
    steps: list[ScaleStep]
    held_back: int  # steps at which the budget kept the plan from what it wanted
    notes: list[str] = field(default_factory=list)

    @property
    def short_steps(self) -> int:
        """Steps at which the plan has fewer replicas than the forecast needs (SLO risk)."""
        return int((self.replicas < self.needed).sum())

    def replica_hours(self, step_s: float) -> float:
        """Replica-hours the plan runs, each of its steps lasting `step_s` seconds."""
        return float(self.replicas.sum() * step_s / 3600)

    def changes_per_day(self, day_seconds: float = DAY_S) -> dict[int, int]:
        """Changes on each day (day number since the epoch)."""
        return dict(Counter(int(s.at // day_seconds) for s in self.steps))


def needed_replicas(load: npt.ArrayLike, policy: ScalingPolicy) -> IntArray:
    """Replicas that carry `load` at the target utilisation, within [min, max].

    Raises:
        ValueError: a negative or non-finite load.
    """
    values = np.asarray(load, dtype=np.float64)
    if not np.isfinite(values).all() or (values < 0).any():
        raise ValueError("the load must be finite and >= 0 at every step")
    # A hair under the exact multiple stays the multiple: 140.0000001 / 70 is still 2 replicas.
    raw = np.ceil(values / policy.per_replica - 1e-9).astype(np.int64)
    return np.clip(raw, policy.min_replicas, policy.max_replicas)


def plan_replicas(
    times: npt.ArrayLike, upper: npt.ArrayLike, policy: ScalingPolicy, *, current: int
) -> ScalingPlan:
    """The replica plan over a forecast (module doc).

    Args:
        times: epoch seconds of the forecast's steps, increasing.
        upper: the upper edge of the load forecast at each step (requests/s).
        policy: capacity, bounds, lead, cool-down and budget.
        current: replicas the group has now (before the first step).

    Raises:
        ValueError: times not increasing, lengths that differ, no step, a bad load, or a current
            count below 1.
    """
    stamps = np.asarray(times, dtype=np.float64)
    if stamps.ndim != 1 or len(stamps) == 0:
        raise ValueError("a plan needs at least one forecast step")
    if len(np.asarray(upper)) != len(stamps):
        raise ValueError(f"{len(stamps)} times but {len(np.asarray(upper))} load values")
    if (np.diff(stamps) <= 0).any():
        raise ValueError("the forecast's times must increase")
    if current < 1:
        raise ValueError(f"current must be at least 1 replica, not {current}")
    needed = needed_replicas(upper, policy)
    notes = []
    if current > policy.max_replicas or current < policy.min_replicas:
        notes.append(
            f"the group runs {current} replicas, outside [{policy.min_replicas},"
            f" {policy.max_replicas}]: the plan brings it within"
        )
    wanted = _windowed_max(stamps, needed, policy, current)
    replicas, steps, held = _budgeted(stamps, wanted, policy, current)
    if held:
        notes.append(f"the disruption budget held the plan back at {held} step(s)")
    return ScalingPlan(stamps, needed, wanted, replicas, steps, held, notes)


def _windowed_max(
    stamps: FloatArray, needed: IntArray, policy: ScalingPolicy, current: int
) -> IntArray:
    """At each step, the most any step of [t - cooldown, t + lead] needs; the time before the
    first step needed `current` (clamped to the bounds)."""
    before = int(np.clip(current, policy.min_replicas, policy.max_replicas))
    lo = np.searchsorted(stamps, stamps - policy.cooldown_s, side="left")
    hi = np.searchsorted(stamps, stamps + policy.lead_s, side="right")
    out = np.empty_like(needed)
    for i in range(len(stamps)):
        peak = int(needed[lo[i] : hi[i]].max())
        if stamps[i] - policy.cooldown_s < stamps[0]:
            peak = max(peak, before)
        out[i] = peak
    return out


def _budgeted(
    stamps: FloatArray, wanted: IntArray, policy: ScalingPolicy, current: int
) -> tuple[IntArray, list[ScaleStep], int]:
    """Walk the wanted counts in time, spending at most the day's budget of changes."""
    days = np.floor(stamps / policy.day_seconds).astype(np.int64)
    used: Counter[int] = Counter()
    level, held = current, 0
    replicas = np.empty_like(wanted)
    steps: list[ScaleStep] = []
    for i, at in enumerate(stamps):
        goal = int(wanted[i])
        day = int(days[i])
        if goal != level:
            left = policy.max_changes_per_day - used[day]
            new = goal
            why = "forecast rise ahead" if goal > level else "forecast low for the cool-down"
            if left == 1:
                rest = int(wanted[i:][days[i:] == day].max())
                new = max(goal, rest)
                if new > goal:
                    why += f"; the day's last change, so up to its remaining peak ({rest})"
            if left <= 0 or new == level or (goal < level and new > level):
                held += 1
            else:
                steps.append(ScaleStep(float(at), level, new, why))
                used[day] += 1
                level = new
        replicas[i] = level
    return replicas, steps, held


SCALING = "scaling"
KEY = "replica_hours"  # what makes two passes' recommendations the same (within 1%)


@dataclass(frozen=True)
class ScalingRecommendation:
    """A replica plan as a recommendation's parts (the shape of `recommendations.Draft`)."""

    plan: ScalingPlan
    current: dict[str, object]
    recommended: dict[str, object]
    improvement: dict[str, object]
    steps: list[dict[str, object]]
    risk: dict[str, object]
    reason: str


def policy_of(tuning: Mapping[str, Any], day_seconds: float = DAY_S) -> ScalingPolicy:
    """The policy of an inventory's ``optimization.scaling`` section (minutes to seconds)."""
    return ScalingPolicy(
        capacity_per_replica=float(tuning["capacity_per_replica"]),
        target_utilisation=float(tuning.get("target_utilisation", 0.7)),
        min_replicas=int(tuning.get("min_replicas", 1)),
        max_replicas=int(tuning.get("max_replicas", 10)),
        lead_s=60 * float(tuning.get("lead_minutes", 15)),
        cooldown_s=60 * float(tuning.get("cooldown_minutes", 60)),
        max_changes_per_day=int(tuning.get("max_changes_per_day", 6)),
        day_seconds=day_seconds,
    )


def recommend_scaling(
    times: npt.ArrayLike,
    upper: npt.ArrayLike,
    policy: ScalingPolicy,
    *,
    current: int,
    step_s: float,
    metric: str,
    model: str,
    quantile: int,
) -> ScalingRecommendation:
    """The plan over the forecast, against the group as it runs now and a group sized for the
    forecast peak all day (what a fixed size needs).

    Raises:
        ValueError: see `plan_replicas`.
    """
    plan = plan_replicas(times, upper, policy, current=current)
    hours = len(plan.times) * step_s / 3600
    planned = plan.replica_hours(step_s)
    peak = int(plan.needed.max())
    schedule = [
        {
            "at": _iso(s.at),
            "action": s.action,
            "from": s.from_replicas,
            "to": s.to_replicas,
            "why": s.why,
        }
        for s in plan.steps
    ]
    first = plan.steps[0] if plan.steps else None
    steps: list[dict[str, object]] = []
    if first is not None:  # applying the recommendation makes its next change
        steps = [
            {"action": first.action, "params": {"replicas": first.replicas}},
            {"action": "validate_requests", "params": {"via_frontend": True}},
        ]
    per_day = plan.changes_per_day(policy.day_seconds)
    short = plan.short_steps
    return ScalingRecommendation(
        plan=plan,
        current={"replicas": current, KEY: round(current * hours, 3), "load_metric": metric},
        recommended={
            KEY: round(planned, 3),
            "peak_replicas": int(plan.replicas.max()),
            "fewest_replicas": int(plan.replicas.min()),
            "horizon_hours": round(hours, 3),
            "schedule": schedule,
        },
        improvement={
            "replica_hours_saved_vs_now": round(current * hours - planned, 3),
            "replica_hours_saved_vs_peak_sized": round(peak * hours - planned, 3),
            "saved_ratio_vs_peak_sized": round(1 - planned / (peak * hours), 4) if hours else 0.0,
        },
        steps=steps,
        risk={
            "short_steps": short,
            "short_share": round(short / len(plan.times), 4),
            "band": f"upper {quantile}%",
            "forecast_model": model,
            "held_back_by_budget": plan.held_back,
            "most_changes_in_a_day": max(per_day.values(), default=0),
            "max_changes_per_day": policy.max_changes_per_day,
            "capacity_per_replica": policy.capacity_per_replica,
            "target_utilisation": policy.target_utilisation,
            "notes": plan.notes,
        },
        reason=(
            f"{len(plan.steps)} change(s) over {hours:.0f} h, {plan.replicas.min()}-"
            f"{plan.replicas.max()} replicas: {planned:.1f} replica-hours against"
            f" {current * hours:.1f} now and {peak * hours:.1f} sized for the peak"
        ),
    )


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()
