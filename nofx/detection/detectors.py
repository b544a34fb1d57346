"""Online statistical anomaly detectors sharing one protocol.

Every detector here is *online*: ``update(timestamp, value)`` scores the new sample against what
came before it and only then learns from it, so the score at time t never depends on data after t
(the monitor sees the fleet one tick at a time, and NAB forbids look-ahead). Each returns a
``DetectorScore`` whose ``score`` is a log-scaled tail probability: ``-log10(p) / 10`` capped at 1,
where ``p`` is the chance of a deviation at least this large under the detector's own baseline.
That is the convention of Numenta's anomaly likelihood: a score of 0.5 means "one in 100 000",
whatever the series' units, so one threshold serves every series and an ensemble can compare its
members. Two detectors say in their docstrings why they differ: the range breakout (an unseen
extreme has no tail probability without a model) and NAB's windowed Gaussian (kept as NAB
defines it, being a published baseline). Reasons are sentences an operator can check against a
graph.

Bad input never raises, and every detector counts what it did with odd samples in its
``odd_rows`` (an ``OddRows``), so a report can say it rather than a reader guess it:

* a NaN or infinite value or timestamp is *skipped*: scored 0 with ``learning`` set, not learned;
* a *repeated* timestamp (equal to the newest one seen: a retried write) is an ordinary sample;
* a sample stamped *behind* the newest one seen (a clock set back, say an hour at a daylight
  saving change, or a late row) is an ordinary sample to the detectors that ignore time (every
  one but the seasonal): the measurement is real, only its label is off. The seasonal detector
  matches phases by timestamp in a sorted history, so it skips such samples (scored 0, nothing
  kept) until the clock passes the newest time again: after a clock set back one hour it sits
  out one hour, its state intact. ``clock_set_back`` counts the jumps back;
* a gap is no odd sample to a detector: the time-blind ones score across it, the seasonal one
  finds no sample at that phase and says so in its reason. Gaps are counted where the cadence
  is known, by the cleaning report (``nofx.telemetry.cleaning``).

A constant baseline yields a finite score (any departure from a flat line is maximally
surprising, no departure is not surprising).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Direction = Literal["up", "down"]

# Scores are -log10(p) / LOG_SCALE_DECADES, capped at 1: p = 1e-10 (or rarer) scores 1.0.
LOG_SCALE_DECADES = 10.0
# |z| beyond this is treated as this: a departure from a flat line has no finite z.
MAX_Z = 40.0
# MAD of a normal sample is 0.6745 sigma; mean absolute deviation is 0.7979 sigma.
MAD_TO_SIGMA = 1.4826
MEAN_ABS_DEV_TO_SIGMA = 1.2533
# The statistician's sigma in reasons, spelled by name so the source stays ASCII-unambiguous.
SIGMA = "\N{GREEK SMALL LETTER SIGMA}"
SECONDS_PER_DAY = 86_400.0
SECONDS_PER_WEEK = 7 * SECONDS_PER_DAY


@dataclass(frozen=True, slots=True)
class DetectorScore:
    """One detector's verdict on one sample.

    Attributes:
        score: anomaly likelihood in [0, 1], log-scaled so that it is comparable across series
            and detectors (0.5 = a one-in-10^5 deviation under the detector's baseline).
        direction: ``"up"`` or ``"down"`` when the sample deviates in that direction, ``None``
            when the verdict has no direction (no baseline yet, skipped sample).
        reason: a sentence naming the value, the baseline and how far apart they are.
        learning: the detector is still building its baseline (or skipped the sample), so the
            score carries no information; consumers that learn from scores skip these.
    """

    score: float
    direction: Direction | None
    reason: str
    learning: bool = False


SampleKind = Literal["in_order", "non_finite", "repeated", "behind"]
"""How a sample relates to the ones before it, in arrival order (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class OddRows:
    """What a detector did with odd samples: non-finite ones and ones not stamped after all before.

    Attributes:
        samples: every sample it was given.
        non_finite: NaN or infinite value or timestamp: skipped (scored 0, not learned).
        repeated: stamped the same as the newest sample so far: scored as ordinary samples.
        behind: stamped before the newest sample so far (a clock set back, a late row).
        behind_skipped: of those, how many it skipped (the seasonal detector); the rest were
            scored as ordinary samples.
        clock_set_back: how many times a sample was stamped before the finite sample just before
            it (once for a clock set back an hour, however many samples that hour holds).
    """

    samples: int = 0
    non_finite: int = 0
    repeated: int = 0
    behind: int = 0
    behind_skipped: int = 0
    clock_set_back: int = 0

    @property
    def odd(self) -> int:
        """Samples that were not both finite and stamped after every sample before them."""
        return self.non_finite + self.repeated + self.behind

    def as_dict(self) -> dict[str, int]:
        """The counts by name, for JSON reports."""
        return {name: getattr(self, name) for name in self.__slots__}

    def describe(self) -> str:
        """One sentence naming each kind of odd sample and what was done with it."""
        parts: list[str] = []
        if self.non_finite:
            parts.append(f"{self.non_finite} non-finite skipped")
        if self.repeated:
            parts.append(f"{self.repeated} with a repeated timestamp scored as ordinary")
        if self.behind:
            jumps = f"clock set back {self.clock_set_back}x"
            scored = self.behind - self.behind_skipped
            done = ", ".join(
                f"{count} {what}"
                for count, what in ((scored, "scored"), (self.behind_skipped, "skipped"))
                if count
            )
            parts.append(f"{self.behind} stamped behind the newest ({jumps}): {done}")
        return "; ".join(parts) or "no odd samples"


class SampleAudit:
    """Classifies each sample against the ones before it and keeps ``OddRows`` counts.

    O(1) per sample (two comparisons, a few integer increments): every detector holds one.
    """

    __slots__ = (
        "_newest",
        "_previous",
        "behind",
        "behind_skipped",
        "non_finite",
        "repeated",
        "samples",
        "set_back",
    )

    def __init__(self) -> None:
        self.samples = self.non_finite = self.repeated = self.behind = 0
        self.behind_skipped = self.set_back = 0
        self._newest = -math.inf
        self._previous = -math.inf

    @property
    def newest(self) -> float:
        """The latest timestamp seen among finite samples (``-inf`` before the first)."""
        return self._newest

    def observe(self, timestamp: float, value: float) -> SampleKind:
        """Count the sample and say what it is; a non-finite one changes nothing else."""
        self.samples += 1
        if not (math.isfinite(value) and math.isfinite(timestamp)):
            self.non_finite += 1
            return "non_finite"
        if timestamp < self._previous:
            self.set_back += 1
        self._previous = timestamp
        if timestamp > self._newest:
            self._newest = timestamp
            return "in_order"
        if timestamp == self._newest:
            self.repeated += 1
            return "repeated"
        self.behind += 1
        return "behind"

    def skip_behind(self) -> None:
        """Record that the sample just observed as ``behind`` was skipped, not scored."""
        self.behind_skipped += 1

    def report(self) -> OddRows:
        """The counts so far."""
        return OddRows(
            samples=self.samples,
            non_finite=self.non_finite,
            repeated=self.repeated,
            behind=self.behind,
            behind_skipped=self.behind_skipped,
            clock_set_back=self.set_back,
        )


class AuditedDetector:
    """Holds the ``SampleAudit`` every detector keeps and exposes it as ``odd_rows``."""

    def __init__(self) -> None:
        self.audit = SampleAudit()

    @property
    def odd_rows(self) -> OddRows:
        """What this detector did with odd samples so far (see the module docstring)."""
        return self.audit.report()


@runtime_checkable
class OnlineDetector(Protocol):
    """What the ensemble, the monitor and the NAB benchmark need from a detector.

    Attributes:
        name: stable identifier used in evidence and configuration.
        level: score from which this detector counts as having *fired* (its own alert level;
            evidence lists the detectors above their level).
        odd_rows: what it did with non-finite, repeated and behind samples.
    """

    name: str
    level: float

    @property
    def odd_rows(self) -> OddRows:
        """What the detector did with odd samples so far (see the module docstring)."""
        ...

    def update(self, timestamp: float, value: float) -> DetectorScore:
        """Score ``value`` observed at ``timestamp`` (seconds) against the past, then learn it."""
        ...


def tail_probability(z: float) -> float:
    """Two-sided normal tail probability of a deviation of at least ``|z|`` sigma."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def surprise_decades(z: float) -> float:
    """``-log10`` of the two-sided normal tail probability of ``|z|``, exact far in the tail.

    ``erfc`` keeps full relative precision until it underflows (near ``|z| = 37``); past that the
    asymptotic ``erfc(x) ~ exp(-x^2) / (x sqrt(pi)) * (1 - 1 / (2 x^2))`` agrees to 1e-6 decades.
    """
    x = min(abs(z), MAX_Z) / math.sqrt(2.0)
    tail = math.erfc(x)
    if tail > 1e-300:
        return -math.log10(tail)
    return (
        x * x / math.log(10.0)
        + math.log10(x * math.sqrt(math.pi))
        - math.log10(1.0 - 1.0 / (2.0 * x * x))
    )


def score_from_z(z: float) -> float:
    """Map a standardised deviation to the shared log-scaled likelihood in [0, 1]."""
    return min(1.0, surprise_decades(z) / LOG_SCALE_DECADES)


def level_for_z(z: float) -> float:
    """The score a deviation of ``z`` sigma gets: how detectors express their alert level."""
    return score_from_z(z)


def fmt(number: float) -> str:
    """Numbers in reasons: four significant digits, no exponent noise for ordinary metrics."""
    if number == 0 or 1e-3 <= abs(number) < 1e7:
        return f"{number:.4g}"
    return f"{number:.3e}"


def _direction(deviation: float) -> Direction | None:
    if deviation > 0:
        return "up"
    if deviation < 0:
        return "down"
    return None


def _skipped(value: float) -> DetectorScore:
    return DetectorScore(0.0, None, f"skipped non-finite value {value}", learning=True)


def _learning(reason: str) -> DetectorScore:
    return DetectorScore(0.0, None, reason, learning=True)


class RingBuffer:
    """The last ``capacity`` floats, kept in a preallocated array.

    Order is not kept: median, MAD, mean and deviation do not need it, and not shifting the
    array keeps an update O(1) apart from the statistic itself.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._data = np.empty(capacity, dtype=np.float64)
        self._size = 0
        self._next = 0

    def __len__(self) -> int:
        return self._size

    @property
    def capacity(self) -> int:
        """How many values the buffer keeps."""
        return int(self._data.size)

    def append(self, value: float) -> None:
        """Add ``value``, overwriting the oldest one once full."""
        self._data[self._next] = value
        self._next = (self._next + 1) % self._data.size
        self._size = min(self._size + 1, self._data.size)

    def values(self) -> npt.NDArray[np.float64]:
        """The kept values (a view; order unspecified)."""
        return self._data[: self._size]

    def oldest(self) -> float:
        """The value the next ``append`` overwrites once the buffer is full.

        Raises:
            IndexError: the buffer is empty.
        """
        if not self._size:
            raise IndexError("empty ring buffer")
        return float(self._data[self._next if self._size == self._data.size else 0])


@dataclass(frozen=True, slots=True)
class RobustBaseline:
    """Median and robust sigma of a window of values."""

    center: float
    sigma: float


def robust_baseline(values: npt.NDArray[np.float64]) -> RobustBaseline:
    """Median and sigma estimated from the MAD, falling back when the MAD is zero.

    Quantised metrics (CPU in whole percent, request counts) often have more than half their
    values equal, making the MAD zero although the series moves; the mean absolute deviation is
    then the robust scale that still sees the movement. Only a truly constant window has sigma 0.
    """
    center = float(np.median(values))
    deviations = np.abs(values - center)
    sigma = MAD_TO_SIGMA * float(np.median(deviations))
    if sigma == 0.0:
        sigma = MEAN_ABS_DEV_TO_SIGMA * float(deviations.mean())
    return RobustBaseline(center=center, sigma=sigma)


def standardise(deviation: float, sigma: float, reference: float) -> float:
    """``deviation / sigma`` that stays finite: a departure from a flat line is ``MAX_Z``.

    A sigma below ``1e-12`` of the baseline's magnitude is floating-point noise, not spread.
    """
    floor = 1e-12 * max(1.0, abs(reference))
    if sigma <= floor:
        if abs(deviation) <= floor:
            return 0.0
        return math.copysign(MAX_Z, deviation)
    return max(-MAX_Z, min(MAX_Z, deviation / sigma))


class RobustZScoreDetector(AuditedDetector):
    """How many robust sigmas the value (or its change) lies from the trailing median.

    The median and MAD of the last ``window`` points ignore the very outliers being looked for,
    unlike a mean and standard deviation, so one spike does not hide the next. With
    ``on="change"`` the detector scores the step from the previous value against recent steps:
    that sees a jump inside a noisy but level series, and a spike whatever the level.
    """

    def __init__(
        self,
        window: int = 300,
        min_points: int = 30,
        fire_z: float = 4.0,
        on: Literal["value", "change"] = "value",
        name: str | None = None,
    ) -> None:
        if min_points < 2 or window < min_points:
            raise ValueError("need 2 <= min_points <= window")
        super().__init__()
        self.name = name or ("robust_z" if on == "value" else "robust_z_change")
        self.level = level_for_z(fire_z)
        self._on = on
        self._min_points = min_points
        self._buffer = RingBuffer(window)
        self._previous: float | None = None

    def update(self, timestamp: float, value: float) -> DetectorScore:
        """Score the value against the median/MAD of the trailing window, then add it."""
        if self.audit.observe(timestamp, value) == "non_finite":
            return _skipped(value)
        if self._on == "change":
            if self._previous is None:
                self._previous = value
                return _learning("first value: no change to score yet")
            observed, self._previous = value - self._previous, value
            subject = f"change {fmt(observed)} (to {fmt(value)})"
        else:
            observed = value
            subject = f"value {fmt(value)}"
        buffer = self._buffer
        if len(buffer) < self._min_points:
            buffer.append(observed)
            return _learning(f"learning: {len(buffer)} of {self._min_points} points seen")
        baseline = robust_baseline(buffer.values())
        seen = len(buffer)
        buffer.append(observed)
        deviation = observed - baseline.center
        z = standardise(deviation, baseline.sigma, baseline.center)
        what = "median" if self._on == "value" else "median change"
        if baseline.sigma == 0.0 and z != 0.0:
            reason = (
                f"{subject} departs from the constant {fmt(baseline.center)} "
                f"of the last {seen} points"
            )
        else:
            side = "above" if deviation >= 0 else "below"
            reason = (
                f"{subject} is {abs(z):.1f} robust {SIGMA} {side} the {what} "
                f"{fmt(baseline.center)} of the last {seen} points"
            )
        return DetectorScore(score_from_z(z), _direction(deviation), reason)


class EwmaDetector(AuditedDetector):
    """EWMA control limits: distance from an exponentially weighted mean in EWMA sigmas.

    The classic process-control chart: it adapts to slow drift at a rate ``alpha`` and flags a
    sample beyond ``fire_z`` sigmas. The variance update winsorises the residual at ``clip``
    sigmas so a single spike does not widen the limits for hundreds of samples (the mean still
    follows a level shift).
    """

    def __init__(
        self,
        alpha: float = 0.05,
        fire_z: float = 4.0,
        min_points: int = 30,
        clip: float = 5.0,
        name: str = "ewma",
    ) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError("alpha must lie in (0, 1)")
        super().__init__()
        self.name = name
        self.level = level_for_z(fire_z)
        self._alpha = alpha
        self._fire_z = fire_z
        self._min_points = min_points
        self._clip = clip
        self._count = 0
        self._mean = 0.0
        self._variance = 0.0

    def update(self, timestamp: float, value: float) -> DetectorScore:
        """Score against the current EWMA mean/variance, then fold the value in."""
        if self.audit.observe(timestamp, value) == "non_finite":
            return _skipped(value)
        self._count += 1
        if self._count == 1:
            self._mean = value
            return _learning("first value: EWMA starts here")
        residual = value - self._mean
        sigma = math.sqrt(self._variance)
        z = standardise(residual, sigma, self._mean)
        learning = self._count <= self._min_points
        reason = (
            f"value {fmt(value)} is {abs(z):.1f} EWMA {SIGMA} "
            f"{'above' if residual >= 0 else 'below'} the EWMA {fmt(self._mean)} "
            f"(limits ±{self._fire_z:g}{SIGMA} = "
            f"{fmt(self._mean - self._fire_z * sigma)}…{fmt(self._mean + self._fire_z * sigma)})"
        )
        # Learn: mean follows everything, variance sees a winsorised residual.
        bounded = residual
        if sigma > 0.0 and not learning:
            bounded = max(-self._clip * sigma, min(self._clip * sigma, residual))
        self._mean += self._alpha * residual
        self._variance = (1.0 - self._alpha) * (self._variance + self._alpha * bounded * bounded)
        if learning:
            return _learning(f"learning: {self._count} of {self._min_points} points seen")
        return DetectorScore(score_from_z(z), _direction(residual), reason)


class SeasonalDetector(AuditedDetector):
    """Compares a value with the same phase of previous days or weeks.

    A daily traffic peak is not an anomaly, a peak at 3 a.m. is. The detector keeps the samples
    of the last ``cycles`` periods; once the series spans two periods of a candidate (day,
    week) it checks whether that period explains the data — the mean of ``|value - same phase
    before|`` must be clearly below the mean deviation from the recent median — and from then on
    (a period once found is kept; a longer one may replace it) scores
    the residual against the median of the same phase in the previous cycles, in robust sigmas of
    recent residuals. Until a period is established it scores 0 and says why: the level
    detectors of the ensemble cover that time.
    """

    def __init__(
        self,
        periods: tuple[float, ...] = (SECONDS_PER_DAY, SECONDS_PER_WEEK),
        cycles: int = 3,
        fire_z: float = 4.0,
        residual_window: int = 300,
        min_residuals: int = 30,
        recheck_every: int = 96,
        gain_required: float = 0.7,
        name: str = "seasonal",
    ) -> None:
        if not periods or min(periods) <= 0:
            raise ValueError("periods must be positive seconds")
        super().__init__()
        self.name = name
        self.level = level_for_z(fire_z)
        self._periods = tuple(sorted(periods))
        self._cycles = cycles
        self._min_residuals = min_residuals
        self._recheck_every = recheck_every
        self._gain_required = gain_required
        self._times: list[float] = []
        self._values: list[float] = []
        self._residuals = RingBuffer(residual_window)
        self._period: float | None = None
        self._since_check = recheck_every

    @property
    def period(self) -> float | None:
        """The period in use (seconds), ``None`` while none is established."""
        return self._period

    def update(self, timestamp: float, value: float) -> DetectorScore:
        """Score against the same phase of earlier cycles, then remember the sample."""
        kind = self.audit.observe(timestamp, value)
        if kind == "non_finite":
            return _skipped(value)
        if kind == "behind":
            # The phase lookups need sorted times: score nothing, keep nothing, until the clock
            # passes the newest time again (an hour after a clock set back an hour).
            self.audit.skip_behind()
            return _learning(
                f"skipped out-of-order sample: stamped {fmt(self.audit.newest - timestamp)} s "
                "before the newest one (clock set back?)"
            )
        self._since_check += 1
        if self._since_check >= self._recheck_every:
            self._since_check = 0
            period = self._choose_period(timestamp)
            if period != self._period:
                # Residuals against another period have another spread: start them afresh.
                self._residuals = RingBuffer(self._residuals.capacity)
                self._period = period
        verdict = self._score(timestamp, value)
        self._times.append(timestamp)
        self._values.append(value)
        self._forget(timestamp)
        return verdict

    def _score(self, timestamp: float, value: float) -> DetectorScore:
        if self._period is None:
            span = (timestamp - self._times[0]) / 3600.0 if self._times else 0.0
            need = 2 * self._periods[0] / 3600.0
            return _learning(
                f"no seasonal baseline: {span:.1f} h seen, {need:.0f} h needed to test a "
                f"{self._periods[0] / 3600.0:.0f} h period, or no period explains the data"
            )
        expected = self._same_phase(timestamp, self._period)
        if expected is None:
            return _learning("no sample at this phase in earlier cycles")
        residual = value - expected
        residuals = self._residuals
        if len(residuals) < self._min_residuals:
            residuals.append(residual)
            return _learning("learning the spread of seasonal residuals")
        baseline = robust_baseline(residuals.values())
        residuals.append(residual)
        deviation = residual - baseline.center
        z = standardise(deviation, baseline.sigma, expected)
        label = "day" if self._period == SECONDS_PER_DAY else "week"
        if self._period not in (SECONDS_PER_DAY, SECONDS_PER_WEEK):
            label = f"{self._period / 3600.0:g} h cycle"
        side = "above" if deviation >= 0 else "below"
        reason = (
            f"value {fmt(value)} is {abs(z):.1f} robust {SIGMA} {side} {fmt(expected)}, "
            f"the same time of {label} in earlier cycles"
        )
        return DetectorScore(score_from_z(z), _direction(deviation), reason)

    def _same_phase(self, timestamp: float, period: float) -> float | None:
        """Median of the samples nearest ``timestamp - k * period`` for k = 1..cycles."""
        tolerance = self._tolerance()
        found: list[float] = []
        for k in range(1, self._cycles + 1):
            sample = self._nearest(timestamp - k * period, tolerance)
            if sample is not None:
                found.append(sample)
        if not found:
            return None
        return float(np.median(found))

    def _nearest(self, when: float, tolerance: float) -> float | None:
        times = self._times
        index = bisect.bisect_left(times, when)
        best: int | None = None
        for candidate in (index - 1, index):
            if 0 <= candidate < len(times) and (
                best is None or abs(times[candidate] - when) < abs(times[best] - when)
            ):
                best = candidate
        if best is None or abs(times[best] - when) > tolerance:
            return None
        return self._values[best]

    def _tolerance(self) -> float:
        """Half the typical sampling interval, so a phase matches at most one sample."""
        recent = self._times[-50:]
        if len(recent) < 2:
            return 0.0
        steps = np.diff(np.asarray(recent))
        steps = steps[steps > 0]
        return 0.5 * float(np.median(steps)) if steps.size else 0.0

    def _choose_period(self, now: float) -> float | None:
        """The longest candidate period that the data spans twice and that explains it.

        A period, once established, is kept: the check looks at the last cycle only, and an
        anomalous cycle (the very thing to detect) must not switch the baseline off. Only a
        longer candidate that also explains the data replaces it (a day becomes a week).
        """
        if not self._times:
            return self._period
        chosen = self._period
        for period in self._periods:
            if now - self._times[0] < 2 * period:
                break
            if (chosen is None or period > chosen) and self._explains(period, now):
                chosen = period
        return chosen

    def _explains(self, period: float, now: float) -> bool:
        """Does the same phase one period back predict the last period better than its median?"""
        times = np.asarray(self._times)
        values = np.asarray(self._values)
        recent = times >= now - period
        if recent.sum() < self._min_residuals:
            return False
        previous = np.interp(times[recent] - period, times, values)
        # Mean, not median, absolute deviations: a wave that sits at its trough for more than
        # half the cycle has a median deviation of zero around its median, seasonal or not.
        seasonal_spread = np.mean(np.abs(values[recent] - previous))
        level_spread = np.mean(np.abs(values[recent] - np.median(values[recent])))
        if level_spread == 0.0:
            return False
        return bool(seasonal_spread < self._gain_required * level_spread)

    def _forget(self, now: float) -> None:
        horizon = now - (self._cycles + 0.5) * self._periods[-1]
        if len(self._times) > 4096 and self._times[0] < horizon:
            cut = bisect.bisect_left(self._times, horizon)
            del self._times[:cut]
            del self._values[:cut]


class RangeBreakoutDetector(AuditedDetector):
    """A value beyond everything the series has shown so far.

    Most incidents that matter push a metric somewhere it has never been (a latency, an error
    rate, a queue length above any earlier peak), and "above every earlier value" needs no
    distribution assumption, no window and no units. A breakout must clear the observed range by
    ``margin`` of its width, so measurement noise at the edge of the range does not count. Once
    seen, the new extreme widens the range, so a breakout cannot repeat itself: it alerts once
    per new extreme without any suppression.

    The score is not a tail probability (an unseen extreme has none without a model): it is
    ``0.5 + 0.5 * excess / range`` capped at 1, i.e. the detector's level 0.5 at the edge of the
    range and 1 beyond it by a full range's width; 0 inside the range.
    """

    def __init__(self, margin: float = 0.005, min_points: int = 30, name: str = "range") -> None:
        if margin < 0:
            raise ValueError("margin must be >= 0")
        super().__init__()
        self.name = name
        self.level = 0.5
        self._margin = margin
        self._min_points = min_points
        self._count = 0
        self._low = math.inf
        self._high = -math.inf

    def update(self, timestamp: float, value: float) -> DetectorScore:
        """Compare with the lowest and highest value seen so far, then widen the range."""
        if self.audit.observe(timestamp, value) == "non_finite":
            return _skipped(value)
        low, high, seen = self._low, self._high, self._count
        self._count += 1
        self._low, self._high = min(low, value), max(high, value)
        if seen < self._min_points:
            return _learning(f"learning the range: {seen + 1} of {self._min_points} points seen")
        width = high - low
        if width <= 0.0:
            if value == high:
                return DetectorScore(0.0, None, f"value {fmt(value)} equals the constant so far")
            return DetectorScore(
                1.0,
                _direction(value - high),
                f"value {fmt(value)} leaves the constant {fmt(high)} of all {seen} points so far",
            )
        direction: Direction
        if value > high:
            excess, edge, side, direction = value - high, high, "highest", "up"
        elif value < low:
            excess, edge, side, direction = low - value, low, "lowest", "down"
        else:
            return DetectorScore(
                0.0, None, f"value {fmt(value)} within the range {fmt(low)}…{fmt(high)} so far"
            )
        fraction = excess / width
        if fraction <= self._margin:
            return DetectorScore(
                0.0,
                None,
                f"value {fmt(value)} at the {side} value so far ({fmt(edge)}), within the margin",
            )
        return DetectorScore(
            min(1.0, 0.5 + 0.5 * fraction),
            direction,
            f"value {fmt(value)} breaks out of everything seen so far: the {side} of {seen} "
            f"points was {fmt(edge)} (by {100 * fraction:.1f} % of the range "
            f"{fmt(low)}…{fmt(high)})",
        )


class WindowedGaussianDetector(AuditedDetector):
    """NAB's "windowed Gaussian" baseline: a normal fit over the previous ``window`` values.

    NAB's implementation scores each value by the Gaussian tail probability under the mean and
    standard deviation of the preceding 1000 values (window slid by ``step``; a zero deviation
    replaced by 1e-6). ``tail="two_sided"`` reports that as a likelihood like the other
    detectors (``1 - p`` for the two-sided tail ``p``), high when the value is far from the
    mean either way. ``tail="nab_legacy"`` reproduces the score NAB's published results were
    computed with: its tail function flipped values below the mean twice, so the score is
    ``Phi((mean - x) / sigma)`` — near 1 far *below* the mean, near 0 far above.
    """

    def __init__(
        self,
        window: int = 1000,
        step: int = 1,
        fire_z: float = 4.0,
        tail: Literal["two_sided", "nab_legacy"] = "two_sided",
        name: str = "windowed_gaussian",
    ) -> None:
        super().__init__()
        self.name = name
        self.level = 1.0 - tail_probability(fire_z)
        self._tail = tail
        self._step = step
        self._window: list[float] = []
        self._pending: list[float] = []
        self._capacity = window
        self._mean = 0.0
        self._std = 1.0

    def update(self, timestamp: float, value: float) -> DetectorScore:
        """Score against the window's normal fit, then slide the window."""
        if self.audit.observe(timestamp, value) == "non_finite":
            return _skipped(value)
        verdict = _learning("first value: no window yet")
        if self._window:
            z = (value - self._mean) / self._std
            if self._tail == "nab_legacy":
                score = 0.5 * math.erfc(z / math.sqrt(2.0))
            else:
                score = 1.0 - tail_probability(z)
            verdict = DetectorScore(
                score,
                _direction(value - self._mean),
                f"value {fmt(value)} is {abs(z):.1f} {SIGMA} {'above' if z >= 0 else 'below'} the "
                f"mean {fmt(self._mean)} of the last {len(self._window)} points",
            )
        if len(self._window) < self._capacity:
            self._window.append(value)
            self._refit()
        else:
            self._pending.append(value)
            if len(self._pending) == self._step:
                self._window = self._window[self._step :] + self._pending
                self._pending = []
                self._refit()
        return verdict

    def _refit(self) -> None:
        data = np.asarray(self._window)
        self._mean = float(data.mean())
        self._std = float(data.std()) or 1e-6


class NeverFiresDetector(AuditedDetector):
    """The null detector of NAB's normalisation: always 0, so the benchmark can show its row."""

    def __init__(self, name: str = "never_fires") -> None:
        super().__init__()
        self.name = name
        self.level = 1.0

    def update(self, timestamp: float, value: float) -> DetectorScore:
        """Always 0: this detector's score is the floor every other one is measured against."""
        if self.audit.observe(timestamp, value) == "non_finite":
            return _skipped(value)
        return DetectorScore(0.0, None, "never fires")


DETECTORS: dict[str, Callable[..., OnlineDetector]] = {
    "robust_z": RobustZScoreDetector,
    "robust_z_change": lambda **params: RobustZScoreDetector(on="change", **params),
    "ewma": EwmaDetector,
    "seasonal": SeasonalDetector,
    "range": RangeBreakoutDetector,
    "windowed_gaussian": WindowedGaussianDetector,
    "never_fires": NeverFiresDetector,
}


def make_detector(name: str, **params: Any) -> OnlineDetector:
    """Build a fresh detector by name (``DETECTORS`` lists them) with keyword parameters.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    try:
        factory = DETECTORS[name]
    except KeyError:
        known = ", ".join(sorted(DETECTORS))
        raise ValueError(f"unknown detector {name!r}; known: {known}") from None
    return factory(**params)
