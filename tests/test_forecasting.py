"""Forecasts, intervals, time to exhaustion and maintenance windows on hand-checkable series."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from models.forecasting import ForecastRequest
from nofx.forecasting.direct import DirectLightGBM, Track, scale_of
from nofx.forecasting.exhaustion import (
    Peaks,
    Quantiles,
    assess,
    exhaustion,
    recent_trend,
    seasonal_expectation,
    usual_peak,
    usual_rise,
)
from nofx.forecasting.forecaster import (
    OWN_PATHS,
    Forecaster,
    _calibration_errors,
    seasonal_naive_paths,
)
from nofx.forecasting.series import read_csv, regular, regular_values
from nofx.maintenance.windows import DisruptionBudget, Interval, choose_window
from tests.helpers import run_benchmark

ROOT = Path(__file__).resolve().parent.parent
STEP = 300.0
DAY = 288


def daily(days: int, *, noise: float = 0.02, seed: int = 1) -> np.ndarray:
    """A daily cycle around 10 with a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(days * DAY)
    return 10 + 2 * np.sin(2 * np.pi * t / DAY) + noise * rng.standard_normal(len(t))


def test_messy_samples_are_put_on_the_grid_and_every_repair_is_counted() -> None:
    # 0, 300 (twice), 900 (600 missing), a NaN, then the clock goes back to 600
    stamps = [0.0, 300.0, 300.0, 900.0, 1200.0, 600.0, 1500.0]
    values = [1.0, 2.0, 4.0, 6.0, math.nan, 5.0, 8.0]
    reg = regular(stamps, values, STEP)
    assert reg.values.tolist() == [1.0, 3.0, 5.0, 6.0, 7.0, 8.0]
    r = reg.repairs
    assert (r.points_in, r.dropped_not_finite, r.duplicate_timestamps) == (7, 1, 1)
    assert r.out_of_order == 1
    assert r.filled_steps == 1  # 1200 (its value was NaN), interpolated
    assert "clock went back" in r.summary()
    gap = regular([0.0, 300.0, 30_000.0], [1.0, 1.0, 2.0], STEP, max_gap=12)
    assert (gap.repairs.long_gaps, gap.repairs.longest_gap_steps) == (1, 98)
    assert regular([], [], STEP).repairs.summary() == "no finite sample"
    with pytest.raises(ValueError, match="step must be positive"):
        regular([0.0], [1.0], 0)
    assert regular_values([1.0, math.inf, 3.0], STEP).values.tolist() == [1.0, 2.0, 3.0]


def test_a_daily_cycle_is_forecast_within_its_bands() -> None:
    values = daily(8)
    history, future = values[: 7 * DAY], values[7 * DAY : 7 * DAY + DAY]
    made = Forecaster((12, DAY)).forecast([("cycle", regular_values(history, STEP))])
    day = made[DAY][0]
    assert day.model in ("lightgbm", "lightgbm+naive", "seasonal_naive")
    assert set(day.backtest_mae) >= {"naive", "seasonal_naive", "lightgbm"}
    assert day.backtest_mae[day.model] == min(day.backtest_mae.values())
    error = np.mean(np.abs(day.mean - future))
    naive_error = np.mean(np.abs(history[-1] - future))
    assert error < 0.2 * naive_error  # it knows the cycle; the naive forecast does not
    inside95 = np.mean((future >= day.lower(95)) & (future <= day.upper(95)))
    assert inside95 >= 0.8
    assert np.all(day.lower(95) <= day.lower(80))
    assert np.all(day.upper(80) <= day.upper(95))
    assert len(made[12][0].mean) == 12
    assert day.times()[0] == pytest.approx(day.origin_time + STEP)


def test_a_series_band_comes_from_its_own_errors_where_it_has_enough_paths() -> None:
    stride, steps = 12, 48
    own = np.full((OWN_PATHS, steps), 1.0)  # 30 paths, one every 12 steps
    pooled = np.vstack([own, np.full((2 * OWN_PATHS, steps), 5.0)])  # restless family members
    errors = _calibration_errors(own, pooled, stride)
    # up to 12 steps ahead its 30 paths do not overlap: its own errors alone, the rest NaN
    assert np.all(errors[:OWN_PATHS, :stride] == 1.0)
    assert np.all(np.isnan(errors[OWN_PATHS:, :stride]))
    # 13 steps ahead each path overlaps the next: 30 * 12 / 13 < 30, so the family's errors
    assert np.array_equal(errors[:, stride:], pooled[:, stride:])


