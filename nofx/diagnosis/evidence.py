"""From telemetry to evidence: derived series per service, the online ensemble over each, and the
signals the problem patterns are written in.

Each tick the monitor asks for the last `WINDOW` of every watched series of every service. The
ensemble (nofx.detection) decides whether a series is anomalous — it sees only data up to each
point — and a floor per series decides whether the deviation is large enough to matter to a
person (a 2 ms latency wobble on an idle service can be statistically surprising and still not
worth a page). A signal is raised only when both agree; the ensemble's verdict (which detectors
fired and why) is kept as the anomaly's evidence.

Detector state is cached per worker process and fed only the points it has not seen, so a tick
costs a few updates per series; after a worker restart the cache is rebuilt from the window.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy import text
from sqlalchemy.engine import Engine

from models.detection import Anomaly, ConfigChange, ServiceEvidence, Signal
from models.healing import ProbeResult
from nofx.detection.ensemble import EnsembleDetector
from nofx.detection.learned import LearnedDetector
from nofx.diagnosis.root_cause import ONSET_SLACK
from nofx.telemetry.derived import latency_quantile, rate
from nofx.telemetry.sources import MetricSource

WINDOW = timedelta(minutes=10)
STEP = timedelta(seconds=2)
# A series that fired within this span and still sits beyond its floor is anomalous now (a
# breakout fires once when a fault begins; the floor keeps the anomaly open while it lasts).
HOLD = timedelta(minutes=8)
RATE_WINDOW = timedelta(seconds=10)
CHANGE_LOOKBACK = timedelta(minutes=30)
MIN_BASELINE_POINTS = 15
# Deployment verification: the values a change is judged against, and how many after it.
CHANGE_BASELINE = timedelta(minutes=2)
CHANGE_POINTS = 5
EPISODE_SHARE = 0.8
# Rebuild a series' detector from the window once its oldest memory is this far out of it.
REBUILD_AFTER_SECONDS = 120.0


@dataclass(frozen=True)
class Floor:
    """How far above its pre-onset baseline a series must be to matter (all must hold)."""

    absolute: float = 0.0  # the value itself must reach this
    over_baseline: float = 0.0  # value - baseline must reach this
    ratio: float = 1.0  # value / baseline must reach this (when the baseline is positive)

    def holds(self, value: float, baseline: float) -> bool:
        if value < self.absolute or value - baseline < self.over_baseline:
            return False
        return baseline <= 0 or value / baseline >= self.ratio


@dataclass(frozen=True)
class WatchedSeries:
    """One derived series, the signal it raises and the floor that makes it matter."""

    name: str
    signal: Signal
    floor: Floor
    unit: str


WATCHED: tuple[WatchedSeries, ...] = (
    WatchedSeries("error_ratio", "error_ratio_up", Floor(absolute=0.05, over_baseline=0.04), ""),
    WatchedSeries("latency_p95_s", "latency_up", Floor(over_baseline=0.05, ratio=1.5), "s"),
    WatchedSeries("request_rate", "request_rate_up", Floor(over_baseline=5.0, ratio=2.0), "/s"),
    WatchedSeries("rss_bytes", "memory_growing", Floor(over_baseline=20 * 2**20), "B"),
    WatchedSeries("disk_used_bytes", "disk_growing", Floor(over_baseline=10 * 2**20), "B"),
)


# ---- derived series ----------------------------------------------------------------------


def _sum_columns(frame: pd.DataFrame, keep: Callable[[str], bool]) -> pd.Series:
    columns = [c for c in frame.columns if keep(str(c))]
    if not columns:
        return pd.Series(0.0, index=frame.index)
    return frame[columns].sum(axis=1)


def derive_series(
    source: MetricSource, service: str, start: datetime, end: datetime, step: timedelta = STEP
) -> dict[str, pd.Series]:
    """The watched series of one pilot-style service, on the `step` grid over [start, end]."""
    work = {"path": "/"}  # health checks and scrapes are not the service's work
    by_status = source.query_range_by(
        service, "pilot_requests_total", "status", start, end, step, labels=work
    )
    series: dict[str, pd.Series] = {}
    if not by_status.empty:
        total = rate(by_status.sum(axis=1), RATE_WINDOW)
        errors = rate(_sum_columns(by_status, lambda s: s.startswith("5")), RATE_WINDOW)
        series["request_rate"] = total
        ratio = (errors / total.where(total > 0)).dropna()
        series["error_ratio"] = ratio.clip(lower=0.0, upper=1.0)
    buckets = source.query_range_by(
        service, "pilot_request_duration_seconds_bucket", "le", start, end, step, labels=work
    )
    if not buckets.empty:
        series["latency_p95_s"] = latency_quantile(buckets, 0.95, window=RATE_WINDOW).dropna()
    for name, metric in (
        ("rss_bytes", "process_resident_memory_bytes"),
        ("disk_used_bytes", "pilot_disk_used_bytes"),
        ("pool_in_use", "pilot_db_pool_in_use"),
        ("pool_size", "pilot_db_pool_size"),
        ("pool_waiting", "pilot_db_pool_waiting"),
        ("cache_version_lag", "pilot_cache_version_lag"),
    ):
        values = source.query_range(service, metric, start, end, step)
        if not values.empty:
            series[name] = values
    stale = source.query_range(service, "pilot_cache_stale_reads_total", start, end, step)
    if not stale.empty:
        series["stale_read_rate"] = rate(stale, RATE_WINDOW)
    timeouts = source.query_range(service, "pilot_db_pool_timeouts_total", start, end, step)
    if not timeouts.empty:
        series["pool_timeout_rate"] = rate(timeouts, RATE_WINDOW)
    return {k: v.dropna().sort_index() for k, v in series.items() if not v.dropna().empty}


# ---- the ensemble over each series ------------------------------------------------------


@dataclass
class _Tracked:
    detector: EnsembleDetector
    built_from: float  # first timestamp the detector saw
    last_ts: float = -math.inf
    fired: list[tuple[float, float, list[str], list[str]]] = field(default_factory=list)


class DetectorCache:
    """Ensemble state per (service, series), fed only unseen points; safe across threads.

    Replaying a whole window costs ~0.2 ms a point, so state is kept between ticks and rebuilt
    only when it remembers more than `REBUILD_AFTER_SECONDS` beyond the window.
    """

    def __init__(self, factory: Callable[[], EnsembleDetector] = EnsembleDetector) -> None:
        self._factory = factory
        self._tracked: dict[tuple[str, str], _Tracked] = {}
        self._lock = threading.Lock()
        self._model: LearnedDetector | None = None

    @property
    def model(self) -> LearnedDetector | None:
        """The learned detector every new ensemble gets as its extra scorer (if any)."""
        return self._model

    def use_model(self, model: LearnedDetector | None) -> None:
        """Switch the learned member; detectors are rebuilt from the window on their next feed."""
        with self._lock:
            if (model and model.model_id) != (self._model and self._model.model_id):
                self._model = model
                self._tracked.clear()

    def _new_detector(self, name: str) -> EnsembleDetector:
        scorer = self._model.scorer(name) if self._model is not None else None
        if scorer is None:
            return self._factory()
        return EnsembleDetector(extra_scorer=scorer)

    def feed(
        self, service: str, name: str, series: pd.Series
    ) -> list[tuple[float, float, list[str], list[str]]]:
        """Score the new points; return every firing still in the series' window.

        Each firing is (timestamp, score, detectors that fired, their reasons).
        """
        with self._lock:
            tracked = self._tracked.get((service, name))
            first = series.index[0].timestamp() if len(series) else math.inf
            stale = tracked is not None and first - tracked.built_from > REBUILD_AFTER_SECONDS
            if tracked is None or stale or tracked.last_ts < first - STEP.total_seconds():
                # The detectors' memory is the window: an extreme from long ago must not hide a
                # repeat of the same fault, so state older than the window is rebuilt from it.
                tracked = self._tracked[(service, name)] = _Tracked(self._new_detector(name), first)
            detector = tracked.detector
            for ts, value in series.items():
                stamp = ts.timestamp()
                if stamp <= tracked.last_ts:
                    continue
                verdict = detector.update(stamp, float(value))
                tracked.last_ts = stamp
                evidence = detector.last_evidence
                if evidence is not None and evidence.fired:
                    members = evidence.fired_members
                    tracked.fired.append(
                        (
                            stamp,
                            verdict.score,
                            [m.detector for m in members],
                            [verdict.reason, *(m.reason for m in members)],
                        )
                    )
            tracked.fired = [f for f in tracked.fired if f[0] >= first]
            return list(tracked.fired)


def series_anomaly(
    service: str,
    watched: WatchedSeries,
    series: pd.Series,
    firings: Sequence[tuple[float, float, list[str], list[str]]],
    now: datetime,
) -> Anomaly | None:
    """An anomaly when the ensemble fired and the series has stayed beyond its floor since.

    The onset is the earliest recent firing that starts the current episode: the values from it
    to now (at least `EPISODE_SHARE` of them) sit beyond the floor over the baseline before it.
    An older firing on noise — a range still being learned — does not start the episode.
    """
    recent = [f for f in firings if f[0] >= (now - HOLD).timestamp()]
    if not recent or series.empty:
        return None
    chosen: tuple[int, float] | None = None
    for index in range(len(recent) - 1, -1, -1):
        start = pd.Timestamp(recent[index][0], unit="s", tz="UTC")
        before, since = series[series.index < start], series[series.index >= start]
        if len(before) < MIN_BASELINE_POINTS or since.empty:
            break  # no baseline yet: a warming-up series is not an incident
        reference = float(np.median(before.to_numpy()))
        holding = [watched.floor.holds(float(v), reference) for v in since.to_numpy()]
        if not holding[-1] or sum(holding) < EPISODE_SHARE * len(holding):
            break
        chosen = (index, reference)
    if chosen is None:
        return None
    recent = recent[chosen[0] :]
    onset = datetime.fromtimestamp(recent[0][0], UTC)
    baseline = chosen[1]
    value = float(series.iloc[-1])
    detectors = sorted({d for f in recent for d in f[2]})
    reasons = list(dict.fromkeys(r for f in recent[:2] for r in f[3] if r))[:4]
    return Anomaly(
        service=service,
        metric=watched.name,
        onset=onset,
        last_seen=series.index[-1].to_pydatetime(),
        score=min(1.0, max(f[1] for f in recent)),
        direction="up",
        value=round(value, 6),
        baseline=round(baseline, 6),
        detectors=detectors,
        reasons=[
            f"{watched.name} {_fmt(value, watched.unit)}"
            f" vs baseline {_fmt(baseline, watched.unit)}",
            *reasons,
        ],
    )


def change_regression(
    service: str, watched: WatchedSeries, series: pd.Series, change: ConfigChange, now: datetime
) -> Anomaly | None:
    """A regression the last configuration change brought, judged against the values just
    before it — deployment verification, which does not habituate the way the online detectors
    do once they have seen the same excursion before (a repeated bad push).

    Holds when, from one rate window after the change, at least `CHANGE_POINTS` values exist and
    `EPISODE_SHARE` of them (the latest included) sit beyond the series' floor over the median of
    the `CHANGE_BASELINE` before the change. A rollback (a change that restores an earlier
    version) is never judged: it ends a regression, it does not start one.
    """
    if change.restores_version is not None or series.empty:
        return None
    applied = pd.Timestamp(change.applied_at).tz_convert("UTC")
    before = series[(series.index < applied) & (series.index >= applied - CHANGE_BASELINE)]
    since = series[series.index >= applied + RATE_WINDOW]
    if len(before) < MIN_BASELINE_POINTS or len(since) < CHANGE_POINTS:
        return None
    reference = float(np.median(before.to_numpy()))
    holding = [watched.floor.holds(float(v), reference) for v in since.to_numpy()]
    if not holding[-1] or sum(holding) < EPISODE_SHARE * len(holding):
        return None
    value = float(series.iloc[-1])
    return Anomaly(
        service=service,
        metric=watched.name,
        onset=since.index[holding.index(True)].to_pydatetime(),
        last_seen=series.index[-1].to_pydatetime(),
        score=min(1.0, sum(holding) / len(holding)),
        direction="up",
        value=round(value, 6),
        baseline=round(reference, 6),
        detectors=["change_verification"],
        reasons=[
            f"{watched.name} {_fmt(value, watched.unit)} since config v{change.version}"
            f" vs {_fmt(reference, watched.unit)} before it"
        ],
    )


def _fmt(value: float, unit: str) -> str:
    if unit == "B":
        return f"{value / 2**20:.1f} MiB"
    if unit == "s":
        return f"{value * 1000:.0f} ms"
    return f"{value:.3g}{unit}"


# ---- signals --------------------------------------------------------------------------------


def probe_signals(probe: ProbeResult | None) -> list[Signal]:
    """What one health probe says, in signals."""
    if probe is None:
        return []
    signals: list[Signal] = []
    if not probe.healthy:
        signals.append("probe_timeout" if probe.detail.startswith("no answer") else "probe_refused")
    state = probe.process_state
    if state == "FROZEN":
        signals.append("process_frozen")
    elif (
        state is not None
        and state not in ("RUNNING", "STARTING")
        and not state.startswith("unknown")
    ):
        signals.append("process_down")
    return signals


def state_signals(series: Mapping[str, pd.Series]) -> tuple[list[Signal], list[str]]:
    """Signals read directly from state gauges (a saturated pool is a fact, not a deviation)."""
    signals: list[Signal] = []
    notes: list[str] = []

    def last(name: str) -> float | None:
        values = series.get(name)
        return None if values is None or values.empty else float(values.iloc[-1])

    def recent_max(name: str, points: int = 5) -> float:
        values = series.get(name)
        return 0.0 if values is None or values.empty else float(values.iloc[-points:].max())

    in_use, size = last("pool_in_use"), last("pool_size")
    if in_use is not None and size and in_use >= size:
        waiting = recent_max("pool_waiting") > 0 or recent_max("pool_timeout_rate") > 0
        if waiting:
            signals.append("pool_saturated")
            notes.append(f"database pool {in_use:.0f}/{size:.0f} in use with requests waiting")
    lag, stale = recent_max("cache_version_lag"), recent_max("stale_read_rate")
    if lag > 0 and stale > 0:
        signals.append("cache_stale")
        notes.append(f"cache serves data {lag:.0f} version(s) behind ({stale:.2f} stale reads/s)")
    return signals, notes


def recent_config_changes(engine: Engine, now: datetime) -> dict[str, list[ConfigChange]]:
    """Configuration versions applied within `CHANGE_LOOKBACK`, per service."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT service, version, created_at, applied_by, reason,"
                " rolled_back_to AS restores FROM config_versions c"
                " WHERE created_at >= :since AND created_at <= :now ORDER BY created_at"
            ),
            {"since": now - CHANGE_LOOKBACK, "now": now},
        ).mappings()
        changes: dict[str, list[ConfigChange]] = {}
        for r in rows:
            changes.setdefault(r["service"], []).append(
                ConfigChange(
                    service=r["service"],
                    version=r["version"],
                    applied_at=r["created_at"],
                    applied_by=r["applied_by"],
                    reason=r["reason"],
                    restores_version=r["restores"],
                )
            )
    return changes


