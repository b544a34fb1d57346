"""The Numenta Anomaly Benchmark (NAB) scorer, written from NAB's published definitions.

NAB does not count points: it rewards *early* detection of each labelled anomaly window and
charges for alerts outside windows, which is what an operator feels (one timely page per incident,
no pages in between). The rules, as NAB's own sweep scorer applies them (our code, their maths):

* Rows are scored by index, in file order, whatever their timestamps; a window's rows are found
  by timestamp as NAB finds them (``locate_windows``), so a file whose clock jumps back or repeats
  a timestamp is scored, and the rows where stamp and window disagree are counted.
* The first ``min(floor(0.15 * rows), 750)`` rows are a probation period: detections there are
  ignored, and a window lying wholly inside it is not scored.
* A window ``[a, b]`` (row indices, inclusive, width ``w = b - a + 1``) is credited with its
  earliest detection ``i`` only: position ``y = -(b - i + 1) / w`` (``-1`` at the window's first
  row), weight ``A_TP * sigmoid(y) / sigmoid(-1)`` where ``sigmoid(y) = 2 / (1 + exp(5 y)) - 1``;
  so a detection on the first row earns exactly ``A_TP``. A window without detection costs
  ``A_FN``. Later detections inside the same window cost nothing.
* A detection outside every window is a false positive weighted ``A_FP * sigmoid(y)`` with
  ``y = (i - b) / (w - 1)`` relative to the previous window ``[a, b]`` (so an alert just after a
  window is cheap and one far after it costs the full ``A_FP``); ``sigmoid(y) = -1`` for
  ``y >= 3`` and before the first window.
* One threshold per detector and profile for the whole corpus: every distinct anomaly score is
  tried as a threshold (detection = ``score >= threshold``), plus one above every score.
* ``normalised = 100 * (raw - null) / (perfect - null)``: ``null`` never fires (``-A_FN`` per
  scored window), ``perfect`` fires on the first row of every scored window (``A_TP`` each).

One deliberate reading of the data set README: NAB's ``Runner.normalize`` takes ``perfect`` as
``A_TP`` times the number of *labels*, which exceeds the number of windows where two labels share
a merged window (65 labels, 64 windows in our 41 files). We follow the README (the score of a
detector firing at every window start), so a perfect detector scores exactly 100.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

PROBATION_PERCENT = 0.15
# NAB caps probation at probationPercent * 5000 rows, i.e. 750 at the published 15 %.
PROBATION_CAP_ROWS = 5000
# The threshold that detects nothing (NAB's sweep starts there; scores live in [0, 1]).
NO_DETECTION_THRESHOLD = 1.1

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
Window = tuple[int, int]


@dataclass(frozen=True, slots=True)
class CostProfile:
    """The weights of one NAB application profile."""

    name: str
    tp_weight: float
    fp_weight: float
    fn_weight: float


PROFILES: dict[str, CostProfile] = {
    "standard": CostProfile("standard", tp_weight=1.0, fp_weight=0.11, fn_weight=1.0),
    "reward_low_FP": CostProfile("reward_low_FP", tp_weight=1.0, fp_weight=0.22, fn_weight=1.0),
    "reward_low_FN": CostProfile("reward_low_FN", tp_weight=1.0, fp_weight=0.11, fn_weight=2.0),
}


def scaled_sigmoid(position: float) -> float:
    """NAB's reward curve: ~0.987 at position -1, 0 at 0, ~-0.987 at 1 and -1 from 3 on."""
    if position >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def probation_length(n_rows: int, percent: float = PROBATION_PERCENT) -> int:
    """Rows at the start of a file that are not scored (NAB: 15 %, at most 750)."""
    return int(min(math.floor(percent * n_rows), percent * PROBATION_CAP_ROWS))