def test_the_direct_model_continues_a_ramp_it_has_seen() -> None:
    # trees do not extrapolate levels, but the model predicts changes: a steady climb goes on
    values = 0.01 * np.arange(4 * DAY, dtype=float)
    track = Track(values, 0.0, STEP, scale_of(values))
    model = DirectLightGBM(48)
    assert model.fit([track])
    path = model.predict(track, np.array([len(values) - 1]), 48)[0]
    expected = values[-1] + 0.01 * np.arange(1, 49)
    assert np.max(np.abs(path - expected)) < 0.05
    assert not DirectLightGBM(48).fit([Track(values[:100], 0.0, STEP, 1.0)])  # too short


def test_seasonal_naive_repeats_the_day_before() -> None:
    values = np.arange(2 * DAY, dtype=float)
    path = seasonal_naive_paths(values, np.array([2 * DAY - 1]), 3, DAY)[0]
    assert path.tolist() == [float(DAY), float(DAY + 1), float(DAY + 2)]


def test_time_to_exhaustion_on_a_known_ramp() -> None:
    rng = np.random.default_rng(3)
    t = np.arange(0, 36 * STEP, STEP)  # three hours of samples
    values = 50 + t / 600 + 0.2 * rng.standard_normal(len(t))  # +1 every 10 minutes
    ahead = t[-1] + STEP * np.arange(1, 37)
    trend = recent_trend(t, values, ahead)
    assert trend is not None
    found = exhaustion(trend, 70.0, "trend")
    now = t[-1]
    level = 50 + now / 600  # 67.5
    truth = now + (70 - level) * 600
    assert found.eta is not None
    assert abs(found.eta - truth) < 1200
    assert found.earliest is not None
    assert found.earliest <= found.eta
    assert found.latest is None or found.latest >= found.eta
    assert found.probability > 0.9
    flat = 50 + 0.2 * rng.standard_normal(len(t))
    assert recent_trend(t, flat, ahead) is None  # no rise with 95% confidence
    assert exhaustion(trend, 1e6, "trend").source == "none"


def test_a_leak_on_a_spiky_series_fails_at_its_peaks_and_is_timed_by_them() -> None:
    rng = np.random.default_rng(5)
    n = 3 * DAY
    values = 10 + 0.1 * rng.standard_normal(n)
    values[::24] += 6.0  # a spike of +6 every two hours
    assert usual_peak(values, 12) == pytest.approx(6.0, abs=0.5)
    assert usual_peak(values[:10], 12) == 0.0  # too short to tell
    flat = np.full(40, 10.0)
    assert usual_peak(flat, 12) == 0.0  # no excursion, never negative
    # From two days on, a leak of +1 an hour: the level reaches 30 after 20 hours; its spikes
    # reach 30 when the level is at 24, six hours earlier.
    leak = values.copy()
    start = 2 * DAY
    leak[start:] += np.arange(n - start) / 12.0
    now = start + 12 * 12  # twelve hours in: level 22
    warning = assess(0.0, STEP, leak[: now + 1], 30.0, DAY)
    assert warning is not None
    assert warning.source.startswith("trend")
    assert warning.limit == 30.0
    assert warning.probability >= 0.8
    assert warning.eta is not None
    hours_left = (warning.eta - now * STEP) / 3600
    assert 1.0 < hours_left < 3.5  # the peaks' two hours, not the level's eight
    # the same spikes without a leak: nothing points at the limit
    assert assess(0.0, STEP, values[: now + 1], 30.0, DAY) is None


