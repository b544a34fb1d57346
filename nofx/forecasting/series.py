"""Series as the forecasters take them: one value per step, no holes, and a word on what was done.

Real telemetry is messy: samples arrive twice, out of order or with a clock that jumped back
(a clock change), some are NaN or infinite, and a scrape that failed leaves a gap. `regular`
puts a series on a fixed grid of `step` seconds and reports each repair (`Repairs`), so a
forecast can say what it was built on; nothing here raises on such data.

- duplicate timestamps are averaged into one sample;
- a timestamp earlier than the one before it (the clock went back) is put in time order;
- NaN and infinite values are dropped;
- samples are averaged per step of the grid;
- gaps are filled by linear interpolation, and counted; a gap longer than `max_gap` steps is
  reported as such (the forecast still gets a value there, but should be read with it);
- a series whose last value is older than the grid's end is not extended: the grid ends with
  the last sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from nofx.telemetry.sources import parse_timestamps

FloatArray = npt.NDArray[np.float64]


@dataclass
class Repairs:
    """What `regular` did to a series to make it regular."""

    points_in: int = 0
    dropped_not_finite: int = 0
    duplicate_timestamps: int = 0
    out_of_order: int = 0
    averaged_into_steps: int = 0
    filled_steps: int = 0
    long_gaps: int = 0
    longest_gap_steps: int = 0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "points_in": self.points_in,
            "dropped_not_finite": self.dropped_not_finite,
            "duplicate_timestamps": self.duplicate_timestamps,
            "out_of_order": self.out_of_order,
            "averaged_into_steps": self.averaged_into_steps,
            "filled_steps": self.filled_steps,
            "long_gaps": self.long_gaps,
            "longest_gap_steps": self.longest_gap_steps,
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        parts = [
            f"{n} {what}"
            for n, what in (
                (self.dropped_not_finite, "non-finite values dropped"),
                (self.duplicate_timestamps, "duplicate timestamps averaged"),
                (self.out_of_order, "out-of-order samples sorted"),
                (self.filled_steps, "missing steps interpolated"),
                (self.long_gaps, f"gaps longer than the limit (longest {self.longest_gap_steps})"),
            )
            if n
        ]
        return "; ".join(parts + self.notes) or "clean"


@dataclass
class Regular:
    """A series on a grid: `values[i]` is the mean over the step starting at `start + i*step`."""

    start: float
    step: float
    values: FloatArray
    repairs: Repairs

    @property
    def end(self) -> float:
        """The start of the last step."""
        return self.start + (len(self.values) - 1) * self.step

    def times(self) -> FloatArray:
        return self.start + self.step * np.arange(len(self.values), dtype=np.float64)


def regular(
    timestamps: npt.ArrayLike,
    values: npt.ArrayLike,
    step: float,
    *,
    max_gap: int = 12,
) -> Regular:
    """Put (timestamp, value) samples, in any order and state, on a grid of `step` seconds.

    Raises:
        ValueError: `step` is not positive, or the inputs differ in length.
    """
    if not step > 0:
        raise ValueError(f"step must be positive, not {step!r}")
    stamps = np.asarray(timestamps, dtype=np.float64)
    ys = np.asarray(values, dtype=np.float64)
    if stamps.shape != ys.shape:
        raise ValueError(f"{len(stamps)} timestamps but {len(ys)} values")
    repairs = Repairs(points_in=len(ys))
    finite = np.isfinite(ys) & np.isfinite(stamps)
    repairs.dropped_not_finite = int((~finite).sum())
    stamps, ys = stamps[finite], ys[finite]
    if len(ys) == 0:
        repairs.notes.append("no finite sample")
        return Regular(0.0, step, np.empty(0), repairs)
    repairs.out_of_order = int((np.diff(stamps) < 0).sum())
    if repairs.out_of_order:
        repairs.notes.append("the clock went back at least once (samples put in time order)")
    frame = pd.DataFrame({"t": stamps, "y": ys})
    repairs.duplicate_timestamps = int(frame.duplicated("t").sum())
    start = float(np.floor(stamps.min() / step) * step)
    frame["slot"] = np.floor((frame["t"] - start) / step).astype(np.int64)
    per_slot = frame.groupby("slot", sort=True)["y"].mean()
    repairs.averaged_into_steps = int(len(frame) - repairs.duplicate_timestamps - len(per_slot))
    slots = per_slot.index.to_numpy()
    grid = np.full(int(slots[-1]) + 1, np.nan)
    grid[slots] = per_slot.to_numpy()
    missing = np.isnan(grid)
    repairs.filled_steps = int(missing.sum())
    if repairs.filled_steps:
        runs = _runs(missing)
        repairs.longest_gap_steps = max(runs)
        repairs.long_gaps = sum(1 for r in runs if r > max_gap)
        known = np.flatnonzero(~missing)
        grid[missing] = np.interp(np.flatnonzero(missing), known, grid[known])
    return Regular(start, step, grid, repairs)


def regular_values(values: npt.ArrayLike, step: float, *, start: float = 0.0) -> Regular:
    """A series that is already one value per step (a CSV without a clock): NaN and infinite
    values are interpolated (and counted), nothing else changes."""
    ys = np.asarray(values, dtype=np.float64)
    return regular(start + step * np.arange(len(ys), dtype=np.float64), ys, step, max_gap=12)


def _runs(mask: npt.NDArray[np.bool_]) -> list[int]:
    """Lengths of the runs of True in `mask`."""
    padded = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return [int(b - a) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def read_csv(path: str | Path, step: float) -> dict[str, Regular]:
    """Every numeric column of a CSV as a series on a grid of `step` seconds.

    A column named `timestamp` is the clock (dates in any format pandas parses, or numbers:
    epoch seconds, or milliseconds when they are that large; unparseable stamps are dropped
    like NaN values); without one, row i is step i. Columns with no number are left out.
    """
    frame = pd.read_csv(path)
    clock = None
    if "timestamp" in frame.columns:
        clock = _clock(frame.pop("timestamp"))
    found: dict[str, Regular] = {}
    for column in frame.columns:
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
        if not np.isfinite(values).any():
            continue
        found[str(column)] = (
            regular(clock, values, step) if clock is not None else regular_values(values, step)
        )
    return found


def _clock(column: pd.Series) -> FloatArray:
    """Epoch seconds of a timestamp column (NaN where a cell does not parse)."""
    stamps = parse_timestamps(column)
    seconds: FloatArray = stamps.asi8.astype(np.float64) / 1e9
    seconds[stamps.isna()] = np.nan
    return seconds
