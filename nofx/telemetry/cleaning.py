"""Turning raw metric samples into series a detector can trust.

Telemetry arrives dirty from every source: a scrape that fails leaves a hole, a retried write
repeats a timestamp, a CSV export holds rows out of order or ``NaN``, a Prometheus API answers
``"NaN"`` or ``"+Inf"``. Detectors must never crash on that and must never be fed data that was
not observed, so ``clean_series`` is the one place where all of it is decided, the same way for
every source (scrape, Prometheus, CSV replay).

Rules, and why:

* Non-finite values and unparseable timestamps are dropped: they carry no measurement.
* Samples with the same timestamp are merged by ``duplicates`` (default ``"max"``): the result
  then does not depend on the order rows arrived in, needs no arithmetic (no rounding), is
  right for counters (a later sample of a monotonic counter is never smaller) and keeps a spike
  of a gauge visible rather than averaging it away.
* With a ``step``, samples are put on the grid ``origin + k * step``; the value at a grid point
  ``t`` is the latest sample in ``(t - step, t]``. Only past samples feed a point, so a detector
  that sees the series up to ``t`` never sees the future.
* A short gap (at most ``max_gap_steps`` grid points in a row without a sample) is filled with the
  last observed value, as Prometheus does within its look-back window: a missed scrape is not an
  event. A longer gap is left missing, entirely (never half-filled), because carrying a value
  across it would invent data; the points are dropped or kept as ``NaN`` (``long_gaps``). Nothing
  before the first sample is ever filled.
* Rows stamped behind the newest row before them (a clock set back, say an hour at a daylight
  saving change, or a late write) are put in time order; where their timestamp is taken they are
  merged like any duplicate.

What was done is never silent: ``clean_with_report`` returns the series with a
``CleaningReport``, which holds the input's ``RowAudit`` (``audit_rows``: rows in arrival order,
classed against the newest row before them, and the gaps of their time axis) and what cleaning
did about it. ``clean_series`` is the same cleaning without the report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd

DuplicatePolicy = Literal["max", "min", "mean", "first", "last"]
"""How samples with one timestamp merge; ``first``/``last`` follow the input's order."""

LongGapPolicy = Literal["drop", "nan"]
"""What happens to grid points of a long gap: left out of the index, or kept as ``NaN``."""

DEFAULT_MAX_GAP_STEPS = 3
"""Grid points in a row that may be filled from the last sample (a few missed scrapes)."""

MAX_GRID_POINTS = 5_000_000
"""Refuse grids larger than this: a tiny step over a long range is a caller's mistake, and
materialising it would exhaust memory rather than fail with a message."""

INDEX_NAME = "ts"

GAP_FACTOR = 1.5
"""A step of the time axis longer than this many typical steps is a gap: at least one sample
is missing (the typical step is the grid's, else the median step of the series)."""


@dataclass(frozen=True, slots=True)
class RowAudit:
    """What is odd about a series' rows, in the order they arrived.

    Attributes:
        rows: every row.
        bad_timestamps: rows whose timestamp does not parse.
        non_finite: rows with a timestamp whose value is NaN, infinite or not a number.
        repeated: finite rows stamped the same as the newest finite row before them.
        behind: finite rows stamped before the newest finite row before them (a clock set
            back, a late write).
        clock_set_back: times a finite row is stamped before the finite row just before it.
        largest_behind_seconds: how far behind the newest row the furthest such row was.
        gaps: steps of the sorted, distinct timestamps longer than ``GAP_FACTOR`` typical steps.
        largest_gap_seconds: the longest such step (0 without gaps).
    """

    rows: int = 0
    bad_timestamps: int = 0
    non_finite: int = 0
    repeated: int = 0
    behind: int = 0
    clock_set_back: int = 0
    largest_behind_seconds: float = 0.0
    gaps: int = 0
    largest_gap_seconds: float = 0.0

    @property
    def odd(self) -> int:
        """Rows that are unusable or out of order (gaps are no rows, so not counted)."""
        return self.bad_timestamps + self.non_finite + self.repeated + self.behind

    def as_dict(self) -> dict[str, Any]:
        """The counts by name, for JSON reports."""
        return asdict(self)

    def describe(self) -> str:
        """One clause per kind of oddity found, or ``"no odd rows"``."""
        parts: list[str] = []
        if self.bad_timestamps:
            parts.append(f"{self.bad_timestamps} with an unparseable timestamp")
        if self.non_finite:
            parts.append(f"{self.non_finite} with a non-finite value")
        if self.repeated:
            parts.append(f"{self.repeated} repeating the newest timestamp")
        if self.behind:
            parts.append(
                f"{self.behind} stamped behind the newest (clock set back "
                f"{self.clock_set_back}x, up to {_duration(self.largest_behind_seconds)})"
            )
        if self.gaps:
            plural = "s" if self.gaps > 1 else ""
            parts.append(f"{self.gaps} gap{plural} (longest {_duration(self.largest_gap_seconds)})")
        return "; ".join(parts) or "no odd rows"