def test_the_chance_of_a_peak_reaching_the_limit_is_read_off_the_peaks_seen() -> None:
    # Every hour (12 steps) peaks 5 above its level, one hour in four 8 above.
    values = np.full(40 * 12, 10.0)
    values[5::12] += 5.0
    values[6::48] += 8.0
    peaks = Peaks.of(values, 12)
    assert peaks is not None
    assert len(peaks.block_max) == 40
    assert peaks.survival(np.array([4.0, 5.0, 6.0, 8.0, 9.0])) == pytest.approx(
        [1.0, 1.0, 0.25, 0.25, 0.0]
    )
    assert Peaks.of(values[:100], 12) is None  # fewer than ten hours: nothing to go by

    def flat(level: float, hours: int = 2) -> Quantiles:
        steps = hours * 12
        return Quantiles(np.arange(steps, dtype=np.float64), np.full((5, steps), level))

    assert peaks.reach(flat(96.0), 100.0) == pytest.approx(1.0)  # every hour's peak gets there
    assert peaks.reach(flat(80.0), 100.0) == 0.0  # no peak ever rose 20
    # 6 below: only the hours with a peak of 8 get there, one in four: two hours, 1 - 0.75^2
    assert peaks.reach(flat(94.0), 100.0) == pytest.approx(1 - 0.75**2)
    # each path a scenario: only the highest (2.5% of the mass) gets within reach
    paths = np.vstack([np.full(24, 80.0)] * 4 + [np.full(24, 96.0)])
    assert peaks.reach(Quantiles(np.arange(24.0), paths), 100.0) == pytest.approx(0.0625)
    warned = exhaustion(flat(94.0), 100.0, "trend 6h", peak=5.0, peaks=peaks)
    assert warned.probability == pytest.approx(1 - 0.75**2, abs=1e-4)
    assert exhaustion(flat(94.0), 100.0, "trend 6h").probability < 0.01  # the level alone


def test_a_rise_on_rare_large_spikes_warns_before_a_spike_fails_it() -> None:
    """A quiet series with a rare very large spike: the spike is no level it ever held, and a
    leak that lifts the level makes the next spike the failure, hours before the level gets
    near the limit."""
    rng = np.random.default_rng(7)
    n = 4 * DAY
    values = 1.0 + 0.05 * rng.standard_normal(n)
    values[rng.choice(n - DAY, size=12, replace=False)] += 60.0  # a dozen huge spikes
    limit = float(values.max()) + 30.0  # the benchmark's headroom: ~91
    leak = values.copy()
    start = 3 * DAY
    leak[start:] += 0.5 * np.arange(n - start)  # +6 an hour
    now = start + 72  # six hours in: level ~37, a spike of 60 on it reaches 97
    warning = assess(0.0, STEP, leak[: now + 1], limit, DAY)
    assert warning is not None
    assert warning.source.startswith("trend")
    assert warning.probability >= 0.8
    assert warning.eta is not None
    assert warning.eta - now * STEP < 6 * 3600  # the level alone is ~9 h away
    assert assess(0.0, STEP, values[: now + 1], limit, DAY) is None