def config_suspected(changes: Sequence[ConfigChange], relevant: Sequence[ConfigChange]) -> bool:
    """Whether a configuration change may be behind an episode: one was applied around its
    onset (`relevant`), and the configuration in force is not a rollback — a push rolled back
    since is no suspect any more."""
    return bool(relevant) and changes[-1].restores_version is None


def service_evidence(
    service: str,
    source: MetricSource,
    cache: DetectorCache,
    now: datetime,
    probe: ProbeResult | None,
    changes: Sequence[ConfigChange],
) -> ServiceEvidence:
    """Everything diagnosis needs about one service at `now`."""
    series = derive_series(source, service, now - WINDOW, now)
    signals = probe_signals(probe)
    anomalies: list[Anomaly] = []
    for watched in WATCHED:
        values = series.get(watched.name)
        if values is None:
            continue
        anomaly = series_anomaly(
            service, watched, values, cache.feed(service, watched.name, values), now
        )
        if anomaly is None and changes:
            anomaly = change_regression(service, watched, values, changes[-1], now)
        if anomaly is not None:
            anomalies.append(anomaly)
            signals.append(watched.signal)
    direct, notes = state_signals(series)
    signals.extend(direct)
    onset = min((a.onset for a in anomalies), default=now)
    relevant = [c for c in changes if -ONSET_SLACK <= onset - c.applied_at <= CHANGE_LOOKBACK]
    if config_suspected(changes, relevant) and (anomalies or direct):
        signals.append("config_changed")
    if probe is not None and not probe.healthy:
        notes.insert(0, f"health probe: {probe.detail} (process {probe.process_state})")
    return ServiceEvidence(
        service=service,
        observed_at=now,
        signals=list(dict.fromkeys(signals)),
        anomalies=anomalies,
        recent_changes=relevant,
        notes=notes,
    )