@dataclass(frozen=True, slots=True)
class LocatedWindows:
    """Label windows as row ranges of a file, and the rows whose stamp and range disagree.

    Attributes:
        rows: each window as an inclusive ``(first, last)`` row range, in row order.
        stamped_inside_scored_outside: rows stamped inside a window but lying outside its row
            range (a clock set back into a window after it closed, a repeat of its end stamp):
            scored as outside every window, as NAB does.
        scored_inside_stamped_outside: rows inside a window's row range but stamped outside it
            (a clock set back to before the window while in it): scored as the window's.
    """

    rows: tuple[Window, ...]
    stamped_inside_scored_outside: int
    scored_inside_stamped_outside: int

    def as_dict(self) -> dict[str, object]:
        """For JSON reports."""
        return {
            "rows": [list(window) for window in self.rows],
            "stamped_inside_scored_outside": self.stamped_inside_scored_outside,
            "scored_inside_stamped_outside": self.scored_inside_stamped_outside,
        }


def locate_windows(
    timestamps: Sequence[np.datetime64] | npt.NDArray[np.datetime64],
    limits: Sequence[tuple[str, str]] | Sequence[tuple[np.datetime64, np.datetime64]],
) -> LocatedWindows:
    """Turn window limits given as timestamps into row ranges, for rows in any order.

    NAB scores rows in file order and locates a window by timestamp: it enters the window at
    the row stamped with its start and leaves it after the *first* row stamped with its end
    (``timestamps.index(end)``). So, in file order, a window runs from the first row stamped
    inside ``[start, end]`` to the first row after it stamped ``end`` exactly, or, when no row
    carries ``end``, to the row before the first one stamped after it (or the file's last row).
    On sorted timestamps this is the rows inside ``[start, end]``, up to the first repeat of
    ``end``; where the clock went back, rows whose stamp and range disagree are counted.
    Unparseable timestamps (``NaT``) are inside no window.

    Raises:
        ValueError: a window holds no row, or windows overlap (NAB merges overlapping windows
            before scoring, so overlapping input is a labelling error).
    """
    stamps = np.asarray(timestamps, dtype="datetime64[ns]")
    n_rows = int(stamps.size)
    rows: list[Window] = []
    stamped_inside = np.zeros(n_rows, dtype=bool)
    in_range = np.zeros(n_rows, dtype=bool)
    disagree_inside = 0
    for start, end in limits:
        start_ts, end_ts = np.asarray([start, end], dtype="datetime64[ns]")
        inside = (stamps >= start_ts) & (stamps <= end_ts)
        hits = np.flatnonzero(inside)
        if not hits.size:
            raise ValueError(f"window [{start}, {end}] holds no row of the series")
        first = int(hits[0])
        rest = stamps[first:]
        stops = [n_rows - 1]
        exact = np.flatnonzero(rest == end_ts)
        if exact.size:
            stops.append(first + int(exact[0]))
        past = np.flatnonzero(rest > end_ts)
        if past.size:
            stops.append(first + int(past[0]) - 1)
        last = min(stops)
        rows.append((first, last))
        stamped_inside |= inside
        in_range[first : last + 1] = True
        disagree_inside += int((~inside[first : last + 1]).sum())
    rows.sort()
    for (_, prev_end), (next_start, _) in itertools.pairwise(rows):
        if next_start <= prev_end:
            raise ValueError("anomaly windows overlap; NAB expects them merged")
    return LocatedWindows(
        rows=tuple(rows),
        stamped_inside_scored_outside=int((stamped_inside & ~in_range).sum()),
        scored_inside_stamped_outside=disagree_inside,
    )


def window_rows(
    timestamps: Sequence[np.datetime64] | npt.NDArray[np.datetime64],
    limits: Sequence[tuple[str, str]] | Sequence[tuple[np.datetime64, np.datetime64]],
) -> tuple[Window, ...]:
    """The row ranges of ``locate_windows`` (its rules and errors)."""
    return locate_windows(timestamps, limits).rows


@dataclass(frozen=True, slots=True)
class RowWeights:
    """What a detection at each row of one file would be worth under one profile.

    Attributes:
        weight: the score a detection on that row contributes (true-positive credit inside a
            window, false-positive cost outside).
        window: index of the window holding the row, ``-1`` outside every window.
        scored: ``False`` for probation rows, whose detections NAB ignores.
    """

    weight: FloatArray
    window: IntArray
    scored: BoolArray

    @property
    def scored_windows(self) -> IntArray:
        """Windows with at least one row after probation: the ones that earn or cost."""
        return np.unique(self.window[self.scored & (self.window >= 0)])