def test_a_daily_rise_is_no_trend_a_leak_on_top_of_it_is() -> None:
    values = daily(4, noise=0.01)
    expected = seasonal_expectation(values, DAY)
    assert np.isnan(expected[:DAY]).all()
    assert np.isnan(seasonal_expectation(values[: DAY // 2], DAY)).all()  # less than a day
    assert np.nanmax(np.abs(values - expected)[DAY:]) < 0.1
    window = 36
    rising = slice(3 * DAY + DAY // 2 - window, 3 * DAY + DAY // 2)  # the cycle's steepest rise
    times = STEP * np.arange(rising.start, rising.stop)
    departures = values - expected
    usual = usual_rise(departures[: rising.stop], window)
    assert usual is not None
    ahead = times[-1] + STEP * np.arange(1, 37)

    def trend_of(series: np.ndarray) -> Any:
        return recent_trend(
            times,
            series[rising],
            ahead,
            expected=expected[rising],
            expected_ahead=np.full(36, 10.0),
            floor=max(usual, 0) / STEP,
        )

    assert trend_of(values) is None
    leak = values.copy()
    leak[rising] += 0.05 * np.arange(window)
    trend = trend_of(leak)
    assert trend is not None


def test_quantiles_give_the_probability_of_being_over_a_limit() -> None:
    q = Quantiles(np.array([1.0]), np.array([[0.0], [1.0], [2.0], [3.0], [4.0]]))
    assert q.over(2.0)[0] == pytest.approx(0.5)
    assert q.over(3.0)[0] == pytest.approx(0.1)
    assert q.over(-5.0)[0] > 0.97
    assert q.over(10.0)[0] < 0.025


def test_the_window_is_the_trough_and_respects_blackouts_freezes_and_the_budget() -> None:
    hour = 3600.0
    times = np.arange(0, 24 * hour, 1800.0)
    load = 100 + 50 * np.cos(2 * np.pi * times / (24 * hour))  # lowest at 12:00
    best = choose_window(0.0, 20 * hour, 1800.0, times, load)
    assert best.start == pytest.approx(12 * hour)
    assert not best.urgent
    assert best.load_rank == 0.0
    blackout = Interval(11 * hour, 13.5 * hour, "blackout: quarter close")
    freeze = Interval(9 * hour, 10 * hour, "change freeze CHG-1")
    moved = choose_window(0.0, 20 * hour, 1800.0, times, load, [blackout.refuses, freeze.refuses])
    assert moved.start is not None
    assert not 9 * hour <= moved.start < 10 * hour
    assert moved.start + 1800 <= 11 * hour or moved.start >= 13.5 * hour  # not across it
    assert moved.refused["blackout: quarter close"] >= 1
    spent = DisruptionBudget(per_day=1, booked=(3 * hour,))
    none = choose_window(0.0, 20 * hour, 1800.0, times, load, [spent.refuses])
    assert none.start is None
    assert "disruption budget" in none.reason
    tight = choose_window(0.0, 1800.0, 1800.0, times, load)
    assert (tight.start, tight.urgent) == (0.0, True)
    late = choose_window(0.0, 600.0, 1800.0, times, load)
    assert late.start is None
    assert "no room" in late.reason
    # a third of the time to the deadline spared: the job ends by 10:00, before the trough
    spared = choose_window(0.0, 15 * hour, 1800.0, times, load, spare=1 / 3)
    assert spared.end is not None
    assert spared.end <= 10 * hour
    assert spared.start == pytest.approx(9.5 * hour)  # the lowest load it may still use
    # sparing would leave no room: the time up to the deadline is used
    squeezed = choose_window(0.0, 2400.0, 1800.0, times, load, spare=0.5)
    assert squeezed.start == 0.0


def test_forecast_benchmark_writes_the_issue_shape(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    rows = ["timestamp,load,flat"]
    start = 1_700_000_000
    n = 4 * DAY
    for i in range(n):
        t = start + i * 300
        value = 10 + 2 * math.sin(2 * math.pi * i / DAY) + 0.05 * rng.standard_normal()
        stamp = f"{t}"
        rows.append(f"{stamp},{'nan' if i == 400 else value},{5.0}")
        if i == 500:
            rows.append(f"{stamp},{value},5.0")  # a duplicate timestamp
    csv = tmp_path / "trace.csv"
    csv.write_text("\n".join(rows) + "\n")
    series = read_csv(csv, STEP)
    assert set(series) == {"load", "flat"}
    assert series["load"].repairs.duplicate_timestamps == 1
    out = tmp_path / "forecast.json"
    run_benchmark(
        "forecast.py",
        *("--data", str(csv), "--horizons", "12", "--days", "0.5", "--origin-every", "72"),
        *("--out", str(out)),
    )
    report = json.loads(out.read_text())
    keys = {"file", "series", "horizon", "model", "mase", "smape", "coverage_80", "coverage_95"}
    assert report["results"]
    assert all(keys <= set(row) for row in report["results"])
    assert {r["model"] for r in report["results"]} == {"nofx", "naive", "seasonal_naive", "mstl"}
    summary = {(s["horizon"], s["model"]) for s in report["summary"]}
    assert (12, "nofx") in summary
    assert all(
        {"mase_ratio_to_seasonal_naive", "mase_ratio_to_best_baseline"} <= set(s)
        for s in report["summary"]
    )
    assert report["repairs"]["trace.csv"]["load"]["duplicate_timestamps"] == 1


def test_a_service_metric_is_forecast_from_its_source_with_its_limit_plotted_and_shown(
    tmp_path: Path,
    fresh_engine: Any,
    fresh_database_url: str,
    nofx_cli: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nofx import inventory
    from nofx.forecasting.plot import plot
    from nofx.forecasting.service import ForecastError, forecast_metric
    from nofx.telemetry.sources import CsvReplaySource

    # three days of a daily cycle, then a leak: +0.5 a step for the last three hours
    values = daily(3, noise=0.02)
    values[-36:] += 0.5 * np.arange(36)
    start = 1_700_000_000
    rows = ["timestamp,memory"] + [f"{start + i * 300},{v}" for i, v in enumerate(values)]
    rows.insert(100, rows[99])  # a duplicated row
    csv = tmp_path / "api.csv"
    csv.write_text("\n".join(rows) + "\n")
    document = {
        "services": [{"name": "api", "endpoint": "http://127.0.0.1:1", "limits": {"memory": 40.0}}]
    }
    inventory.apply(fresh_engine, inventory.parse(document))
    source = CsvReplaySource(csv)
    until = datetime.fromtimestamp(start + (len(values) - 1) * 300, UTC)
    request = ForecastRequest(
        service="api", metric="memory", horizon_steps=48, history_hours=72, until=until
    )
    report = forecast_metric(source, request, limit=40.0)
    assert len(report.points) == 48
    assert report.points[0].lo95 <= report.points[0].mean <= report.points[0].hi95
    found = report.exhaustion
    assert found is not None
    assert found.eta is not None
    assert found.source.startswith("trend")
    level = values[-1]
    truth = until.timestamp() + (40.0 - level) / 0.5 * 300
    assert abs(found.eta.timestamp() - truth) < 3600
    png = plot(report, tmp_path / "api.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ForecastError, match="api disk: api has no column 'disk'"):
        forecast_metric(source, request.model_copy(update={"metric": "disk"}))

    monkeypatch.setenv("NOFX_TELEMETRY", "csv")
    monkeypatch.setenv("NOFX_TELEMETRY_CSV_PATH", str(csv))
    shown = nofx_cli(
        fresh_database_url,
        "predictive",
        "forecast",
        "--service",
        "api",
        "--metric",
        "memory",
        "--horizon",
        "48",
        "--until",
        until.strftime("%Y-%m-%dT%H:%M:%S"),
        "--plot",
        str(tmp_path / "cli.png"),
    )
    assert shown.exit_code == 0, shown.output
    assert "limit 40: reached at" in shown.output
    assert (tmp_path / "cli.png").exists()

    def forecast(*args: str) -> Any:
        return nofx_cli(fresh_database_url, "predictive", "forecast", *args)

    refused = forecast("--service", "api", "--metric", "memory", "--horizon", "0")
    assert refused.exit_code != 0
    assert "horizon_steps" in refused.output
    unknown = forecast("--service", "nope", "--metric", "m")
    assert "nope is not in the inventory" in unknown.output


def test_a_predicted_exhaustion_is_opened_updated_and_withdrawn(
    tmp_path: Path,
    fresh_engine: Any,
    fresh_database_url: str,
    nofx_cli: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nofx import inventory
    from nofx.maintenance.predictions import issue_of, open_predictions, predict
    from nofx.telemetry.sources import CsvReplaySource

    assert issue_of("rss_bytes") == ("oom", "restart_service")
    assert issue_of("disk_used_bytes") == ("disk_full", "cleanup_disk")
    assert issue_of("queue_depth") == ("queue_depth_exhausted", None)
    values = daily(3, noise=0.02)
    values[-36:] += 0.5 * np.arange(36)  # memory leaking for three hours
    start = 1_700_000_000
    csv = tmp_path / "api.csv"
    csv.write_text(
        "timestamp,memory\n" + "".join(f"{start + i * 300},{v}\n" for i, v in enumerate(values))
    )
    document = {
        "services": [
            {
                "name": "api",
                "endpoint": "http://127.0.0.1:1",
                "tier": "tier-1",
                "limits": {"memory": 40.0},
            }
        ]
    }
    inventory.apply(fresh_engine, inventory.parse(document))
    source = CsvReplaySource(csv)
    now = datetime.fromtimestamp(start + (len(values) - 1) * 300, UTC)
    first = predict(fresh_engine, source, now=now, horizon_steps=48, history_hours=72)
    assert [(r.issue, r.change) for r in first] == [("oom", "opened")]
    assert first[0].recurring is None  # nothing was averted before
    again = predict(fresh_engine, source, now=now, horizon_steps=48, history_hours=72)
    assert [r.change for r in again] == ["updated"]
    rows = open_predictions(fresh_engine)
    assert len(rows) == 1
    row = rows[0]
    assert row["recommended_action"]["action"] == "restart_service"
    assert row["business_impact"]["tier"] == "tier-1"
    assert row["eta_earliest"] <= row["eta"]
    assert float(row["probability"]) >= 0.8
    # a day earlier, before the leak, nothing points at the limit: the prediction is withdrawn
    calm = predict(
        fresh_engine, source, now=now - timedelta(hours=4), horizon_steps=48, history_hours=48
    )
    assert [r.change for r in calm] == ["withdrawn"]
    assert open_predictions(fresh_engine) == []
    # Maintenance averted it (as a job labels it); the leak is predicted again an hour later:
    # the same failure back, which the job's decision leaves to a person.
    with fresh_engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE maintenance_predictions SET status = 'averted', updated_at = :at"
                " WHERE id = :id"
            ),
            {"id": first[0].prediction_id, "at": now - timedelta(hours=1)},
        )
    back = predict(fresh_engine, source, now=now, horizon_steps=48, history_hours=72)
    assert [r.change for r in back] == ["opened"]
    assert back[0].recurring is not None
    assert "predicted again 60 min after maintenance averted it" in back[0].recurring
    # seven hours after the aversion it is a new failure
    with fresh_engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE maintenance_predictions SET status = 'averted', updated_at = :at"
                " WHERE component_id = 'api'"
            ),
            {"at": now - timedelta(hours=7)},
        )
    later = predict(fresh_engine, source, now=now, horizon_steps=48, history_hours=72)
    assert [r.change for r in later] == ["opened"]
    assert later[0].recurring is None
    with fresh_engine.begin() as conn:
        conn.execute(
            text("UPDATE maintenance_predictions SET status = 'withdrawn' WHERE status = 'open'")
        )
    monkeypatch.setenv("NOFX_TELEMETRY", "csv")
    monkeypatch.setenv("NOFX_TELEMETRY_CSV_PATH", str(csv))
    shown = nofx_cli(fresh_database_url, "predictive", "maintenance")
    assert shown.exit_code == 0, shown.output
    assert "(no open prediction)" in shown.output


def test_a_job_window_is_the_load_trough_outside_blackouts_freezes_and_a_spent_budget(
    tmp_path: Path, fresh_engine: Any
) -> None:
    from sqlalchemy import text

    from models.maintenance import WindowRequest
    from nofx import inventory
    from nofx.healing.guardrails import add_freeze
    from nofx.maintenance.jobs import JobError, plan_window
    from nofx.telemetry.sources import CsvReplaySource

    # Four days of requests with their trough at 03:00 UTC and their peak at 15:00.
    start = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp())
    t = np.arange(4 * DAY)
    load = 100 - 80 * np.cos(2 * np.pi * (t * STEP - 3 * 3600) / 86_400)
    csv = tmp_path / "api.csv"
    csv.write_text(
        "timestamp,requests\n" + "".join(f"{start + i * 300},{v}\n" for i, v in enumerate(load))
    )
    policy = {"duration_minutes": 30, "load_metric": "requests", "disruption_budget_per_day": 1}
    document = {
        "services": [
            {
                "name": "api",
                "endpoint": "http://127.0.0.1:1",
                "group": "api",
                "maintenance": policy,
            },
            {"name": "api-2", "endpoint": "http://127.0.0.1:2", "group": "api"},
        ]
    }
    inventory.apply(fresh_engine, inventory.parse(document))
    source = CsvReplaySource(csv)
    now = datetime.fromtimestamp(start + (len(load) - 1) * 300, UTC)  # 23:55 on day 4
    request = WindowRequest(
        component="api",
        issue="oom",
        deadline=now + timedelta(hours=20),
        workflow_id="maintenance-api-oom",
        now=now,
    )
    plan = plan_window(fresh_engine, source, request)
    assert plan.start is not None
    assert plan.load_metric == "requests"
    assert abs((plan.start.hour * 60 + plan.start.minute) - 3 * 60) <= 45  # the trough
    assert plan.load_rank is not None
    assert plan.load_rank < 0.1

    # A blackout over the small hours moves it out of them, with the reason kept.
    policy["blackouts"] = [{"start": "01:00", "end": "06:00", "reason": "batch close"}]
    inventory.apply(fresh_engine, inventory.parse(document))
    plan = plan_window(fresh_engine, source, request)
    assert plan.start is not None
    assert not 1 <= plan.start.hour < 6
    assert any("batch close" in reason for reason in plan.refused)

    # A freeze over the next window of the day, then the group's budget spent by api-2's job
    # that day: no start is left in those hours.
    add_freeze(
        fresh_engine,
        now,
        now + timedelta(hours=12),
        scope="api",
        reason="release week",
        actor="test",
    )
    with fresh_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO maintenance_schedules (scheduled_at, maintenance_type, status,"
                " workflow_id, component_id) VALUES (:at, 'restart', 'scheduled', 'other',"
                " 'api-2')"
            ),
            {"at": now + timedelta(hours=13)},
        )
    plan = plan_window(fresh_engine, source, request)
    assert plan.start is None  # day 5 is frozen, then its budget is spent
    assert plan.urgent
    assert any("release week" in reason for reason in plan.refused)
    assert any("disruption budget" in reason for reason in plan.refused)

    # A start a person asks for is checked against the same constraints.
    with pytest.raises(JobError, match="release week"):
        plan_window(
            fresh_engine,
            source,
            request.model_copy(update={"requested_start": now + timedelta(hours=11)}),
        )


def test_validation_settles_predictions_and_reports_precision_recall_and_lead_time(
    fresh_engine: Any, fresh_database_url: str, nofx_cli: Any
) -> None:
    from sqlalchemy import text

    from nofx import inventory
    from nofx.maintenance.validation import validate

    document = {
        "services": [
            {"name": n, "endpoint": "http://127.0.0.1:1"} for n in ("api", "web", "db", "cache")
        ]
    }
    inventory.apply(fresh_engine, inventory.parse(document))
    now = datetime.now(UTC)
    h = timedelta(hours=1)

    def prediction(service: str, issue: str, created: datetime, eta: datetime, status: str) -> None:
        with fresh_engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO maintenance_predictions (component_type, component_id,"
                    " predicted_issue, probability, eta, eta_earliest, eta_latest, status,"
                    " created_at) VALUES ('service', :s, :i, 0.9, :eta, :eta, :eta, :st, :c)"
                ),
                {"s": service, "i": issue, "eta": eta, "st": status, "c": created},
            )

    def incident(service: str, kind: str, started: datetime) -> None:
        with fresh_engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO healing_incidents (incident_type, detection_method, root_cause,"
                    " healing_strategy, status, started_at) VALUES (:t, 'test',"
                    " CAST(:rc AS jsonb), 'none', 'resolved', :at)"
                ),
                {"t": kind, "rc": json.dumps({"service": service}), "at": started},
            )

    prediction("api", "oom", now - 10 * h, now - 6 * h, "open")  # came true: 2 h of warning
    incident("api", "memory_leak", now - 8 * h)
    prediction("web", "disk_full", now - 10 * h, now - 5 * h, "open")  # passed quietly
    prediction("db", "oom", now - 3 * h, now - h, "averted")  # maintenance ran
    prediction("cache", "oom", now - h, now + 5 * h, "open")  # still standing
    incident("cache", "disk_filling", now - 2 * h)  # a failure nobody predicted
    report = validate(fresh_engine, None, days=1, now=now)
    assert report.labelled == {"happened": 1, "did_not_happen": 1}
    assert report.by_status == {"happened": 1, "did_not_happen": 1, "averted": 1, "open": 1}
    assert report.precision == pytest.approx(2 / 3)  # happened + averted of the settled three
    assert report.precision_without_averted == pytest.approx(1 / 2)
    assert (report.failures, report.failures_predicted) == (2, 1)
    assert report.recall == pytest.approx(1 / 2)
    assert report.lead_minutes_median == pytest.approx(120)  # 2 h (api) and 2 h (db)
    assert report.eta_error_hours_median == pytest.approx(2)
    again = validate(fresh_engine, None, days=1, now=now)
    assert again.labelled == {"happened": 0, "did_not_happen": 0}  # settled once

    shown = nofx_cli(fresh_database_url, "predictive", "validate", "--days", "1")
    assert shown.exit_code == 0, shown.output
    assert "recall 50.0%: 1 of 2" in shown.output