@dataclass(frozen=True, slots=True)
class CleaningReport:
    """What ``clean_series`` found in its input and what it did about it.

    Attributes:
        audit: the input's rows (see ``RowAudit``).
        dropped: rows left out for an unparseable timestamp or a non-finite value.
        duplicates_merged: finite rows merged into another one with the same timestamp (a
            repeated or a behind row whose timestamp was already taken), by ``duplicate_policy``.
        duplicate_policy: how they merged.
        sorted_into_place: rows stamped behind the newest before them, now in time order.
        points_filled: grid points of short gaps carried from the last sample (gridded only).
        points_missing: grid points of long gaps, left out or ``NaN`` (gridded only).
    """

    audit: RowAudit
    dropped: int = 0
    duplicates_merged: int = 0
    duplicate_policy: str = "max"
    sorted_into_place: int = 0
    points_filled: int = 0
    points_missing: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Everything by name (the audit nested), for JSON reports and structured logs."""
        return asdict(self)

    def describe(self) -> str:
        """What was found, then what was done: one line for a log or a report."""
        done: list[str] = []
        if self.dropped:
            done.append(f"{self.dropped} dropped")
        if self.sorted_into_place:
            done.append(f"{self.sorted_into_place} sorted into place")
        if self.duplicates_merged:
            done.append(f"{self.duplicates_merged} merged ({self.duplicate_policy})")
        if self.points_filled:
            done.append(f"{self.points_filled} grid points filled")
        if self.points_missing:
            done.append(f"{self.points_missing} grid points missing")
        found = f"{self.audit.rows} rows: {self.audit.describe()}"
        return f"{found}; {', '.join(done)}" if done else found


@dataclass(frozen=True, slots=True)
class CleanedSeries:
    """A cleaned series and its report."""

    series: pd.Series
    report: CleaningReport


def _duration(seconds: float) -> str:
    """``55 min``, ``2 h``, ``3.5 d``: how long a gap or a clock set back was."""
    if seconds < 120:
        return f"{seconds:g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 86_400:.3g} d"


def empty_series(name: Any = None) -> pd.Series:
    """An empty cleaned series: UTC DatetimeIndex, float values.

    Every source returns this shape when it has no data, so callers need no special case.
    """
    index = pd.DatetimeIndex([], tz="UTC", name=INDEX_NAME).as_unit("ns")
    return pd.Series([], index=index, dtype="float64", name=name)


def to_utc_timestamp(value: datetime | pd.Timestamp | str) -> pd.Timestamp:
    """``value`` as a UTC ``Timestamp`` in nanoseconds; a naive value is taken as UTC.

    Naive datetimes are read as UTC (not local time) because every timestamp the platform
    stores is UTC and a server's local zone must not change what a query returns.
    """
    stamp = pd.Timestamp(value)
    if stamp is pd.NaT:
        raise ValueError(f"not a timestamp: {value!r}")
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.as_unit("ns")


def step_nanoseconds(step: timedelta | pd.Timedelta | str) -> int:
    """``step`` in whole nanoseconds.

    Raises:
        ValueError: the step is not positive.
    """
    delta = pd.Timedelta(step)
    if delta is pd.NaT or delta <= pd.Timedelta(0):
        raise ValueError(f"step must be a positive duration, got {step!r}")
    return int(delta.as_unit("ns").value)


def _utc_index(index: pd.Index) -> pd.DatetimeIndex:
    """The index as UTC nanosecond timestamps; unparseable entries become NaT."""
    if isinstance(index, pd.DatetimeIndex):
        converted = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    elif pd.api.types.is_numeric_dtype(index.dtype):
        # Numbers are Unix seconds, as in Prometheus' API and most CSV exports.
        converted = pd.DatetimeIndex(pd.to_datetime(index, unit="s", utc=True, errors="coerce"))
    else:
        converted = pd.DatetimeIndex(
            pd.to_datetime(
                pd.Series(index, dtype="object"), utc=True, errors="coerce", format="mixed"
            )
        )
    return converted.as_unit("ns")


def _audit(index: pd.DatetimeIndex, numbers: np.ndarray, step_ns: int | None) -> RowAudit:
    """``RowAudit`` of parsed rows (see ``audit_rows``)."""
    bad_stamp = np.asarray(index.isna())
    finite = ~bad_stamp & np.isfinite(numbers)
    stamps = index.asi8[finite]
    repeated = behind = set_back = 0
    largest_behind = 0
    if stamps.size > 1:
        newest_before = np.maximum.accumulate(stamps)[:-1]
        later = stamps[1:]
        repeated = int((later == newest_before).sum())
        behind_by = newest_before - later
        behind = int((behind_by > 0).sum())
        largest_behind = int(behind_by.max(initial=0))
        set_back = int((later < stamps[:-1]).sum())
    # Gaps are holes in the time axis: a row with a NaN value still marks its time as seen.
    axis = np.unique(index.asi8[~bad_stamp])
    steps = np.diff(axis)
    typical = step_ns if step_ns is not None else (float(np.median(steps)) if steps.size else 0)
    long_steps = steps[steps > GAP_FACTOR * typical] if typical else steps[:0]
    return RowAudit(
        rows=len(numbers),
        bad_timestamps=int(bad_stamp.sum()),
        non_finite=int((~bad_stamp & ~np.isfinite(numbers)).sum()),
        repeated=repeated,
        behind=behind,
        clock_set_back=set_back,
        largest_behind_seconds=largest_behind / 1e9,
        gaps=int(long_steps.size),
        largest_gap_seconds=float(long_steps.max(initial=0)) / 1e9,
    )


def _parse(series: pd.Series) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """The index as UTC nanoseconds (NaT where unparseable) and the values as floats."""
    index = _utc_index(series.index)
    values = pd.to_numeric(series.reset_index(drop=True), errors="coerce")
    return index, values.to_numpy(dtype="float64", na_value=np.nan)


def audit_rows(series: pd.Series, step: timedelta | pd.Timedelta | str | None = None) -> RowAudit:
    """What is odd about ``series``' rows, in the order given, without changing anything.

    For callers that must keep every row where it is (the NAB benchmark scores rows in file
    order) but still report what the rows hold. Indexes and values are read as by
    ``clean_series``; ``step`` is the typical step gaps are measured against (else the median).
    """
    index, numbers = _parse(series)
    return _audit(index, numbers, step_nanoseconds(step) if step is not None else None)


def _merge_duplicates(
    stamps: np.ndarray, values: np.ndarray, duplicates: DuplicatePolicy
) -> tuple[np.ndarray, np.ndarray]:
    """Sort by time and merge equal timestamps; returns unique sorted stamps and their values."""
    if duplicates in ("first", "last"):
        order = np.argsort(stamps, kind="stable")
    else:
        # Sort by value inside a timestamp too, so even "mean" sums in one fixed order.
        order = np.lexsort((values, stamps))
    grouped = pd.Series(values[order]).groupby(stamps[order], sort=True)
    if duplicates == "max":
        merged = grouped.max()
    elif duplicates == "min":
        merged = grouped.min()
    elif duplicates == "mean":
        merged = grouped.mean()
    elif duplicates == "first":
        merged = grouped.first()
    elif duplicates == "last":
        merged = grouped.last()
    else:
        raise ValueError(f"unknown duplicates policy {duplicates!r}")
    return merged.index.to_numpy(dtype="int64"), merged.to_numpy(dtype="float64")


def _fill_short_gaps(values: np.ndarray, max_gap_steps: int) -> np.ndarray:
    """Forward-fill runs of NaN no longer than ``max_gap_steps`` that follow a value."""
    n = len(values)
    missing = np.isnan(values)
    if not missing.any() or max_gap_steps <= 0:
        return values
    positions = np.arange(n)
    last_valid = np.maximum.accumulate(np.where(missing, -1, positions))
    next_valid = np.minimum.accumulate(np.where(missing, n, positions)[::-1])[::-1]
    run_length = next_valid - last_valid - 1
    fill = missing & (last_valid >= 0) & (run_length <= max_gap_steps)
    filled = values.copy()
    filled[fill] = values[last_valid[fill]]
    return filled


def clean_with_report(
    series: pd.Series,
    step: timedelta | pd.Timedelta | str | None = None,
    *,
    start: datetime | pd.Timestamp | str | None = None,
    end: datetime | pd.Timestamp | str | None = None,
    max_gap_steps: int = DEFAULT_MAX_GAP_STEPS,
    duplicates: DuplicatePolicy = "max",
    long_gaps: LongGapPolicy = "drop",
) -> CleanedSeries:
    """Clean one metric series: finite values on a sorted, unique UTC index, optionally gridded.

    Args:
        series: values indexed by time. A naive DatetimeIndex is taken as UTC, a numeric index as
            Unix seconds, anything else is parsed; values are coerced to float. Unparseable
            timestamps and values are dropped, as are NaN and infinities.
        step: when given, the result lies on the grid ``origin + k * step`` (see the module
            docstring for which sample feeds a point and how gaps are handled). ``origin`` is
            ``start`` when given, else the first sample's time rounded down to a multiple of
            ``step`` since the Unix epoch, so independent queries share a grid.
        start: keep only points at or after this time. Samples up to ``max_gap_steps`` steps
            before it still fill the first points, like Prometheus' look-back.
        end: keep only points at or before this time.
        max_gap_steps: the longest run of missing grid points that is filled; 0 fills nothing.
        duplicates: how samples with the same timestamp merge (default ``"max"``, see above).
        long_gaps: ``"drop"`` leaves unfilled grid points out (every value is finite);
            ``"nan"`` keeps them as ``NaN`` so the index is the complete grid.

    Returns:
        The series — float64, a strictly increasing UTC DatetimeIndex named ``ts``, the input's
        name, empty (never an error) on empty or all-invalid input — and the ``CleaningReport``
        of what was found and done.

    Raises:
        ValueError: ``step`` is not positive, ``max_gap_steps`` is negative, a policy is unknown,
            or the grid would exceed ``MAX_GRID_POINTS`` points.
    """
    if max_gap_steps < 0:
        raise ValueError(f"max_gap_steps must be >= 0, got {max_gap_steps}")
    if long_gaps not in ("drop", "nan"):
        raise ValueError(f"unknown long_gaps policy {long_gaps!r}")
    name = series.name
    step_ns = step_nanoseconds(step) if step is not None else None
    start_ns = int(to_utc_timestamp(start).value) if start is not None else None
    end_ns = int(to_utc_timestamp(end).value) if end is not None else None

    index, numbers = _parse(series)
    valid = ~index.isna() & np.isfinite(numbers)
    stamps = index.asi8[valid]
    distinct, first_index = np.unique(stamps, return_index=True)
    first_seen = np.zeros(stamps.size, dtype=bool)
    first_seen[first_index] = True
    newest_before = np.maximum.accumulate(np.r_[np.iinfo(np.int64).min, stamps[:-1]])
    cleaned, filled, missing = _clean(
        stamps,
        numbers[valid],
        name,
        step_ns,
        start_ns,
        end_ns,
        max_gap_steps,
        duplicates,
        long_gaps,
    )
    report = CleaningReport(
        audit=_audit(index, numbers, step_ns),
        dropped=int((~valid).sum()),
        duplicates_merged=int(stamps.size - distinct.size),
        duplicate_policy=duplicates,
        sorted_into_place=int((first_seen & (stamps < newest_before)).sum()),
        points_filled=filled,
        points_missing=missing,
    )
    return CleanedSeries(cleaned, report)


def clean_series(
    series: pd.Series,
    step: timedelta | pd.Timedelta | str | None = None,
    *,
    start: datetime | pd.Timestamp | str | None = None,
    end: datetime | pd.Timestamp | str | None = None,
    max_gap_steps: int = DEFAULT_MAX_GAP_STEPS,
    duplicates: DuplicatePolicy = "max",
    long_gaps: LongGapPolicy = "drop",
) -> pd.Series:
    """The series of ``clean_with_report`` (same arguments, rules and errors), without report."""
    return clean_with_report(
        series,
        step,
        start=start,
        end=end,
        max_gap_steps=max_gap_steps,
        duplicates=duplicates,
        long_gaps=long_gaps,
    ).series


def _clean(
    stamps: np.ndarray,
    numbers: np.ndarray,
    name: Any,
    step_ns: int | None,
    start_ns: int | None,
    end_ns: int | None,
    max_gap_steps: int,
    duplicates: DuplicatePolicy,
    long_gaps: LongGapPolicy,
) -> tuple[pd.Series, int, int]:
    """Clean finite samples (file order); also the grid points filled and left missing."""
    if step_ns is None:
        if len(stamps):
            stamps, numbers = _merge_duplicates(stamps, numbers, duplicates)
        keep = np.ones(len(stamps), dtype=bool)
        if start_ns is not None:
            keep &= stamps >= start_ns
        if end_ns is not None:
            keep &= stamps <= end_ns
        return _series(stamps[keep], numbers[keep], name), 0, 0

    # Gridded: integer grid positions k, point time = origin + k * step.
    if start_ns is not None:
        origin = start_ns
    elif len(stamps):
        origin = (int(stamps.min()) // step_ns) * step_ns
    else:
        return empty_series(name), 0, 0
    k_first = 0 if start_ns is not None else None
    k_last = (end_ns - origin) // step_ns if end_ns is not None else None

    if len(stamps):
        # ceil((t - origin) / step): the sample at t feeds the first grid point at or after t.
        positions = -((origin - stamps) // step_ns)
        lowest_useful = (k_first - max_gap_steps - 1) if k_first is not None else None
        keep = np.ones(len(positions), dtype=bool)
        if lowest_useful is not None:
            keep &= positions >= lowest_useful
        if k_last is not None:
            keep &= positions <= k_last
        stamps, numbers, positions = stamps[keep], numbers[keep], positions[keep]
    else:
        positions = np.array([], dtype="int64")

    if len(stamps):
        stamps, numbers = _merge_duplicates(stamps, numbers, duplicates)
        positions = -((origin - stamps) // step_ns)
    elif k_first is None or k_last is None or long_gaps == "drop":
        return empty_series(name), 0, 0

    grid_lo = int(positions.min()) if len(positions) else k_first
    grid_hi = int(positions.max()) if len(positions) else k_last
    if k_first is not None:
        grid_lo = min(grid_lo, k_first) if grid_lo is not None else k_first
    if k_last is not None:
        grid_hi = k_last
    assert grid_lo is not None
    assert grid_hi is not None
    if grid_hi < grid_lo:
        return empty_series(name), 0, 0
    size = grid_hi - grid_lo + 1
    if size > MAX_GRID_POINTS:
        raise ValueError(
            f"a step of {pd.Timedelta(step_ns, unit='ns')} makes {size} points "
            f"(limit {MAX_GRID_POINTS}); use a coarser step or a shorter range"
        )

    grid = np.full(size, np.nan)
    if len(positions):
        # Stamps are sorted and unique, so the last sample of each grid bucket is its latest.
        slots = positions - grid_lo
        last_of_slot = np.r_[slots[1:] != slots[:-1], True]
        grid[slots[last_of_slot]] = numbers[last_of_slot]
    first_kept = (k_first if k_first is not None else grid_lo) - grid_lo
    missing_before = int(np.isnan(grid[first_kept:]).sum())
    grid = _fill_short_gaps(grid, max_gap_steps)[first_kept:]
    missing = int(np.isnan(grid).sum())
    grid_stamps = origin + (np.arange(first_kept, size, dtype="int64") + grid_lo) * step_ns
    if long_gaps == "drop":
        present = ~np.isnan(grid)
        grid, grid_stamps = grid[present], grid_stamps[present]
    return _series(grid_stamps, grid, name), missing_before - missing, missing


def _series(stamps_ns: np.ndarray, values: np.ndarray, name: Any) -> pd.Series:
    if not len(stamps_ns):
        return empty_series(name)
    index = pd.DatetimeIndex(pd.to_datetime(stamps_ns, unit="ns", utc=True), name=INDEX_NAME)
    return pd.Series(values.astype("float64"), index=index.as_unit("ns"), name=name)
