"""Online detectors and their ensemble: online, robust to bad input, and explaining themselves."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nofx.detection import (
    DETECTORS,
    DetectorScore,
    EnsembleConfig,
    EnsembleDetector,
    OnlineDetector,
    RangeBreakoutDetector,
    RobustZScoreDetector,
    SeasonalDetector,
    WindowedGaussianDetector,
    detect_series,
    make_detector,
)
from nofx.detection.ensemble import AnomalyLikelihood, run_series
from nofx.telemetry.cleaning import audit_rows

FIVE_MINUTES = 300.0
ALL_DETECTORS = sorted(DETECTORS)


def small(name: str) -> OnlineDetector:
    """Detectors with short warm-ups, so short generated series exercise their scoring path."""
    params: dict[str, dict[str, object]] = {
        "robust_z": {"window": 20, "min_points": 5},
        "robust_z_change": {"window": 20, "min_points": 5},
        "ewma": {"min_points": 5},
        "seasonal": {"periods": (3600.0,), "recheck_every": 5, "min_residuals": 5},
        "windowed_gaussian": {"window": 20},
        "range": {"min_points": 5},
        "ensemble": {"config": EnsembleConfig(likelihood_min_history=5, likelihood_history=50)},
    }
    return make_detector(name, **params.get(name, {}))


def run(detector: OnlineDetector, times: list[float], values: list[float]) -> list[DetectorScore]:
    return [detector.update(t, v) for t, v in zip(times, values, strict=True)]


def noisy(n: int, seed: int = 1, level: float = 100.0, scale: float = 5.0) -> np.ndarray:
    return level + scale * np.random.default_rng(seed).standard_normal(n)


def minutes(n: int) -> list[float]:
    return [1_700_000_000.0 + FIVE_MINUTES * i for i in range(n)]


samples = st.floats(allow_nan=True, allow_infinity=True, width=32) | st.floats(-1e3, 1e3)
steps = st.sampled_from([0.0, 60.0, 300.0, 300.0, 300.0, 86_400.0])  # duplicates and gaps


@st.composite
def series_with_alteration(draw: st.DrawFn) -> tuple[list[float], list[float], int, list[float]]:
    values = draw(st.lists(samples, min_size=2, max_size=80))
    gaps = draw(st.lists(steps, min_size=len(values), max_size=len(values)))
    times = list(np.cumsum(gaps) + 1_700_000_000.0)
    cut = draw(st.integers(min_value=1, max_value=len(values) - 1))
    altered = draw(st.lists(samples, min_size=len(values) - cut, max_size=len(values) - cut))
    return times, values, cut, altered


@pytest.mark.parametrize("name", ALL_DETECTORS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=series_with_alteration())
def test_score_at_t_ignores_everything_after_t(
    name: str, case: tuple[list[float], list[float], int, list[float]]
) -> None:
    times, values, cut, altered = case
    original = run(small(name), times, values)
    changed = run(small(name), times, values[:cut] + altered)
    prefix_only = run(small(name), times[:cut], values[:cut])
    assert original[:cut] == changed[:cut] == prefix_only
    for verdict in original:
        assert 0.0 <= verdict.score <= 1.0
        assert verdict.reason


@pytest.mark.parametrize("name", ALL_DETECTORS)
def test_nan_and_inf_are_skipped_not_learned(name: str) -> None:
    values = list(noisy(60))
    dirty = [*values[:30], math.nan, math.inf, -math.inf, *values[30:]]
    times = minutes(len(dirty))
    verdicts = run(small(name), times, dirty)
    for verdict in verdicts[30:33]:
        assert verdict.score == 0.0
        assert verdict.learning
    clean = run(small(name), [t for i, t in enumerate(times) if not 30 <= i < 33], values)
    # Skipped samples leave no trace.
    assert [v.score for v in verdicts[33:]] == [v.score for v in clean[30:]]


@pytest.mark.parametrize("name", ALL_DETECTORS)
def test_constant_series_scores_zero_without_dividing_by_zero(name: str) -> None:
    verdicts = run(small(name), minutes(200), [42.0] * 200)
    assert all(v.score == 0.0 for v in verdicts)


@pytest.mark.parametrize("name", ["robust_z", "robust_z_change", "ewma", "range"])
def test_leaving_a_constant_series_is_maximally_surprising(name: str) -> None:
    detector = small(name)
    run(detector, minutes(100), [42.0] * 100)
    verdict = detector.update(minutes(101)[-1], 43.0)
    assert verdict.score == 1.0
    assert verdict.direction == "up"


@pytest.mark.parametrize("name", ALL_DETECTORS)
def test_duplicate_timestamps_and_gaps_are_ordinary_samples(name: str) -> None:
    # Three samples share each timestamp, then the series stops for ten days and resumes.
    before = [1_700_000_000.0 + FIVE_MINUTES * (i // 3) for i in range(150)]
    after = [before[-1] + 10 * 86_400.0 + FIVE_MINUTES * i for i in range(60)]
    values = list(noisy(210))
    values[152] = 250.0  # a spike just after the gap
    verdicts = run(small(name), before + after, values)
    assert all(0.0 <= v.score <= 1.0 and math.isfinite(v.score) for v in verdicts)
    if name in ("robust_z", "robust_z_change", "ewma", "range", "windowed_gaussian"):
        assert verdicts[152].score == max(v.score for v in verdicts)
        assert verdicts[152].direction == "up"


def daily_wave(days: int, per_day: int = 288) -> np.ndarray:
    """A business-hours square wave: 10 at night, 60 for a third of the day, noise of 1."""
    phase = np.arange(per_day * days) % per_day
    peak = (np.sin(2 * np.pi * phase / per_day) > 0.5).astype(np.float64)
    wave: np.ndarray = 10.0 + 50.0 * peak + noisy(per_day * days, level=0.0, scale=1.0)
    return wave


def test_seasonal_detector_finds_no_phase_across_a_long_gap() -> None:
    detector = SeasonalDetector()
    times = minutes(4 * 288)
    run(detector, times, list(daily_wave(4)))
    assert detector.period == 86_400.0
    verdict = detector.update(times[-1] + 30 * 86_400.0, 100.0)
    assert verdict.score == 0.0
    assert verdict.learning
    assert "no sample at this phase" in verdict.reason


def test_out_of_order_samples_are_skipped_by_the_seasonal_detector() -> None:
    detector = SeasonalDetector()
    detector.update(1000.0, 1.0)
    verdict = detector.update(500.0, 1.0)
    assert verdict.learning
    assert "out-of-order" in verdict.reason


def test_a_spike_is_detected_with_a_readable_reason() -> None:
    values = noisy(400)
    values[350] = 160.0
    detector = RobustZScoreDetector()
    verdicts = run(detector, minutes(400), list(values))
    spike = verdicts[350]
    assert spike.score >= detector.level
    assert spike.direction == "up"
    assert "value 160 is" in spike.reason
    assert "robust \N{GREEK SMALL LETTER SIGMA} above the median" in spike.reason
    assert "of the last 300 points" in spike.reason
    assert max(v.score for v in verdicts[:350]) < spike.score


def uniform(n: int, seed: int, low: float, high: float) -> np.ndarray:
    """Bounded noise: after a few hundred samples it sets no new extreme worth a page."""
    return np.random.default_rng(seed).uniform(low, high, n)


def test_a_level_shift_fires_the_ensemble_once_with_evidence() -> None:
    values = np.concatenate([uniform(1500, 3, 90, 110), uniform(500, 4, 150, 170)])
    ensemble = EnsembleDetector()
    fired = []
    for index, (t, v) in enumerate(zip(minutes(values.size), values, strict=True)):
        verdict = ensemble.update(t, float(v))
        assert ensemble.last_evidence is not None
        if ensemble.last_evidence.fired:
            fired.append((index, verdict, ensemble.last_evidence))
    alerts = [index for index, _, _ in fired]
    assert [i for i in alerts if 300 <= i < 1500] == []
    assert 1500 in alerts
    _, verdict, evidence = fired[alerts.index(1500)]
    assert evidence.trigger == "breakout:range"
    assert verdict.direction == "up"
    assert "breaks out of everything seen so far" in verdict.reason
    assert {"range", "robust_z", "ewma"} <= {m.detector for m in evidence.fired_members}
    assert "also above their level: " in verdict.reason
    # The new level is a new normal, not a stream of pages: only its own new extremes, if any.
    later = [i for i in alerts if i > 1500]
    assert len(later) <= 3
    assert all(evidence.trigger == "breakout:range" for i, _, evidence in fired if i > 1500)


def test_sustained_surprise_alerts_once_then_is_held() -> None:
    # A slowly wandering series whose step sizes suddenly grow, staying inside its old range.
    calm = 100.0 + np.cumsum(np.random.default_rng(5).normal(0, 0.2, 1000)).clip(-9, 9)
    wild = 100.0 + uniform(300, 6, -9, 9)
    config = EnsembleConfig(suppress_points=100)
    ensemble = EnsembleDetector(config)
    verdicts = []
    evidence = []
    for t, v in zip(minutes(1300), np.concatenate([calm, wild]), strict=True):
        verdicts.append(ensemble.update(t, float(v)))
        assert ensemble.last_evidence is not None
        evidence.append(ensemble.last_evidence)
    alerts = [
        i
        for i, e in enumerate(evidence)
        if e.fired and i >= 1000 and e.trigger == "likelihood:robust_z_change"
    ]
    assert alerts, "the growing changes were never reported"
    first = alerts[0]
    assert first < 1020
    assert evidence[first].trigger == "likelihood:robust_z_change"
    assert "robust_z_change has scored unusually high for this series" in verdicts[first].reason
    assert all(b - a > config.suppress_points for a, b in itertools.pairwise(alerts))
    held = [i for i in range(first + 1, first + 101) if evidence[i].suppressed]
    assert held
    assert verdicts[held[0]].reason.startswith("held, an alert was raised in the last updates")


def test_seasonal_baseline_waits_for_two_days_then_catches_a_missing_peak() -> None:
    per_day = 288
    values = daily_wave(6)
    missing = slice(5 * per_day + 50, 5 * per_day + 100)  # the sixth day's peak does not come
    values[missing] = 10.0 + noisy(50, seed=9, level=0.0, scale=1.0)
    detector = SeasonalDetector()
    verdicts = run(detector, minutes(values.size), list(values))
    assert "no seasonal baseline" in verdicts[100].reason
    assert detector.period == 86_400.0
    hit = verdicts[missing.start]
    assert hit.score >= detector.level
    assert hit.direction == "down"
    assert "the same time of day in earlier cycles" in hit.reason
    normal_days = [v.score for v in verdicts[3 * per_day : 5 * per_day]]
    assert max(normal_days) < detector.level


def test_range_breakout_fires_only_on_new_extremes() -> None:
    detector = RangeBreakoutDetector()
    values = [0.0, 10.0] * 20 + [10.01, 15.0, 15.0, 12.0, -6.0]
    verdicts = run(detector, minutes(len(values)), values)
    scores = [v.score for v in verdicts[40:]]
    assert scores[0] == 0.0  # 0.1 % above the range: within the margin
    assert scores[1] == pytest.approx(0.5 + 0.5 * (15.0 - 10.01) / 10.01)
    assert scores[2:4] == [0.0, 0.0]
    assert verdicts[44].direction == "down"
    assert "lowest of 44 points was 0" in verdicts[44].reason


def test_windowed_gaussian_reproduces_nab_and_its_legacy_tail() -> None:
    base = list(noisy(100))
    two_sided = WindowedGaussianDetector(window=100)
    legacy = WindowedGaussianDetector(window=100, tail="nab_legacy")
    run(two_sided, minutes(100), base)
    run(legacy, minutes(100), base)
    mean, std = float(np.mean(base)), float(np.std(base))
    high = two_sided.update(0.0, mean + 3 * std)
    assert high.score == pytest.approx(1 - math.erfc(3 / math.sqrt(2)), rel=1e-6)
    assert legacy.update(0.0, mean + 3 * std).score == pytest.approx(0.00135, abs=1e-5)
    legacy_low = WindowedGaussianDetector(window=100, tail="nab_legacy")
    run(legacy_low, minutes(100), base)
    # NAB's published scores: near 1 far *below* the mean (its tail function flipped twice).
    assert legacy_low.update(0.0, mean - 3 * std).score == pytest.approx(0.99865, abs=1e-5)


def test_anomaly_likelihood_compares_the_recent_average_with_its_history() -> None:
    likelihood = AnomalyLikelihood(window=5, history=100, min_history=20)
    readings = [likelihood.update(0.1 + 0.01 * (i % 2)) for i in range(60)]
    assert not readings[10].ready
    assert readings[-1].ready
    assert readings[-1].decades < 1.0
    surge = [likelihood.update(0.9) for _ in range(5)]
    assert surge[-1].decades > 10.0
    assert surge[-1].average == pytest.approx(0.9)


def test_extra_scorer_is_one_more_way_to_fire() -> None:
    times = minutes(300)
    calls: list[tuple[float, float]] = []

    def model(timestamp: float, value: float) -> float:
        calls.append((timestamp, value))
        return 0.9 if timestamp == times[-1] else 0.1

    ensemble = EnsembleDetector(extra_scorer=model)
    verdicts = run(ensemble, times, [100.0] * 300)
    assert len(calls) == 300
    assert all(v.score < 0.5 for v in verdicts[:-1])
    assert verdicts[-1].score == pytest.approx(0.9)
    assert ensemble.last_evidence is not None
    assert ensemble.last_evidence.trigger == "extra"
    assert "learned model gives anomaly probability 0.90" in verdicts[-1].reason


def test_detect_series_equals_updating_by_hand() -> None:
    values = noisy(300)
    times = minutes(300)
    batch = detect_series(times, values, partial(make_detector, "ensemble"))
    by_hand = [v.score for v in run(EnsembleDetector(), times, list(values))]
    assert batch.tolist() == by_hand


def test_make_detector_builds_every_name_and_refuses_unknown_ones() -> None:
    for name in ALL_DETECTORS:
        detector = make_detector(name)
        assert isinstance(detector, OnlineDetector)
        assert detector.name == name
    with pytest.raises(ValueError, match="unknown detector 'nope'; known: "):
        make_detector("nope")


def test_scores_are_comparable_across_units() -> None:
    # The same shape in bytes and in megabytes scores the same.
    values = noisy(400)
    values[350] = 140.0
    factory: Callable[[], OnlineDetector] = RobustZScoreDetector
    small_units = detect_series(minutes(400), values, factory)
    large_units = detect_series(minutes(400), values * 1e6, factory)
    np.testing.assert_allclose(small_units, large_units, rtol=1e-9, atol=1e-12)


# A real NAB series made messy as real telemetry is (see tests/test_nab_scoring.py): the clock
# set back one hour once, twelve rows written twice, one NaN value, a two-hour gap. 788 rows.
MESSY = Path(__file__).parent / "data" / "nab_clock_set_back.csv"


def messy_series() -> tuple[np.ndarray, np.ndarray]:
    frame = pd.read_csv(MESSY)
    stamps = pd.to_datetime(frame["timestamp"]).to_numpy(dtype="datetime64[ns]")
    return stamps.astype("int64") / 1e9, frame["value"].to_numpy(dtype=np.float64)


@pytest.mark.parametrize("name", ALL_DETECTORS)
def test_every_detector_takes_the_messy_real_series_and_says_what_it_did(name: str) -> None:
    times, values = messy_series()

    run = run_series(times, values, partial(make_detector, name))

    assert run.scores.size == 788
    assert np.all((run.scores >= 0.0) & (run.scores <= 1.0))
    assert run.scores[np.flatnonzero(np.isnan(values))].tolist() == [0.0]
    odd = run.odd_rows[name]
    # Twelve retried writes and the set-back clock's return to 09:02 repeat the newest stamp;
    # eleven set-back rows are behind it. Only the seasonal detector skips those.
    assert (odd.samples, odd.non_finite, odd.repeated, odd.behind) == (788, 1, 13, 11)
    assert odd.clock_set_back == 1
    assert odd.behind_skipped == (11 if name == "seasonal" else 0)
    assert "1 non-finite skipped" in odd.describe()
    assert "13 with a repeated timestamp scored as ordinary" in odd.describe()
    if name == "ensemble":
        assert run.odd_rows["ensemble/seasonal"].behind_skipped == 11
        assert run.odd_rows["ensemble/range"].behind_skipped == 0
        assert "11 stamped behind the newest (clock set back 1x): 11 scored" in odd.describe()


def test_detectors_count_odd_rows_as_the_cleaning_audit_does() -> None:
    times, values = messy_series()
    audit = audit_rows(pd.Series(values, index=pd.to_datetime(times, unit="s", utc=True)))

    odd = run_series(times, values, EnsembleDetector).odd_rows["ensemble"]

    assert (odd.non_finite, odd.repeated, odd.behind, odd.clock_set_back) == (
        audit.non_finite,
        audit.repeated,
        audit.behind,
        audit.clock_set_back,
    )


@pytest.mark.parametrize("name", [n for n in ALL_DETECTORS if n not in ("seasonal", "ensemble")])
def test_a_clock_set_back_changes_nothing_for_time_blind_detectors(name: str) -> None:
    times = minutes(200)
    set_back = times[:100] + [t - 3600.0 for t in times[100:]]
    values = list(noisy(200))
    values[150] = 250.0

    assert run(small(name), set_back, values) == run(small(name), times, values)


def test_a_clock_set_back_leaves_no_trace_in_the_seasonal_detector() -> None:
    # Hourly cycle, 5-minute samples; after sample 300, twelve samples arrive stamped behind
    # the newest one (a clock set back an hour and a half step, then put right).
    times = minutes(600)
    values = list(10.0 + 5.0 * np.sin(2 * np.pi * np.arange(600) / 12) + noisy(600, scale=0.2))
    values = [v - 100.0 for v in values]
    replayed = [t - 3600.0 - FIVE_MINUTES / 2 for t in times[300:312]]
    with_set_back = times[:300] + replayed + times[300:]
    dirty_values = values[:300] + values[300:312] + values[300:]

    detector = small("seasonal")
    dirty = run(detector, with_set_back, dirty_values)
    clean = run(small("seasonal"), times, values)

    assert all(v.learning and v.score == 0.0 for v in dirty[300:312])
    assert all("out-of-order" in v.reason for v in dirty[300:312])
    assert [v.score for v in dirty[312:]] == [v.score for v in clean[300:]]
    assert max(v.score for v in clean[350:]) > 0.0  # it is scoring, not still learning
    assert detector.odd_rows.behind_skipped == 12


@pytest.mark.parametrize("name", ALL_DETECTORS)
def test_a_non_finite_timestamp_is_skipped_by_every_detector(name: str) -> None:
    times = minutes(60)
    values = list(noisy(60))
    dirty_times = [*times[:30], math.nan, *times[30:]]
    dirty_values = [*values[:30], 500.0, *values[30:]]

    verdicts = run(small(name), dirty_times, dirty_values)
    clean = run(small(name), times, values)

    assert verdicts[30].learning
    assert verdicts[30].score == 0.0
    assert [v.score for v in verdicts[31:]] == [v.score for v in clean[30:]]