def test_the_failure_classifier_learns_from_injected_leaks_and_warns_on_a_new_one(
    fresh_engine: Any, fresh_database_url: str, nofx_cli: Any
) -> None:
    from sqlalchemy import text

    from nofx import inventory
    from nofx.maintenance.failure_model import FailureClassifier, train_classifier
    from nofx.maintenance.predictions import predict
    from nofx.telemetry.sources import make_source

    metric, limit = "process_resident_memory_bytes", 4e8
    names = ["a", "b", "c"]
    inventory.apply(
        fresh_engine,
        inventory.parse(
            {
                "services": [
                    {"name": n, "endpoint": "http://127.0.0.1:1", "limits": {metric: limit}}
                    for n in names
                ]
            }
        ),
    )
    rng = np.random.default_rng(3)
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    minutes = 16 * 60
    start = end - timedelta(minutes=minutes - 1)
    rows, faults = [], []
    for k, name in enumerate(names):
        values = 1.2e8 + 4e6 * rng.standard_normal(minutes)
        # Harmless bumps (a cache warming up and letting go) the model must not take for leaks.
        for at in range(60 + 40 * k, minutes - 60, 170):
            values[at : at + 20] += np.linspace(0, 6e7, 20)
        # Leaks: 40 minutes of steady growth, then a restart, spread over the history.
        for at in range(200 + 90 * k, minutes - 60, 280):
            values[at : at + 40] += np.linspace(0, 2.6e8, 40)
            faults.append((name, start + timedelta(minutes=at), start + timedelta(minutes=at + 40)))
        if name == "c":  # a new leak, under way as the history ends
            values[-25:] += np.linspace(0, 1.7e8, 25)
        rows += [
            {"s": name, "m": metric, "ts": start + timedelta(minutes=i), "v": float(v)}
            for i, v in enumerate(values)
        ]
    with fresh_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO metric_samples (service, metric, labels, ts, value)"
                " VALUES (:s, :m, '{}', :ts, :v)"
            ),
            rows,
        )
        conn.execute(
            text(
                "INSERT INTO fault_injections (service, kind, injected_by, source,"
                " expected_pattern, injected_at, cleared_at) VALUES (:s, 'memory_leak', 'test',"
                " 'test', 'memory_leak', :a, :b)"
            ),
            [{"s": s, "a": a, "b": b} for s, a, b in faults],
        )
    source = make_source("scrape", engine=fresh_engine)
    trained = train_classifier(fresh_engine, source, start, end - timedelta(minutes=30))
    assert trained.active, trained.verdict
    assert trained.metrics["holdout"]["roc_auc"] >= 0.8
    assert trained.training["positives"] > 0
    classifier = FailureClassifier.active(fresh_engine)
    assert classifier is not None
    assert classifier.version == trained.version
    leaking = classifier.probability(source, "c", metric, limit, end)
    calm = classifier.probability(source, "a", metric, limit, end)
    assert leaking is not None
    assert calm is not None
    assert leaking >= 0.8 > calm, (leaking, calm)
    found = predict(fresh_engine, source, now=end, services=["c"], classifier=classifier)
    assert [(r.issue, r.change) for r in found] == [("oom", "opened")]
    shown = nofx_cli(fresh_database_url, "predictive", "train", "--hours", "16")
    assert shown.exit_code == 0, shown.output
    assert "ROC AUC" in shown.output
