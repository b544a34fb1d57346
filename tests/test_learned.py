"""The learned detector: its online features, time-ordered training and judging, storage and the
activation gate, and its place in the ensemble. Series here are generated; the live fleet's own
history trains it in tests/test_detection_e2e.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from nofx.db import to_sqlalchemy_url
from nofx.detection.learned import (
    FEATURES,
    Dataset,
    Evaluation,
    LearnedDetector,
    TrainingError,
    describe,
    evaluate,
    roc_auc,
    series_features,
    split_by_time,
    train,
)
from nofx.diagnosis.evidence import DetectorCache
from nofx.diagnosis.training import (
    LabelWindow,
    activation_verdict,
    active_model_id,
    holdout_cut,
    list_models,
    load_detector,
    store_model,
)

SERIES = ("a", "b", "c")
FAULTS = ((500, 600), (1500, 1580), (2500, 2600))


def faulty(n: int, faults: tuple[tuple[int, int], ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise around 10 with ramps where the faults are; labels 1 inside them."""
    rng = np.random.default_rng(seed)
    values = rng.normal(10.0, 1.0, n)
    labels = np.zeros(n, dtype=np.int8)
    for start, end in faults:
        values[start:end] += np.linspace(2.0, 12.0, end - start)
        labels[start:end] = 1
    return values, labels


def dataset(n: int = 3000) -> Dataset:
    """Three series with three faults each, merged in time order (2 s apart)."""
    parts = []
    for kind in range(len(SERIES)):
        values, labels = faulty(n, FAULTS, seed=kind)
        features, usable = series_features(kind, values)
        keep = np.flatnonzero(usable)
        stamps = np.arange(n, dtype=float) * 2.0
        episodes = [f"{kind}:{i // 1000}" if labels[i] else None for i in range(n)]
        parts.append((features[keep], labels[keep], stamps[keep], [episodes[i] for i in keep]))
    stamps = np.concatenate([p[2] for p in parts])
    order = np.argsort(stamps, kind="mergesort")
    episodes = [e for p in parts for e in p[3]]
    return Dataset(
        features=np.concatenate([p[0] for p in parts])[order],
        labels=np.concatenate([p[1] for p in parts])[order],
        timestamps=stamps[order],
        episode_ids=[episodes[i] for i in order],
    )


def test_roc_auc_matches_hand_computed_cases() -> None:
    labels = np.array([0, 0, 1, 1], dtype=np.int8)
    assert roc_auc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    # of the four positive/negative pairs three are ordered right and one is tied: 3.5 / 4
    assert roc_auc(labels, np.array([0.1, 0.5, 0.5, 0.9])) == 0.875
    assert roc_auc(labels, np.array([0.1, 0.8, 0.5, 0.9])) == 0.75
    assert roc_auc(np.array([0, 0], dtype=np.int8), np.array([0.1, 0.2])) is None


def test_evaluate_counts_points_and_episodes() -> None:
    data = Dataset(
        features=np.zeros((6, len(FEATURES))),
        labels=np.array([0, 1, 1, 0, 1, 1], dtype=np.int8),
        timestamps=np.arange(6, dtype=float) * 2.0,
        episode_ids=[None, "f:x", "f:x", None, "f:y", "f:y"],
    )
    # flags: a false positive at 0, episode x from its second sample, episode y missed; both
    # are series of one fault, which is caught
    got = evaluate(np.array([0.9, 0.1, 0.7, 0.2, 0.3, 0.4]), data, level=0.5)
    assert (got.points, got.positives) == (6, 4)
    assert (got.precision, got.recall, got.false_positive_rate) == (0.5, 0.25, 0.5)
    assert (got.episodes, got.episodes_detected, got.episode_recall) == (2, 1, 0.5)
    assert (got.faults, got.faults_detected) == (1, 1)
    assert got.detection_delay_p50_s == 2.0


def test_features_are_the_same_online_and_over_a_recorded_series() -> None:
    values, _ = faulty(400, ((300, 350),), seed=4)
    batch, usable = series_features(1, values)
    assert not usable[:24].any()
    assert usable[24:].all()
    model = train(dataset(), SERIES, cut=4000.0)
    detector = LearnedDetector("m", "v1", model.to_text(), SERIES)
    scorer = detector.scorer("b")
    assert scorer is not None
    assert detector.scorer("unknown") is None
    online = np.array([scorer(i * 2.0, v) for i, v in enumerate(values)])
    assert np.allclose(online[usable], detector.predict(batch[usable]))
    assert (online[~usable] == 0.0).all()


