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
"""

from __future__ import annotations

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
        A float64 series with a strictly increasing UTC DatetimeIndex named ``ts``, the input's
        name, never raising on empty or all-invalid input (it returns an empty series).

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

    index = _utc_index(series.index)
    values = pd.to_numeric(series.reset_index(drop=True), errors="coerce")
    numbers = values.to_numpy(dtype="float64", na_value=np.nan)
    valid = ~index.isna() & np.isfinite(numbers)
    stamps = index.asi8[valid]
    numbers = numbers[valid]

    if step_ns is None:
        if len(stamps):
            stamps, numbers = _merge_duplicates(stamps, numbers, duplicates)
        keep = np.ones(len(stamps), dtype=bool)
        if start_ns is not None:
            keep &= stamps >= start_ns
        if end_ns is not None:
            keep &= stamps <= end_ns
        return _series(stamps[keep], numbers[keep], name)

    # Gridded: integer grid positions k, point time = origin + k * step.
    if start_ns is not None:
        origin = start_ns
    elif len(stamps):
        origin = (int(stamps.min()) // step_ns) * step_ns
    else:
        return empty_series(name)
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
        return empty_series(name)

    grid_lo = int(positions.min()) if len(positions) else k_first
    grid_hi = int(positions.max()) if len(positions) else k_last
    if k_first is not None:
        grid_lo = min(grid_lo, k_first) if grid_lo is not None else k_first
    if k_last is not None:
        grid_hi = k_last
    assert grid_lo is not None
    assert grid_hi is not None
    if grid_hi < grid_lo:
        return empty_series(name)
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
    grid = _fill_short_gaps(grid, max_gap_steps)

    first_kept = (k_first if k_first is not None else grid_lo) - grid_lo
    grid = grid[first_kept:]
    grid_stamps = origin + (np.arange(first_kept, size, dtype="int64") + grid_lo) * step_ns
    if long_gaps == "drop":
        present = ~np.isnan(grid)
        grid, grid_stamps = grid[present], grid_stamps[present]
    return _series(grid_stamps, grid, name)


def _series(stamps_ns: np.ndarray, values: np.ndarray, name: Any) -> pd.Series:
    if not len(stamps_ns):
        return empty_series(name)
    index = pd.DatetimeIndex(pd.to_datetime(stamps_ns, unit="ns", utc=True), name=INDEX_NAME)
    return pd.Series(values.astype("float64"), index=index.as_unit("ns"), name=name)