def row_weights(
    n_rows: int,
    windows: Sequence[Window],
    profile: CostProfile,
    probation_percent: float = PROBATION_PERCENT,
) -> RowWeights:
    """Weigh every row of a file as NAB's sweep does (see the module docstring)."""
    weight = np.empty(n_rows, dtype=np.float64)
    window_of_row = np.full(n_rows, -1, dtype=np.int64)
    max_tp = scaled_sigmoid(-1.0)
    previous: Window | None = None
    cursor = 0
    for index, (start, end) in enumerate(sorted(windows)):
        _weigh_outside(weight, cursor, start, previous, profile)
        width = end - start + 1
        rows = np.arange(start, end + 1)
        positions = -(end - rows + 1) / width
        weight[start : end + 1] = [
            scaled_sigmoid(float(p)) * profile.tp_weight / max_tp for p in positions
        ]
        window_of_row[start : end + 1] = index
        previous = (start, end)
        cursor = end + 1
    _weigh_outside(weight, cursor, n_rows, previous, profile)
    scored = np.arange(n_rows) >= probation_length(n_rows, probation_percent)
    return RowWeights(weight=weight, window=window_of_row, scored=scored)


def _weigh_outside(
    weight: FloatArray, first: int, stop: int, previous: Window | None, profile: CostProfile
) -> None:
    """False-positive weights for rows ``first..stop-1``, relative to the previous window."""
    if first >= stop:
        return
    if previous is None:
        weight[first:stop] = -profile.fp_weight
        return
    start, end = previous
    width = end - start + 1
    if width <= 1:
        # NAB divides by (width - 1) here; a one-row window leaves no scale, so full cost.
        weight[first:stop] = -profile.fp_weight
        return
    positions = (np.arange(first, stop) - end) / (width - 1)
    weight[first:stop] = [scaled_sigmoid(float(p)) * profile.fp_weight for p in positions]


@dataclass(frozen=True, slots=True)
class FileScore:
    """One file's NAB score at one threshold, with the counts behind it.

    Attributes:
        name: the file, as ``category/name.csv``.
        score: raw NAB score (true-positive credit minus false-negative and false-positive cost).
        detected: windows with at least one scored detection.
        missed: scored windows without detection.
        false_positives: scored detections outside every window.
        first_detections: per scored window, the row of its earliest detection (``None`` if
            missed): the evidence a reader checks against the labels.
    """

    name: str
    score: float
    detected: int
    missed: int
    false_positives: int
    first_detections: tuple[int | None, ...]


def score_detections(
    name: str, detections: BoolArray, windows: Sequence[Window], profile: CostProfile
) -> FileScore:
    """Score one file's boolean detections (one per row) under ``profile``."""
    n_rows = int(detections.size)
    weights = row_weights(n_rows, windows, profile)
    active = np.asarray(detections, dtype=bool) & weights.scored
    score = 0.0
    firsts: list[int | None] = []
    detected = 0
    for index in weights.scored_windows:
        hits = np.flatnonzero(active & (weights.window == index))
        if hits.size:
            detected += 1
            firsts.append(int(hits[0]))
            score += float(weights.weight[hits[0]])
        else:
            firsts.append(None)
            score -= profile.fn_weight
    outside = active & (weights.window < 0)
    score += float(weights.weight[outside].sum())
    return FileScore(
        name=name,
        score=score,
        detected=detected,
        missed=len(firsts) - detected,
        false_positives=int(outside.sum()),
        first_detections=tuple(firsts),
    )


@dataclass(frozen=True, slots=True)
class ScoredSeries:
    """A detector's anomaly scores for one labelled file."""

    name: str
    scores: FloatArray
    windows: tuple[Window, ...]


@dataclass(frozen=True, slots=True)
class CorpusScore:
    """A detector's result on a corpus under one profile, at its corpus-wide best threshold."""

    profile: str
    threshold: float
    raw: float
    null: float
    perfect: float
    files: tuple[FileScore, ...]

    @property
    def normalised(self) -> float:
        """NAB's final score: 0 for the null detector, 100 for the perfect one."""
        return normalise(self.raw, self.null, self.perfect)


