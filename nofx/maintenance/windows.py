"""Choosing when maintenance runs: the lowest-impact window before the predicted failure.

The impact of a window is the traffic forecast over it (a trough hurts fewest users). A window is
out when any constraint says so — a blackout, a change freeze, a replica group's disruption
budget — and each refusal is kept with its reason, so "why not earlier?" has an answer. With no
allowed window before the deadline the job cannot wait for a trough: the earliest allowed start
is taken and marked urgent; with none at all, nothing is chosen and the reasons say why.

A prediction's error grows with how far ahead it looks, and a failure that comes a little early
still counts: a job leaves a share (`spare`) of the time left before the deadline unused, and
only when that leaves no room does it use the time up to the deadline itself.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

# A constraint: given a window (start, end), the reason it is refused, or None.
Constraint = Callable[[float, float], str | None]


@dataclass(frozen=True)
class Interval:
    """A span of time no maintenance may overlap (a blackout or a change freeze)."""

    start: float
    end: float
    reason: str

    def refuses(self, start: float, end: float) -> str | None:
        return self.reason if start < self.end and end > self.start else None


@dataclass(frozen=True)
class DisruptionBudget:
    """At most `per_day` maintenance jobs a day in one replica group (UTC days)."""

    per_day: int
    booked: tuple[float, ...] = ()  # starts of jobs already booked in the group

    def refuses(self, start: float, end: float) -> str | None:
        day = int(start // 86_400)
        used = sum(1 for b in self.booked if int(b // 86_400) == day)
        if used >= self.per_day:
            return f"the group's disruption budget of {self.per_day} a day is spent that day"
        return None


@dataclass
class Choice:
    """The chosen window, or why there is none."""

    start: float | None
    end: float | None
    expected_load: float | None
    urgent: bool
    reason: str
    refused: dict[str, int] = field(default_factory=dict)
    candidates: int = 0
    load_rank: float | None = None  # 0 = the quietest allowed start, 1 = the busiest


def spared_deadline(now: float, deadline: float, spare: float) -> float:
    """When a job should be done: `spare` of the time from `now` to `deadline` before it."""
    return deadline - max(0.0, min(spare, 1.0)) * max(deadline - now, 0.0)


def choose_window(
    now: float,
    deadline: float,
    duration_s: float,
    load_times: npt.ArrayLike,
    load: npt.ArrayLike,
    constraints: Sequence[Constraint] = (),
    *,
    lead_s: float = 0.0,
    spare: float = 0.0,
) -> Choice:
    """The start in [now + lead_s, deadline - duration_s] of least mean forecast load, ending
    with a `spare` share of the time to the deadline left (unless that leaves no start).

    Args:
        load_times, load: the traffic forecast (any step; starts are its times).
        constraints: each returns why a window is refused, or None.
    """
    times = np.asarray(load_times, dtype=np.float64)
    values = np.asarray(load, dtype=np.float64)
    first = now + lead_s
    last = spared_deadline(now, deadline, spare) - duration_s
    if last < first:
        last = deadline - duration_s
    refused: Counter[str] = Counter()
    allowed: list[tuple[float, float]] = []
    starts = times[(times >= first) & (times <= last)]
    if not len(starts) or starts[0] > first:
        starts = np.concatenate([[first], starts]) if first <= last else starts
    for start in starts:
        end = start + duration_s
        why = next((r for c in constraints if (r := c(start, end)) is not None), None)
        if why is not None:
            refused[why] += 1
            continue
        inside = (times >= start) & (times < end)
        mean = float(np.nanmean(values[inside])) if inside.any() else _at(times, values, start)
        allowed.append((float(start), mean))
    if not allowed:
        reason = (
            "no start is allowed before the deadline: " + "; ".join(sorted(refused))
            if refused
            else f"the deadline leaves no room for {duration_s / 60:.0f} minutes of maintenance"
        )
        return Choice(None, None, None, True, reason, dict(refused), 0)
    loads = np.array([m for _, m in allowed])
    best = int(np.nanargmin(loads)) if np.isfinite(loads).any() else 0
    start, mean = allowed[best]
    rank = float(np.mean(loads < mean)) if len(loads) > 1 else 0.0
    urgent = len(allowed) == 1 and start == first
    reason = (
        f"lowest forecast load ({mean:.3g}) of {len(allowed)} allowed start(s) before the deadline"
        if not urgent
        else "only one start is allowed before the deadline: as soon as possible"
    )
    return Choice(
        start, start + duration_s, mean, urgent, reason, dict(refused), len(allowed), rank
    )


def _at(times: FloatArray, values: FloatArray, moment: float) -> float:
    if not len(times):
        return float("nan")
    return float(np.interp(moment, times, values))
