"""One anomaly score from several online detectors, with the evidence an operator checks.

The ensemble exists because no single statistic catches what matters without paging on noise.
It has two ways to fire, each answering a different question about the series:

* **Breakout** — the value leaves everything the series has shown so far (``range`` member).
  Such an alert needs no suppression: the new extreme widens the range, so it cannot repeat.
* **Sustained surprise** — for each *likelihood* member (by default the robust z-score of the
  value's changes and the seasonal baseline) an ``AnomalyLikelihood`` asks whether that member's
  recent scores are unusually high *for this series*: a spiky series that always scores high does
  not alert, a quiet one whose changes suddenly grow does. This per-series calibration is the idea
  behind Numenta's anomaly likelihood; it is what lets one threshold serve every series.

After an alert, sustained-surprise alerts are suppressed for ``suppress_points`` updates: an
incident is paged once, not once per sample while it lasts (NAB rewards the first detection in a
window and charges for later ones outside it). The other members (robust z of the value, EWMA
limits) are *evidence*: they do not move the score, but every verdict lists which members are
above their own level and why, because "the value is 6 sigma above its median and above its EWMA
limits" is what a person reads before acting. (As likelihood members they did not help on NAB:
the robust z of the value changed nothing, EWMA limits cost three points of false alarms.)

An optional ``extra_scorer`` (the LightGBM model of ``nofx.detection.learned``, trained on the
platform's own incident history, never on benchmark labels) is one more way to fire: its
probability is the score.

The output is ``r / (1 + r)`` where ``r`` is the strongest path's ratio to its own alert level, so
0.5 means "exactly at an alert level", whatever fired, and the ordering above it is kept.

Odd samples follow the members' policy (``nofx.detection.detectors``): a non-finite one is
skipped by all; one stamped behind the newest (a clock set back) is scored by every member but
the seasonal one, which sits it out, so its likelihood is simply not updated for that sample.
``odd_rows`` counts what reached the ensemble, ``member_odd_rows`` what each member did.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from nofx.detection.detectors import (
    DETECTORS,
    AuditedDetector,
    DetectorScore,
    Direction,
    OddRows,
    OnlineDetector,
    RingBuffer,
    make_detector,
    surprise_decades,
)

Role = Literal["breakout", "likelihood", "evidence"]
ExtraScorer = Callable[[float, float], float]
ENSEMBLE_LEVEL = 0.5
# The standard deviation of averaged scores never counts as smaller than this: a series whose
# scores were flat so far must move its average by a few thousandths before it is "unusual".
MIN_LIKELIHOOD_SPREAD = 1e-3


@dataclass(frozen=True, slots=True)
class MemberSpec:
    """One member of the ensemble: which detector, with what parameters, in which role."""

    detector: str
    role: Role
    params: Mapping[str, Any] = field(default_factory=dict)


DEFAULT_MEMBERS: tuple[MemberSpec, ...] = (
    MemberSpec("range", "breakout"),
    MemberSpec("robust_z_change", "likelihood"),
    MemberSpec("seasonal", "likelihood"),
    MemberSpec("robust_z", "evidence"),
    MemberSpec("ewma", "evidence"),
)


@dataclass(frozen=True, slots=True)
class EnsembleConfig:
    """Everything that shapes the ensemble; one configuration serves every series.

    Attributes:
        members: the detectors and their roles.
        likelihood_window: how many recent member scores are averaged before comparing.
        likelihood_history: how many past averages form the series' own "usual".
        likelihood_min_history: averages needed before the likelihood may fire.
        likelihood_level_decades: alert when the recent average is this many decades of tail
            probability above the usual (4.0 = one in 10 000).
        suppress_points: updates after an alert during which sustained-surprise alerts are held.
        suppressed_factor: a held alert's score is multiplied by this (below the alert level,
            but still ranked, so evidence keeps its strength).
        extra_level: probability from which the extra scorer fires.
    """

    members: tuple[MemberSpec, ...] = DEFAULT_MEMBERS
    likelihood_window: int = 20
    likelihood_history: int = 2000
    likelihood_min_history: int = 300
    likelihood_level_decades: float = 4.0
    suppress_points: int = 100
    suppressed_factor: float = 0.5
    extra_level: float = 0.5

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("an ensemble needs at least one member")
        if self.likelihood_level_decades <= 0 or self.suppress_points < 0:
            raise ValueError("likelihood_level_decades must be > 0, suppress_points >= 0")
        if not 0.0 <= self.suppressed_factor < 1.0 or not 0.0 < self.extra_level < 1.0:
            raise ValueError("suppressed_factor must lie in [0, 1), extra_level in (0, 1)")


@dataclass(frozen=True, slots=True)
class LikelihoodReading:
    """One ``AnomalyLikelihood`` update: the recent average against the series' usual.

    Attributes:
        decades: ``-log10`` of the one-sided normal tail of the recent average (0 when the
            average is not above the usual, or while the history is too short).
        average: mean of the member's last ``window`` scores.
        usual: mean of the earlier averages.
        spread: their standard deviation (floored at ``MIN_LIKELIHOOD_SPREAD``).
        ready: enough history to judge.
    """

    decades: float
    average: float
    usual: float
    spread: float
    ready: bool


class AnomalyLikelihood:
    """How unusual the recent average of a score stream is against its own history.

    Scores are averaged over the last ``window`` updates; the mean and standard deviation of the
    previous ``history`` averages describe what is usual for this series; the reading is the
    one-sided normal tail of the current average, in decades (``-log10 p``). Averaging makes a
    lasting change count more than one odd sample (the breakout path covers single extremes).
    Running sums keep an update O(1); they are recomputed exactly every ``history`` updates
    against rounding drift.
    """

    def __init__(self, window: int = 20, history: int = 2000, min_history: int = 300) -> None:
        if window < 1 or history < 2 or not 2 <= min_history <= history:
            raise ValueError("need window >= 1 and 2 <= min_history <= history")
        self._recent: deque[float] = deque(maxlen=window)
        self._recent_sum = 0.0
        self._averages = RingBuffer(history)
        self._sum = 0.0
        self._sum_sq = 0.0
        self._min_history = min_history
        self._since_exact = 0

    def update(self, score: float) -> LikelihoodReading:
        """Fold ``score`` in and judge the new recent average against the earlier ones."""
        recent = self._recent
        if len(recent) == recent.maxlen:
            self._recent_sum -= recent[0]
        recent.append(score)
        self._recent_sum += score
        average = self._recent_sum / len(recent)
        averages = self._averages
        count = len(averages)
        reading = LikelihoodReading(0.0, average, average, MIN_LIKELIHOOD_SPREAD, ready=False)
        if count >= self._min_history:
            usual = self._sum / count
            variance = max(0.0, (self._sum_sq - count * usual * usual) / (count - 1))
            spread = max(math.sqrt(variance), MIN_LIKELIHOOD_SPREAD)
            z = (average - usual) / spread
            # One-sided: only a recent average *above* the usual is suspicious.
            decades = surprise_decades(z) + math.log10(2.0) if z > 0 else 0.0
            reading = LikelihoodReading(decades, average, usual, spread, ready=True)
        if count == averages.capacity:
            # The ring buffer is about to overwrite its oldest average; drop it from the sums.
            oldest = averages.oldest()
            self._sum -= oldest
            self._sum_sq -= oldest * oldest
        averages.append(average)
        self._sum += average
        self._sum_sq += average * average
        self._since_exact += 1
        if self._since_exact >= averages.capacity:
            values = averages.values()
            self._sum, self._sum_sq = float(values.sum()), float((values * values).sum())
            self._since_exact = 0
        return reading


@dataclass(frozen=True, slots=True)
class MemberEvidence:
    """One member's verdict as the ensemble recorded it.

    Attributes:
        detector: the member's name (``"extra"`` for the optional learned scorer).
        role: how it takes part (``"extra"`` for the learned scorer).
        score: its own score for this sample.
        level: its own alert level.
        fired: ``score >= level`` (never while it is still learning).
        direction: its direction, if any.
        reason: its sentence.
        likelihood: for likelihood members, how unusual its recent scores are.
    """

    detector: str
    role: Role | Literal["extra"]
    score: float
    level: float
    fired: bool
    direction: Direction | None
    reason: str
    likelihood: LikelihoodReading | None = None


@dataclass(frozen=True, slots=True)
class EnsembleEvidence:
    """Why the ensemble scored a sample as it did.

    Attributes:
        timestamp: the sample's time (seconds).
        value: the sample.
        score: the ensemble's score (0.5 = at an alert level).
        fired: the score reached the alert level.
        suppressed: a sustained-surprise alert was held because of a recent alert.
        trigger: the path that fired or came closest — ``"breakout:range"``,
            ``"likelihood:robust_z_change"``, ``"extra"`` — or ``None`` when nothing scored.
        members: every member's verdict, with its own level.
    """

    timestamp: float
    value: float
    score: float
    fired: bool
    suppressed: bool
    trigger: str | None
    members: tuple[MemberEvidence, ...]

    @property
    def fired_members(self) -> tuple[MemberEvidence, ...]:
        """Members above their own level: the corroborating evidence."""
        return tuple(m for m in self.members if m.fired)


@dataclass(frozen=True, slots=True)
class _Path:
    """The strongest candidate of one way to fire: its ratio to its level and who made it."""

    ratio: float
    member: int


class EnsembleDetector(AuditedDetector):
    """Combines breakout, per-series likelihoods and an optional learned scorer (module doc).

    Satisfies ``OnlineDetector``; ``last_evidence`` holds the full verdict of the latest update.
    """

    def __init__(
        self,
        config: EnsembleConfig | None = None,
        extra_scorer: ExtraScorer | None = None,
        name: str = "ensemble",
    ) -> None:
        super().__init__()
        self.name = name
        self.level = ENSEMBLE_LEVEL
        self.config = config or EnsembleConfig()
        self._members: list[tuple[MemberSpec, OnlineDetector]] = [
            (spec, make_detector(spec.detector, **dict(spec.params)))
            for spec in self.config.members
        ]
        self._likelihoods: dict[int, AnomalyLikelihood] = {
            index: AnomalyLikelihood(
                self.config.likelihood_window,
                self.config.likelihood_history,
                self.config.likelihood_min_history,
            )
            for index, (spec, _) in enumerate(self._members)
            if spec.role == "likelihood"
        }
        self._extra = extra_scorer
        self._step = 0
        self._last_alert = -math.inf
        self.last_evidence: EnsembleEvidence | None = None

    def update(self, timestamp: float, value: float) -> DetectorScore:
        """Score the sample with every member, combine, suppress, and record the evidence."""
        if self.audit.observe(timestamp, value) == "non_finite":
            for _, detector in self._members:
                detector.update(timestamp, value)
            return DetectorScore(0.0, None, f"skipped non-finite sample {value}", learning=True)
        self._step += 1
        config = self.config
        members: list[MemberEvidence] = []
        breakout: _Path | None = None
        sustained: _Path | None = None
        for index, (spec, detector) in enumerate(self._members):
            verdict = detector.update(timestamp, value)
            reading: LikelihoodReading | None = None
            if spec.role == "likelihood" and not verdict.learning:
                reading = self._likelihoods[index].update(verdict.score)
                ratio = reading.decades / config.likelihood_level_decades
                if sustained is None or ratio > sustained.ratio:
                    sustained = _Path(ratio, index)
            elif spec.role == "breakout" and verdict.score > 0.0:
                ratio = verdict.score / detector.level
                if breakout is None or ratio > breakout.ratio:
                    breakout = _Path(ratio, index)
            members.append(
                MemberEvidence(
                    detector=detector.name,
                    role=spec.role,
                    score=verdict.score,
                    level=detector.level,
                    fired=verdict.score >= detector.level and not verdict.learning,
                    direction=verdict.direction,
                    reason=verdict.reason,
                    likelihood=reading,
                )
            )
        if self._extra is not None:
            probability = min(1.0, max(0.0, float(self._extra(timestamp, value))))
            members.append(
                MemberEvidence(
                    detector=str(getattr(self._extra, "name", "extra")),
                    role="extra",
                    score=probability,
                    level=config.extra_level,
                    fired=probability >= config.extra_level,
                    direction=None,
                    reason=f"the learned model gives anomaly probability {probability:.2f}",
                )
            )
            # Odds against the level's odds: the path's score is then the probability itself.
            odds = probability / max(1e-12, 1.0 - probability)
            ratio = odds / (config.extra_level / (1.0 - config.extra_level))
            if sustained is None or ratio > sustained.ratio:
                sustained = _Path(ratio, len(members) - 1)

        breakout_score = _score_of(breakout.ratio) if breakout else 0.0
        sustained_score = _score_of(sustained.ratio) if sustained else 0.0
        # Breakouts are never held: a new extreme cannot repeat itself. Sustained surprise is.
        suppressed = (
            self._step - self._last_alert <= config.suppress_points
            and sustained_score >= ENSEMBLE_LEVEL
        )
        if suppressed:
            sustained_score *= config.suppressed_factor
        score = max(breakout_score, sustained_score)
        fired = score >= ENSEMBLE_LEVEL
        if fired:
            self._last_alert = self._step
        winner: MemberEvidence | None = None
        trigger: str | None = None
        # A breakout, when there is one, is the headline: "never seen before" reads at a glance.
        if breakout is not None and (
            breakout_score >= ENSEMBLE_LEVEL or breakout_score >= sustained_score
        ):
            winner = members[breakout.member]
            trigger = f"breakout:{winner.detector}"
        elif sustained is not None and sustained_score > 0.0:
            winner = members[sustained.member]
            trigger = "extra" if winner.role == "extra" else f"likelihood:{winner.detector}"
        evidence = EnsembleEvidence(
            timestamp=timestamp,
            value=value,
            score=score,
            fired=fired,
            suppressed=suppressed and winner is not None and winner.role != "breakout",
            trigger=trigger,
            members=tuple(members),
        )
        self.last_evidence = evidence
        return DetectorScore(score, _direction_of(evidence, winner), _reason(evidence, winner))

    @property
    def member_odd_rows(self) -> dict[str, OddRows]:
        """What each member did with odd samples, by member name."""
        return {detector.name: detector.odd_rows for _, detector in self._members}


def _score_of(ratio: float) -> float:
    """``r / (1 + r)``: 0.5 at the alert level, ordered above it, never exactly 1."""
    if ratio <= 0.0:
        return 0.0
    if math.isinf(ratio):
        return 1.0
    return ratio / (1.0 + ratio)


def _direction_of(evidence: EnsembleEvidence, winner: MemberEvidence | None) -> Direction | None:
    if winner is not None and winner.direction is not None:
        return winner.direction
    votes = [m.direction for m in evidence.fired_members if m.direction is not None]
    if votes:
        return max(set(votes), key=votes.count)
    return None


def _reason(evidence: EnsembleEvidence, winner: MemberEvidence | None) -> str:
    """One sentence: what fired (or came closest) and which other members agree."""
    if winner is None:
        head = "no member sees anything unusual"
    elif winner.likelihood is not None:
        reading = winner.likelihood
        verdict = (
            "has scored unusually high for this series"
            if evidence.fired or evidence.suppressed
            else "comes closest to alerting"
        )
        head = (
            f"{winner.detector} {verdict}: its last scores average {reading.average:.2f} "
            f"against a usual {reading.usual:.2f} ± {reading.spread:.2f} "
            f"(a 1-in-10^{reading.decades:.1f} event); now: {winner.reason}"
        )
    else:
        head = winner.reason
    if evidence.suppressed:
        head = f"held, an alert was raised in the last updates: {head}"
    others = [m for m in evidence.fired_members if m is not winner]
    if others:
        head += "; also above their level: " + "; ".join(
            f"{m.detector} ({m.reason})" for m in others
        )
    return head


# The ensemble is a detector like the others, so the factory can build it by name too.
DETECTORS["ensemble"] = EnsembleDetector


@dataclass(frozen=True, slots=True)
class SeriesRun:
    """A detector's scores for a whole series and what it did with the odd samples.

    Attributes:
        scores: one score per sample, in the order given.
        odd_rows: the detector's ``OddRows`` under its name, and for an ensemble each member's
            under ``"ensemble/member"``.
    """

    scores: npt.NDArray[np.float64]
    odd_rows: dict[str, OddRows]


def run_series(
    timestamps: Sequence[float] | npt.NDArray[np.float64],
    values: Sequence[float] | npt.NDArray[np.float64],
    detector_factory: Callable[[], OnlineDetector],
) -> SeriesRun:
    """Run a fresh detector over a whole series, one sample at a time, in the order given.

    The detector is online, so the batch result is exactly what it would have said live; the
    samples are not sorted first (a live detector would not get them sorted either).
    """
    if len(timestamps) != len(values):
        raise ValueError("timestamps and values differ in length")
    detector = detector_factory()
    scores = np.empty(len(values), dtype=np.float64)
    for index, (timestamp, value) in enumerate(zip(timestamps, values, strict=True)):
        scores[index] = detector.update(float(timestamp), float(value)).score
    odd_rows = {detector.name: detector.odd_rows}
    if isinstance(detector, EnsembleDetector):
        odd_rows |= {f"{detector.name}/{m}": r for m, r in detector.member_odd_rows.items()}
    return SeriesRun(scores=scores, odd_rows=odd_rows)


def detect_series(
    timestamps: Sequence[float] | npt.NDArray[np.float64],
    values: Sequence[float] | npt.NDArray[np.float64],
    detector_factory: Callable[[], OnlineDetector],
) -> npt.NDArray[np.float64]:
    """The scores of ``run_series``: what a detector says of each sample of a series."""
    return run_series(timestamps, values, detector_factory).scores