def normalise(raw: float, null: float, perfect: float) -> float:
    """``100 * (raw - null) / (perfect - null)``."""
    if perfect == null:
        raise ValueError("perfect and null scores coincide: the corpus has no scored window")
    return 100.0 * (raw - null) / (perfect - null)


def null_and_perfect(series: Sequence[ScoredSeries], profile: CostProfile) -> tuple[float, float]:
    """Scores of a detector that never fires and of one that fires at every window start.

    ``perfect`` credits ``A_TP`` per scored window: the most any detector can earn. (A window
    that starts inside probation but ends after it is still scored; its first row cannot count
    there, so "fires at the window start" is read as "earns the full credit".)
    """
    scored_windows = sum(
        int(row_weights(s.scores.size, s.windows, profile).scored_windows.size) for s in series
    )
    return -profile.fn_weight * scored_windows, profile.tp_weight * scored_windows


def sweep_thresholds(
    series: Sequence[ScoredSeries], profile: CostProfile
) -> tuple[FloatArray, FloatArray]:
    """Raw corpus score at every candidate threshold, highest threshold first.

    Mirrors NAB's sweep: rows of all files, probation excluded, are visited from the highest
    anomaly score down; after each group of equal scores the corpus score is the sum of the best
    credit per window (``-A_FN`` until a row of it is active) and the cost of active rows outside
    windows.

    Returns:
        ``(thresholds, raw_scores)``; the first threshold (1.1) detects nothing.
    """
    scores_parts: list[FloatArray] = []
    weight_parts: list[FloatArray] = []
    window_parts: list[IntArray] = []
    offset = 0
    for item in series:
        _check_scores(item)
        weights = row_weights(item.scores.size, item.windows, profile)
        keep = weights.scored
        scores_parts.append(item.scores[keep])
        weight_parts.append(weights.weight[keep])
        window_ids = weights.window[keep]
        window_parts.append(np.where(window_ids >= 0, window_ids + offset, -1))
        offset += len(item.windows)
    scores = np.concatenate(scores_parts) if scores_parts else np.empty(0)
    weight = np.concatenate(weight_parts) if weight_parts else np.empty(0)
    window = np.concatenate(window_parts) if window_parts else np.empty(0, dtype=np.int64)

    best = dict.fromkeys(np.unique(window[window >= 0]).tolist(), -profile.fn_weight)
    total = sum(best.values())
    order = np.argsort(-scores, kind="stable")
    thresholds = [NO_DETECTION_THRESHOLD]
    totals = [total]
    sorted_scores = scores[order]
    for rank, row in enumerate(order):
        window_id = int(window[row])
        if window_id < 0:
            total += float(weight[row])
        elif weight[row] > best[window_id]:
            total += float(weight[row]) - best[window_id]
            best[window_id] = float(weight[row])
        last_of_group = rank + 1 == order.size or sorted_scores[rank + 1] != sorted_scores[rank]
        if last_of_group:
            thresholds.append(float(sorted_scores[rank]))
            totals.append(total)
    return np.asarray(thresholds), np.asarray(totals)


def score_corpus(series: Sequence[ScoredSeries], profile: CostProfile) -> CorpusScore:
    """Pick the corpus-wide best threshold for ``profile`` and score every file at it.

    Ties go to the highest threshold (the fewest alerts), as NAB's stable sort does.
    """
    thresholds, totals = sweep_thresholds(series, profile)
    best = int(np.argmax(totals))
    threshold = float(thresholds[best])
    files = tuple(
        score_detections(s.name, s.scores >= threshold, s.windows, profile) for s in series
    )
    null, perfect = null_and_perfect(series, profile)
    return CorpusScore(
        profile=profile.name,
        threshold=threshold,
        raw=float(totals[best]),
        null=null,
        perfect=perfect,
        files=files,
    )


def _check_scores(item: ScoredSeries) -> None:
    if not np.all(np.isfinite(item.scores)):
        raise ValueError(f"{item.name}: anomaly scores must be finite")
    if item.scores.size and (item.scores.min() < 0.0 or item.scores.max() > 1.0):
        raise ValueError(f"{item.name}: anomaly scores must lie in [0, 1]")
