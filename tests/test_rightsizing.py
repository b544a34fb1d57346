"""Rightsizing on series whose right size can be worked out by hand, and its benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nofx.forecasting.series import Regular, Repairs, regular, regular_values
from nofx.optimization.rightsizing import recommend
from tests.helpers import run_benchmark

STEP = 300.0
DAY = 288
HOUR = 12


def bumpy(days: int, *, seed: int = 2) -> np.ndarray:
    """10 all day, 20 from 12:00 to 13:00, and a little noise."""
    rng = np.random.default_rng(seed)
    values = 10 + 0.1 * rng.standard_normal(days * DAY)
    for d in range(days):
        values[d * DAY + 12 * HOUR : d * DAY + 13 * HOUR] += 10
    return values


def test_a_daily_bump_is_sized_for_its_hour_and_not_all_day() -> None:
    made = recommend(regular_values(bumpy(8), STEP))
    assert made.days == 7
    assert made.notes == []
    at = made.end + STEP * np.arange(DAY)  # the next day, from 00:00 (the series starts at 0)
    size = made.size_at(at)
    hour = (np.arange(DAY) // HOUR).astype(int)
    # the quiet hours: 10 and the noise's headroom; the bump's hour and the hour either side of
    # it (an hour's slack each way, for a bump that comes a little early or late): the bump's
    # level, 20, less at most two standard deviations of the noise (the profile is the usual
    # day's peak, not the highest of all)
    assert np.all(size[(hour <= 10) | (hour >= 14)] < 10.6)
    assert np.all(size[(hour >= 11) & (hour <= 13)] >= 19.8)
    assert made.static() == pytest.approx(float(size.max()))
    assert made.headroom < 0.6  # calibrated on the noise, not a 15% margin (1.5 at 10)
    assert made.exceed_probability is not None
    assert made.exceed_probability <= 0.02


def test_a_rising_series_is_sized_for_where_it_will_be() -> None:
    days = 8
    values = 10 + np.repeat(np.arange(days, dtype=float), DAY)  # +1 a day, flat within a day
    made = recommend(regular_values(values, STEP))
    assert made.trend_per_day == pytest.approx(1.0, abs=1e-6)
    tomorrow = made.size_at([made.end + STEP])[0]
    assert tomorrow >= 10 + days  # the next day's level, 18, not the last day's 17
    later = made.size_at([made.end + 2 * 86_400 - STEP])[0]
    assert later == pytest.approx(tomorrow + 1.0)  # a day on, a day's growth more
    falling = recommend(regular_values(values[::-1].copy(), STEP))
    assert falling.trend_per_day == 0.0  # never sized below what was seen because it fell


def test_short_histories_say_how_they_were_sized() -> None:
    half = recommend(regular_values(np.full(DAY // 2, 10.0), STEP))
    assert half.size_at([half.end])[0] == pytest.approx(11.5)
    assert "under a day" in half.notes[0]
    two = recommend(regular_values(bumpy(2), STEP))
    assert two.exceed_probability is None
    assert "too few to calibrate" in two.notes[0]
    assert two.static() >= 20 * 1.15 - 0.5


def test_messy_input_is_repaired_and_reported_and_bad_input_refused() -> None:
    values = bumpy(6)
    times = np.arange(len(values)) * STEP
    times = np.concatenate([times[:100], [times[99]], times[100:]])  # a duplicate
    values = np.concatenate([values[:100], [values[99]], values[100:]])
    values[300] = np.nan
    made = recommend(regular(times, values, STEP))
    assert any("duplicate" in note and "non-finite" in note for note in made.notes)
    with pytest.raises(ValueError, match="risk"):
        recommend(regular_values(bumpy(6), STEP), risk=0.0)
    with pytest.raises(ValueError, match="finite"):
        recommend(Regular(0.0, STEP, np.full(10, np.nan), Repairs()))
    with pytest.raises(ValueError, match="divide a day"):
        recommend(regular_values(bumpy(6), 7.0))


def test_the_benchmark_judges_each_day_against_the_allocation_or_the_peak(tmp_path: Path) -> None:
    used = bumpy(9)
    rows = ["used_mem,assigned_used_mem,cpu"]
    rows += [f"{u},{30.0},{u / 2}" for u in used]
    csv = tmp_path / "trace.csv"
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "rightsizing.json"
    run_benchmark("rightsizing.py", "--data", str(csv), "--out", str(out), timeout=300)
    report = json.loads(out.read_text())
    rows_by = {(r["series"], r["strategy"]): r for r in report["results"]}
    assert {s for s, _ in rows_by} == {"used_mem", "cpu"}  # the allocation is no series
    assert {r["strategy"] for r in report["results"]} == {"nofx", "vpa", "krr"}
    mine = rows_by[("used_mem", "nofx")]
    assert mine["baseline"] == "allocation"
    assert mine["days"] == 2
    # sized ~10.4 most of the day and ~20.4 for three hours, against 30 allocated
    assert 0.45 < mine["saving"] < 0.65
    assert mine["over_ratio"] <= 0.02
    # VPA's memory rule on daily peaks: p90 of ~20.3 plus 15%; KRR's: the peak plus 15%
    assert rows_by[("used_mem", "vpa")]["saving"] == pytest.approx(1 - 1.15 * 20.3 / 30, abs=0.02)
    assert rows_by[("cpu", "nofx")]["baseline"] == "peak+15%"
    assert {(s["baseline"], s["strategy"]) for s in report["summary"]} == {
        (b, s) for b in ("allocation", "peak+15%") for s in ("nofx", "vpa", "krr")
    }