def test_training_is_judged_on_the_later_history_only() -> None:
    data = dataset()
    learn, judge = split_by_time(data, 4000.0)
    assert learn.timestamps.max() < 4000.0 <= judge.timestamps.min()
    assert len(learn) + len(judge) == len(data)
    model = train(data, SERIES, cut=4000.0)
    assert model.training_points == len(learn)
    result = model.evaluation
    assert result.points == len(judge)
    assert result.episodes == 3  # the third fault of each series lies after the cut
    assert result.episodes_detected == 3
    assert result.roc_auc is not None
    assert result.roc_auc > 0.95
    assert result.false_positive_rate is not None
    assert result.false_positive_rate < 0.01
    assert abs(sum(model.importance.values()) - 1.0) < 1e-3


def test_no_fault_before_the_cut_is_refused_with_the_reason() -> None:
    with pytest.raises(TrainingError, match="no labelled fault before the holdout cut"):
        train(dataset(), SERIES, cut=900.0)


def test_the_learned_member_fires_in_the_ensemble_and_says_so() -> None:
    model = train(dataset(), SERIES, cut=4000.0)
    cache = DetectorCache()
    cache.use_model(LearnedDetector("m", "v1", model.to_text(), SERIES))
    values, _ = faulty(300, ((220, 300),), seed=9)
    series = pd.Series(values, index=pd.date_range("2026-11-27", periods=300, freq="2s", tz="UTC"))
    firings = cache.feed("svc", "a", series)
    assert any("lightgbm" in fired[2] for fired in firings)
    assert all(
        fired[0] >= series.index[220].timestamp() for fired in firings if "lightgbm" in fired[2]
    )


def evaluation(**overrides: object) -> dict[str, object]:
    base = Evaluation(
        points=100,
        positives=10,
        roc_auc=0.9,
        precision=0.8,
        recall=0.7,
        f1=0.75,
        false_positive_rate=0.01,
        episodes=4,
        episodes_detected=3,
        faults=3,
        faults_detected=3,
        detection_delay_p50_s=6.0,
        level=0.5,
    ).as_dict()
    return {"holdout": {**base, **overrides}}


def test_the_activation_gate_names_what_falls_short() -> None:
    assert activation_verdict(evaluation())[0] is True
    ok, why = activation_verdict(evaluation(episodes=0, episodes_detected=0, episode_recall=None))
    assert not ok
    assert "no fault episode" in why
    ok, why = activation_verdict(evaluation(roc_auc=0.6, false_positive_rate=0.2))
    assert not ok
    assert "ROC AUC 0.6" in why
    assert "false-positive rate 0.2" in why


def test_models_are_stored_loaded_and_only_one_is_active(fresh_database_url: str) -> None:
    engine = create_engine(to_sqlalchemy_url(fresh_database_url))
    try:
        model = train(dataset(), SERIES, cut=4000.0)
        first = store_model(engine, model, {"points": 1}, activate=None)
        assert first.active, first.verdict
        assert active_model_id(engine) == first.model_id
        second = store_model(engine, model, {"points": 2}, activate=True, now=datetime.now(UTC))
        assert active_model_id(engine) == second.model_id
        kept = store_model(engine, model, {"points": 3}, activate=False)
        assert not kept.active
        assert "not activated by request" in kept.verdict
        assert active_model_id(engine) == second.model_id
        assert [m["active"] for m in list_models(engine)].count(True) == 1
        loaded = load_detector(engine, first.model_id)
        assert loaded.series == SERIES
        assert loaded.scorer("c") is not None
        assert describe(model)["holdout"]["episodes"] == 3
        # a tampered artifact is refused, not silently used
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE model_artifacts SET artifact = artifact || ' ' WHERE model_id = :i"),
                {"i": first.model_id},
            )
        with pytest.raises(TrainingError, match="does not match its recorded sha256"):
            load_detector(engine, first.model_id)
    finally:
        engine.dispose()


def window(minute: float, service: str = "s") -> LabelWindow:
    start = datetime(2026, 11, 27, 12, 0, tzinfo=UTC) + timedelta(minutes=minute)
    return LabelWindow(f"k{minute}{service}", service, "memory_leak", start, start, "injection")


def test_the_holdout_starts_before_the_latest_episodes_not_at_a_clock_share() -> None:
    # three bursts of faults (two at once in each), the last after an hour of quiet
    windows = [window(m, s) for m in (0, 10, 70) for s in ("a", "b")]
    assert holdout_cut(windows, 0.3) == windows[4].start  # the latest of three episodes
    assert holdout_cut(windows, 0.7) == windows[2].start  # two of three
    with pytest.raises(TrainingError, match="one episode"):
        holdout_cut([window(0, "a"), window(0.5, "b")], 0.3)
    with pytest.raises(TrainingError, match="holdout_share"):
        holdout_cut(windows, 1.0)
