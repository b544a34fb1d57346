"""Evidence from series: the ensemble plus floors, episode onsets, and direct state signals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from models.healing import ProbeResult
from nofx.diagnosis.evidence import (
    STEP,
    WATCHED,
    DetectorCache,
    probe_signals,
    series_anomaly,
    state_signals,
)

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
LATENCY = next(w for w in WATCHED if w.name == "latency_p95_s")


def grid(values: list[float] | np.ndarray, start: datetime = T0) -> pd.Series:
    index = pd.date_range(start, periods=len(values), freq=pd.Timedelta(STEP))
    return pd.Series(np.asarray(values, dtype=float), index=index)


def latency_with_step(at: int, n: int = 200, high: float = 0.35) -> pd.Series:
    rng = np.random.default_rng(7)
    values = 0.02 + rng.normal(0, 0.002, n)
    values[at:] = high + rng.normal(0, 0.01, n - at)
    return grid(values)


def test_a_level_shift_is_an_anomaly_with_its_onset_and_evidence() -> None:
    series = latency_with_step(150)
    firings = DetectorCache().feed("api", "latency_p95_s", series)
    now = series.index[-1].to_pydatetime()
    anomaly = series_anomaly("api", LATENCY, series, firings, now)
    assert anomaly is not None
    assert anomaly.onset == series.index[150].to_pydatetime()
    assert anomaly.baseline is not None
    assert abs(anomaly.baseline - 0.02) < 0.005
    assert "range" in anomaly.detectors
    assert anomaly.reasons[0].startswith("latency_p95_s 3")


def test_noise_is_no_anomaly_and_the_floor_ignores_tiny_shifts() -> None:
    quiet = grid(0.02 + np.random.default_rng(3).normal(0, 0.002, 200))
    now = quiet.index[-1].to_pydatetime()
    assert series_anomaly("api", LATENCY, quiet, DetectorCache().feed("a", "l", quiet), now) is None
    tiny = latency_with_step(150, high=0.03)  # +10 ms: surprising, not worth a page
    assert series_anomaly("api", LATENCY, tiny, DetectorCache().feed("a", "l", tiny), now) is None


def test_an_old_firing_on_noise_does_not_move_the_onset() -> None:
    series = latency_with_step(150)
    early = (series.index[40].timestamp(), 0.6, ["range"], ["early blip"])
    firings = [early, *DetectorCache().feed("api", "latency_p95_s", series)]
    anomaly = series_anomaly("api", LATENCY, series, firings, series.index[-1].to_pydatetime())
    assert anomaly is not None
    assert anomaly.onset == series.index[150].to_pydatetime()


def test_a_fault_that_ended_is_no_longer_an_anomaly() -> None:
    series = latency_with_step(150)
    series.iloc[185:] = 0.02
    firings = DetectorCache().feed("api", "latency_p95_s", series)
    assert series_anomaly("api", LATENCY, series, firings, series.index[-1].to_pydatetime()) is None


def test_probe_signals() -> None:
    def probe(**kw: object) -> ProbeResult:
        return ProbeResult(service="api", observed_at=T0, **kw)  # type: ignore[arg-type]

    assert probe_signals(probe(healthy=True, process_state="RUNNING")) == []
    down = probe(healthy=False, detail="unreachable: ConnectError", process_state="EXITED")
    assert probe_signals(down) == ["probe_refused", "process_down"]
    hung = probe(healthy=False, detail="no answer within 1s", process_state="FROZEN")
    assert probe_signals(hung) == ["probe_timeout", "process_frozen"]


def test_state_signals_read_pool_and_cache_gauges() -> None:
    series = {
        "pool_in_use": grid([5.0] * 10),
        "pool_size": grid([5.0] * 10),
        "pool_waiting": grid([0, 0, 0, 0, 0, 0, 0, 0, 2, 3]),
        "cache_version_lag": grid([0.0] * 8 + [3.0, 4.0]),
        "stale_read_rate": grid([0.0] * 8 + [1.5, 2.0]),
    }
    signals, notes = state_signals(series)
    assert signals == ["pool_saturated", "cache_stale"]
    assert "5/5 in use" in notes[0]
    full_but_idle = {**series, "pool_waiting": grid([0.0] * 10)}
    assert "pool_saturated" not in state_signals(full_but_idle)[0]


def test_detector_memory_is_the_window() -> None:
    cache = DetectorCache()
    first = latency_with_step(150)
    cache.feed("api", "latency_p95_s", first)
    later = grid(first.to_numpy(), start=T0 + timedelta(minutes=30))
    refired = cache.feed("api", "latency_p95_s", later)
    assert refired, "a repeat of the fault after the window must fire again"
