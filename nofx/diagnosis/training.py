"""Train the learned detector on the platform's own history, store it, and load the active one.

Labels come from two records the platform keeps anyway: `fault_injections` (every fault the
CLI, benchmarks, chaos experiments and tests injected, with when it was cleared) and resolved
`healing_incidents` (a fault the platform fixed was a fault). A window of either labels a watched
series of its service *positive* when the window's pattern requires that series' signal (a memory
leak labels `rss_bytes`), *ignored* when the signal only supports the pattern, when the service
was down or hung (its series are gaps, not behaviour) and while a cleared fault fades; every other
sample is *normal*.

A model is activated only when its held-out figures clear `ACTIVATION`; otherwise it is kept
with its figures and the reason, and the active model (if any) stays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.engine import Engine

from nofx import model_registry as registry
from nofx.detection.learned import (
    Dataset,
    LearnedDetector,
    TrainedModel,
    TrainingError,
    describe,
    series_features,
    train,
)
from nofx.diagnosis.evidence import WATCHED, derive_series
from nofx.diagnosis.patterns import SIGNATURES
from nofx.telemetry.sources import MetricSource

MODEL_TYPE = "anomaly_detector"
FADE = timedelta(seconds=60)
# Patterns seen by probes: while they last the service's series are not behaviour.
PROBE_PATTERNS = frozenset({"service_down", "service_hung"})
# A model goes live only when, on the held-out later history, it flags at least this share of
# fault episodes, ranks well, and rarely flags normal samples.
ACTIVATION = {"episode_recall": 0.5, "roc_auc": 0.75, "false_positive_rate": 0.02}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class LabelWindow:
    """A span during which a service had a known problem."""

    key: str
    service: str
    pattern: str
    start: datetime
    end: datetime
    origin: str  # "injection" or "incident"


def label_windows(engine: Engine, since: datetime, until: datetime) -> list[LabelWindow]:
    """Injected faults and resolved incidents overlapping [since, until]."""
    with engine.connect() as conn:
        injections = conn.execute(
            # A fault ends when it is cleared or when the platform healed it, whichever is first.
            text(
                "SELECT f.id, f.service, f.expected_pattern, f.injected_at,"
                " least(f.cleared_at, (SELECT min(i.resolved_at) FROM healing_incidents i"
                "  WHERE i.status = 'resolved' AND i.root_cause->>'service' = f.service"
                "  AND i.incident_type = f.expected_pattern AND i.resolved_at > f.injected_at))"
                " FROM fault_injections f WHERE f.expected_pattern IS NOT NULL"
                " AND f.injected_at <= :until AND coalesce(f.cleared_at, :until) >= :since"
            ),
            {"since": since, "until": until},
        ).all()
        incidents = conn.execute(
            text(
                "SELECT id, root_cause->>'service', incident_type, started_at, resolved_at"
                " FROM healing_incidents WHERE status = 'resolved' AND resolved_at IS NOT NULL"
                " AND root_cause->>'service' IS NOT NULL"
                " AND started_at <= :until AND resolved_at >= :since"
            ),
            {"since": since, "until": until},
        ).all()
    windows = [
        LabelWindow(f"fault:{i}", s, p, start, end or until, "injection")
        for i, s, p, start, end in injections
    ]
    windows += [
        LabelWindow(f"incident:{i}", s, p, start, end, "incident")
        for i, s, p, start, end in incidents
    ]
    return sorted(windows, key=lambda w: w.start)


def _roles(pattern: str) -> tuple[frozenset[str], frozenset[str]]:
    signature = next((s for s in SIGNATURES if s.pattern == pattern), None)
    if signature is None:
        return frozenset(), frozenset()
    return frozenset(signature.required), frozenset(signature.supporting)


def build_dataset(
    source: MetricSource,
    services: Sequence[str],
    windows: Sequence[LabelWindow],
    since: datetime,
    until: datetime,
    progress: Progress | None = None,
) -> tuple[Dataset, dict[str, Any]]:
    """Features and labels of every watched series of every service over [since, until]."""
    names = [w.name for w in WATCHED]
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, list[str | None]]] = []
    summary: dict[str, Any] = {"series": 0, "ignored_points": 0, "by_series": {}}
    for number, service in enumerate(services, 1):
        derived = derive_series(source, service, since, until)
        mine = [w for w in windows if w.service == service]
        for kind, watched in enumerate(WATCHED):
            values = derived.get(watched.name)
            if values is None or values.empty:
                continue
            features, usable = series_features(kind, values.to_numpy(dtype=float))
            stamps = np.array([t.timestamp() for t in values.index], dtype=np.float64)
            labels = np.zeros(len(values), dtype=np.int8)
            episodes: list[str | None] = [None] * len(values)
            for window in mine:
                start, end = window.start.timestamp(), window.end.timestamp()
                required, supporting = _roles(window.pattern)
                inside = (stamps >= start) & (stamps <= end)
                fading = (stamps > end) & (stamps <= end + FADE.total_seconds())
                if window.pattern in PROBE_PATTERNS or watched.signal in supporting:
                    usable &= ~(inside | fading)
                elif watched.signal in required:
                    labels[inside] = 1
                    usable &= ~fading
                    for index in np.flatnonzero(inside):
                        episodes[index] = f"{window.key}:{watched.name}"
                else:
                    usable &= ~fading
            summary["ignored_points"] += int(len(values) - usable.sum())
            summary["series"] += 1
            keep = np.flatnonzero(usable & ~np.isnan(features).any(axis=1))
            counts = summary["by_series"].setdefault(watched.name, {"points": 0, "positives": 0})
            counts["points"] += len(keep)
            counts["positives"] += int(labels[keep].sum())
            parts.append((features[keep], labels[keep], stamps[keep], [episodes[i] for i in keep]))
        if progress is not None:
            progress(f"features for {service} ({number}/{len(services)})")
    if not parts:
        raise TrainingError(f"no telemetry for {list(services)} between {since} and {until}")
    stamps = np.concatenate([p[2] for p in parts])
    order = np.argsort(stamps, kind="mergesort")
    episode_ids = [e for p in parts for e in p[3]]
    data = Dataset(
        features=np.concatenate([p[0] for p in parts])[order],
        labels=np.concatenate([p[1] for p in parts])[order],
        timestamps=stamps[order],
        episode_ids=[episode_ids[i] for i in order],
    )
    summary.update(
        points=len(data),
        positives=int(data.labels.sum()),
        series_names=names,
        windows=len(windows),
        windows_by_origin={
            origin: sum(1 for w in windows if w.origin == origin)
            for origin in ("injection", "incident")
        },
    )
    return data, summary


def activation_verdict(metrics: dict[str, Any]) -> tuple[bool, str]:
    """Whether held-out figures are good enough to go live, and why (or why not)."""
    holdout = metrics["holdout"]
    if not holdout["episodes"]:
        return False, "the held-out history has no fault episode to judge the model on"
    failures = []
    if (holdout["episode_recall"] or 0.0) < ACTIVATION["episode_recall"]:
        failures.append(
            f"episode recall {holdout['episode_recall']} < {ACTIVATION['episode_recall']}"
        )
    if holdout["roc_auc"] is None or holdout["roc_auc"] < ACTIVATION["roc_auc"]:
        failures.append(f"ROC AUC {holdout['roc_auc']} < {ACTIVATION['roc_auc']}")
    fpr = holdout["false_positive_rate"]
    if fpr is not None and fpr > ACTIVATION["false_positive_rate"]:
        failures.append(f"false-positive rate {fpr} > {ACTIVATION['false_positive_rate']}")
    if failures:
        return False, "; ".join(failures)
    return True, (
        f"held-out: {holdout['episodes_detected']}/{holdout['episodes']} fault episodes flagged,"
        f" ROC AUC {holdout['roc_auc']}, false-positive rate {fpr}"
    )


@dataclass(frozen=True)
class StoredModel:
    model_id: str
    version: str
    active: bool
    verdict: str
    metrics: dict[str, Any]
    training: dict[str, Any]


def store_model(
    engine: Engine,
    model: TrainedModel,
    training: dict[str, Any],
    *,
    activate: bool | None,
    now: datetime | None = None,
) -> StoredModel:
    """Record the model, its figures and artifact; make it the active one when it qualifies.

    `activate`: None decides by `activation_verdict`, True forces, False never activates.
    """
    now = now or datetime.now(UTC)
    metrics = dict(describe(model))
    qualifies, verdict = activation_verdict(metrics)
    go_live = qualifies if activate is None else activate
    if activate is not None:
        verdict = f"{'activated' if activate else 'not activated'} by request ({verdict})"
    metrics["activation"] = {"active": go_live, "verdict": verdict, "criteria": ACTIVATION}
    version = f"lgbm-{now:%Y%m%dT%H%M%S}"
    model_id = registry.store(
        engine,
        MODEL_TYPE,
        version,
        model.to_text(),
        "lightgbm-text",
        training,
        metrics,
        activate=go_live,
        now=now,
    )
    return StoredModel(str(model_id), version, go_live, verdict, metrics, training)


# Windows that start within this of each other are one episode of faults (a stage injected at
# once, or one fault seen as an injection and as the incident that healed it).
EPISODE_GAP = timedelta(seconds=60)


def holdout_cut(windows: Sequence[LabelWindow], share: float) -> datetime:
    """Where the held-out later history starts: before the latest `share` of fault episodes.

    Cutting by episodes, not by clock time, keeps labelled faults on both sides however the
    history is spread (hours of quiet, then a burst of chaos runs); cutting between episodes
    keeps an episode's windows together.
    """
    if not 0.0 < share < 1.0:
        raise TrainingError(f"holdout_share must lie in (0, 1), got {share}")
    starts = sorted(w.start for w in windows)
    episodes = [starts[0]]
    for start in starts[1:]:
        if start - episodes[-1] > EPISODE_GAP:
            episodes.append(start)
    if len(episodes) < 2:
        raise TrainingError(
            f"all {len(windows)} labelled window(s) belong to one episode of faults: a"
            " time-ordered holdout needs faults at two separate times at least"
        )
    held = min(len(episodes) - 1, max(1, round(len(episodes) * share)))
    return episodes[len(episodes) - held]


def train_detector(
    engine: Engine,
    source: MetricSource,
    services: Sequence[str],
    since: datetime,
    until: datetime,
    *,
    holdout_share: float = 0.3,
    holdout_from: datetime | None = None,
    activate: bool | None = None,
    progress: Progress | None = None,
) -> StoredModel:
    """Build the dataset, train on the earlier part, judge on the later, store (module doc).

    The held-out part starts at `holdout_from`, or else before the latest `holdout_share` of
    fault episodes (`holdout_cut`).
    """
    if not since < until:
        raise TrainingError(f"empty history window: since {since} is not before until {until}")
    if holdout_from is not None and not since < holdout_from < until:
        raise TrainingError(f"holdout_from {holdout_from} must lie inside ({since}, {until})")
    windows = label_windows(engine, since, until)
    if not windows:
        raise TrainingError(
            f"no injected fault or resolved incident between {since} and {until}: nothing to learn"
        )
    if holdout_from is None:
        holdout_from = holdout_cut(windows, holdout_share)
    data, summary = build_dataset(source, services, windows, since, until, progress)
    if progress is not None:
        progress(f"training on {len(data)} samples ({summary['positives']} labelled faulty)")
    model = train(data, [w.name for w in WATCHED], holdout_from.timestamp())
    training = {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "holdout_from": holdout_from.isoformat(),
        "services": list(services),
        **summary,
    }
    return store_model(engine, model, training, activate=activate)


def active_model_id(engine: Engine) -> str | None:
    return registry.active_id(engine, MODEL_TYPE)


def load_detector(engine: Engine, model_id: str) -> LearnedDetector:
    """A stored model, checked against its recorded hash."""
    try:
        row, artifact = registry.load_artifact(engine, model_id)
    except registry.RegistryError as err:
        raise TrainingError(str(err)) from None
    return LearnedDetector(model_id, row.version, artifact, row.metrics["series"])


def list_models(engine: Engine, limit: int = 20) -> list[dict[str, Any]]:
    return [
        {
            "id": m.model_id,
            "model_version": m.version,
            "active": m.active,
            "created_at": m.created_at,
            "deployed_at": m.deployed_at,
            "performance_metrics": m.metrics,
        }
        for m in registry.list_models(engine, MODEL_TYPE, limit)
    ]
