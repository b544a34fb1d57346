"""The NAB scorer against cases worked out by hand from NAB's published rules.

Most cases use one file of 100 rows: probation is rows 0-14 (floor(0.15 * 100) = 15) and one
window spans rows 40-49 (width 10). The reward curve is ``2 / (1 + exp(5 y)) - 1``; a true
positive is divided by its value at y = -1 (0.986614) so the window's first row earns exactly
A_TP.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nofx.detection.nab_scoring import (
    PROFILES,
    ScoredSeries,
    locate_windows,
    normalise,
    null_and_perfect,
    probation_length,
    row_weights,
    scaled_sigmoid,
    score_corpus,
    score_detections,
    sweep_thresholds,
    window_rows,
)
from tests.helpers import run_benchmark

ROOT = Path(__file__).resolve().parents[1]
STANDARD = PROFILES["standard"]
LOW_FP = PROFILES["reward_low_FP"]
LOW_FN = PROFILES["reward_low_FN"]
WINDOW = ((40, 49),)
N_ROWS = 100
# sigmoid(-1) = 2 / (1 + e^-5) - 1
MAX_TP = 0.9866142981514303


def detections(*rows: int, n_rows: int = N_ROWS) -> np.ndarray:
    flags = np.zeros(n_rows, dtype=bool)
    flags[list(rows)] = True
    return flags


def test_reward_curve_matches_nab_values() -> None:
    assert scaled_sigmoid(-1.0) == pytest.approx(MAX_TP)
    assert scaled_sigmoid(-0.5) == pytest.approx(0.8482836399575129)  # NAB's docstring: 0.84828
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(1.0) == pytest.approx(-MAX_TP)
    assert scaled_sigmoid(3.0) == -1.0  # "FP well behind window"


@pytest.mark.parametrize(
    ("n_rows", "expected"), [(100, 15), (1127, 169), (4032, 604), (10_000, 750)]
)
def test_probation_is_15_percent_capped_at_750(n_rows: int, expected: int) -> None:
    assert probation_length(n_rows) == expected


def test_detection_at_window_start_earns_the_full_tp_weight() -> None:
    # y = -(49 - 40 + 1) / 10 = -1
    result = score_detections("f", detections(40), WINDOW, STANDARD)
    assert result.score == pytest.approx(1.0)
    assert (result.detected, result.missed, result.false_positives) == (1, 0, 0)


def test_detection_in_window_middle() -> None:
    # y = -(49 - 45 + 1) / 10 = -0.5 -> 0.848284 / 0.986614 = 0.859793
    result = score_detections("f", detections(45), WINDOW, STANDARD)
    assert result.score == pytest.approx(0.8482836399575129 / MAX_TP)
    assert result.score == pytest.approx(0.859793, abs=1e-6)


def test_detection_at_window_end_earns_little() -> None:
    # y = -(49 - 49 + 1) / 10 = -0.1 -> (2 / (1 + e^-0.5) - 1) / 0.986614 = 0.244919 / 0.986614
    result = score_detections("f", detections(49), WINDOW, STANDARD)
    assert result.score == pytest.approx(0.244918662 / MAX_TP, abs=1e-8)


def test_only_the_earliest_detection_in_a_window_counts() -> None:
    both = score_detections("f", detections(41, 45, 49), WINDOW, STANDARD)
    first = score_detections("f", detections(41), WINDOW, STANDARD)
    assert both.score == first.score
    assert both.first_detections == (41,)


def test_a_missed_window_costs_the_fn_weight() -> None:
    assert score_detections("f", detections(), WINDOW, STANDARD).score == -1.0
    assert score_detections("f", detections(), WINDOW, LOW_FN).score == -2.0


def test_false_positive_right_after_a_window_is_cheap() -> None:
    # Row 50: y = (50 - 49) / (10 - 1) = 1/9 -> 2 / (1 + e^(5/9)) - 1 = -0.270843, times 0.11;
    # the window itself is missed (-1).
    result = score_detections("f", detections(50), WINDOW, STANDARD)
    expected_fp = (2 / (1 + math.exp(5 / 9)) - 1) * 0.11
    assert expected_fp == pytest.approx(-0.0297927, abs=1e-6)
    assert result.score == pytest.approx(-1.0 + expected_fp)
    assert result.false_positives == 1


def test_false_positive_far_after_a_window_costs_the_full_fp_weight() -> None:
    # Row 90: y = 41 / 9 = 4.6 >= 3 -> -1 times A_FP.
    assert score_detections("f", detections(90), WINDOW, STANDARD).score == pytest.approx(-1.11)
    assert score_detections("f", detections(90), WINDOW, LOW_FP).score == pytest.approx(-1.22)


def test_false_positive_before_the_first_window_costs_the_full_fp_weight() -> None:
    # No previous window: NAB treats the row as "far behind" a window (y = 3).
    result = score_detections("f", detections(20, 40), WINDOW, STANDARD)
    assert result.score == pytest.approx(1.0 - 0.11)


def test_detections_in_probation_are_ignored() -> None:
    result = score_detections("f", detections(3, 14), WINDOW, STANDARD)
    assert result.score == -1.0
    assert result.false_positives == 0


def test_a_window_wholly_in_probation_is_not_scored() -> None:
    windows = ((5, 9), (40, 49))
    weights = row_weights(N_ROWS, windows, STANDARD)
    assert weights.scored_windows.tolist() == [1]
    assert score_detections("f", detections(7, 40), windows, STANDARD).score == pytest.approx(1.0)
    # An FP after the probation window is weighed relative to it: row 20, y = 11 / 4 = 2.75.
    fp = score_detections("f", detections(20, 40), windows, STANDARD).score - 1.0
    assert fp == pytest.approx((2 / (1 + math.exp(5 * 2.75)) - 1) * 0.11)


def test_profiles_weigh_the_same_detections_differently() -> None:
    hits = detections(45, 90)
    tp = 0.8482836399575129 / MAX_TP
    assert score_detections("f", hits, WINDOW, STANDARD).score == pytest.approx(tp - 0.11)
    assert score_detections("f", hits, WINDOW, LOW_FP).score == pytest.approx(tp - 0.22)
    assert score_detections("f", hits, WINDOW, LOW_FN).score == pytest.approx(tp - 0.11)
    assert score_detections("f", detections(90), WINDOW, LOW_FN).score == pytest.approx(-2.11)


def test_null_and_perfect_and_normalisation() -> None:
    series = [
        ScoredSeries("a", np.zeros(N_ROWS), WINDOW),
        ScoredSeries("b", np.zeros(N_ROWS), ((30, 39), (60, 69))),
        ScoredSeries("c", np.zeros(N_ROWS), ()),
    ]
    assert null_and_perfect(series, STANDARD) == (-3.0, 3.0)
    assert null_and_perfect(series, LOW_FN) == (-6.0, 3.0)
    assert normalise(-3.0, -3.0, 3.0) == 0.0
    assert normalise(3.0, -3.0, 3.0) == 100.0
    assert normalise(0.75, -3.0, 3.0) == pytest.approx(62.5)


def test_a_detector_firing_at_every_window_start_scores_100() -> None:
    windows = ((30, 39), (60, 69))
    scores = np.zeros(N_ROWS)
    scores[[30, 60]] = 1.0
    for profile in PROFILES.values():
        result = score_corpus([ScoredSeries("f", scores, windows)], profile)
        assert result.normalised == pytest.approx(100.0)
        assert result.threshold == 1.0


def test_a_detector_that_never_fires_scores_0() -> None:
    result = score_corpus([ScoredSeries("f", np.zeros(N_ROWS), WINDOW)], STANDARD)
    assert result.threshold == 1.1  # above every score: nothing detected
    assert result.normalised == 0.0


def test_threshold_sweep_picks_the_best_corpus_wide_threshold() -> None:
    # 0.9 at the window start (TP), 0.8 far after it (FP), 0.7 in probation (ignored).
    scores = np.zeros(N_ROWS)
    scores[40], scores[90], scores[5] = 0.9, 0.8, 0.7
    thresholds, totals = sweep_thresholds([ScoredSeries("f", scores, WINDOW)], STANDARD)
    assert thresholds.tolist() == [1.1, 0.9, 0.8, 0.0]
    # nothing: window missed; 0.9: window hit at its start; 0.8: plus one FP far after it;
    # 0.0: every scored row fires, 25 of them before the window at the full FP cost, and more.
    assert totals[:3].tolist() == pytest.approx([-1.0, 1.0, 0.89])
    assert totals[3] < 1.0 - 25 * 0.11
    result = score_corpus([ScoredSeries("f", scores, WINDOW)], STANDARD)
    assert result.threshold == 0.9
    assert result.raw == pytest.approx(1.0)


def test_ties_go_to_the_highest_threshold() -> None:
    # Lowering the threshold from 0.9 to 0.5 adds a detection inside the already-detected
    # window: same score, so the stricter threshold wins, as in NAB's stable sort.
    scores = np.zeros(N_ROWS)
    scores[40], scores[45] = 0.9, 0.5
    assert score_corpus([ScoredSeries("f", scores, WINDOW)], STANDARD).threshold == 0.9


def test_file_scores_add_up_to_the_swept_corpus_score() -> None:
    rng = np.random.default_rng(7)
    series = [
        ScoredSeries(f"f{i}", rng.random(N_ROWS) ** 8, ((20 + i, 29 + i), (70, 79)))
        for i in range(4)
    ]
    for profile in PROFILES.values():
        result = score_corpus(series, profile)
        assert sum(f.score for f in result.files) == pytest.approx(result.raw)


def test_window_rows_follow_nab_on_repeated_timestamps() -> None:
    stamps = np.array(
        ["2024-01-01T00:00", "2024-01-01T00:05", "2024-01-01T00:05", "2024-01-01T00:10"],
        dtype="datetime64[ns]",
    )
    # NAB locates a limit with list.index: the first row carrying that timestamp.
    assert window_rows(stamps, [("2024-01-01 00:05:00.000000", "2024-01-01 00:05:00")]) == ((1, 1),)
    assert window_rows(stamps, [("2024-01-01 00:00", "2024-01-01 00:10")]) == ((0, 3),)


def test_window_rows_rejects_overlapping_or_empty_windows() -> None:
    stamps = np.arange(10).astype("datetime64[m]").astype("datetime64[ns]")
    with pytest.raises(ValueError, match="overlap"):
        window_rows(stamps, [(stamps[1], stamps[5]), (stamps[4], stamps[8])])
    with pytest.raises(ValueError, match="no row"):
        window_rows(stamps, [(np.datetime64("2030-01-01"), np.datetime64("2030-01-02"))])


def test_scores_outside_0_1_or_nan_are_refused() -> None:
    for bad in (np.full(N_ROWS, np.nan), np.full(N_ROWS, 1.5)):
        with pytest.raises(ValueError, match="anomaly scores"):
            score_corpus([ScoredSeries("f", bad, WINDOW)], STANDARD)


# A real NAB series made messy as real telemetry is (tests/data/nab_clock_set_back.csv): rows
# 800-1599 of realAWSCloudwatch/ec2_cpu_utilization_5f5533.csv (5-minute CPU), with the clock set
# back one hour five rows after the anomaly window ends (09:07 reads 08:07 again, so eight rows
# are stamped inside the closed window), twelve rows written twice, one value NaN and two hours
# of rows missing. 788 rows; the window is NAB's own label for that file.
MESSY = Path(__file__).parent / "data" / "nab_clock_set_back.csv"
MESSY_NAME = "realAWSCloudwatch/ec2_cpu_utilization_5f5533.csv"
MESSY_WINDOW = ("2014-02-18 16:02:00.000000", "2014-02-19 08:42:00.000000")


def messy_stamps() -> np.ndarray:
    frame = pd.read_csv(MESSY)
    return pd.to_datetime(frame["timestamp"]).to_numpy(dtype="datetime64[ns]")


def test_windows_of_a_file_whose_clock_is_set_back_are_located_as_nab_does() -> None:
    stamps = messy_stamps()
    assert np.any(np.diff(stamps) < np.timedelta64(0, "ns"))  # the case that used to raise

    located = locate_windows(stamps, [MESSY_WINDOW])

    # NAB enters at the row stamped with the start, leaves after the first row stamped with
    # the end; the eight rows the set-back clock stamps 08:07-08:42 again come after it.
    assert located.rows == ((350, 554),)
    start, end = np.asarray(MESSY_WINDOW, dtype="datetime64[ns]")
    assert stamps[350] == start
    assert stamps[554] == end
    assert np.flatnonzero(stamps == end).tolist() == [554, 566]
    assert located.stamped_inside_scored_outside == 8
    assert located.scored_inside_stamped_outside == 0
    assert window_rows(stamps, [MESSY_WINDOW]) == located.rows


def test_a_clock_set_back_inside_a_window_keeps_the_window_together() -> None:
    # 00:00..00:25, back to 00:05 while inside [00:10, 00:20], on to 00:30.
    minutes = [0, 5, 10, 15, 5, 10, 15, 20, 25, 30]
    stamps = (np.asarray(minutes) * 60).astype("datetime64[s]").astype("datetime64[ns]")
    window = (stamps[2], stamps[7])

    located = locate_windows(stamps, [window])

    # Rows 2..7 in file order, as NAB scores them; row 4 (00:05) is inside the range only.
    assert located.rows == ((2, 7),)
    assert located.scored_inside_stamped_outside == 1
    assert located.stamped_inside_scored_outside == 0


def test_rows_stamped_inside_a_closed_window_are_scored_as_false_positives() -> None:
    stamps = messy_stamps()
    windows = window_rows(stamps, [MESSY_WINDOW])
    late = 560  # stamped 08:12, inside the window's range, after the window closed
    assert np.datetime64(MESSY_WINDOW[0]) <= stamps[late] <= np.datetime64(MESSY_WINDOW[1])

    result = score_detections(
        MESSY_NAME, detections(360, late, n_rows=stamps.size), windows, STANDARD
    )

    assert result.detected == 1
    assert result.false_positives == 1
    assert result.first_detections == (360,)


def test_the_nab_benchmark_scores_the_messy_series_and_reports_its_odd_rows(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data" / MESSY_NAME
    data.parent.mkdir(parents=True)
    shutil.copy(MESSY, data)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "combined_windows.json").write_text(
        json.dumps({MESSY_NAME: [list(MESSY_WINDOW)]})
    )
    out = tmp_path / "nab.json"

    finished = run_benchmark(
        "nab.py",
        *("--data", str(tmp_path / "data"), "--labels", str(tmp_path / "labels")),
        *("--out", str(out), "--workers", "1"),
        timeout=240,
    )
    document = json.loads(out.read_text())
    assert set(document) >= {"ensemble", "windowed_gaussian", "never_fires"}
    entry = document["run"]["odd_rows"][MESSY_NAME]
    rows = entry["rows"]
    assert (rows["rows"], rows["non_finite"], rows["clock_set_back"], rows["gaps"]) == (
        788,
        1,
        1,
        1,
    )
    # Twelve retried writes plus the last set-back row (09:02 again) repeat the newest stamp;
    # the other eleven set-back rows are behind it.
    assert (rows["repeated"], rows["behind"]) == (13, 11)
    assert rows["largest_behind_seconds"] == 3300.0
    assert rows["largest_gap_seconds"] == 7500.0
    assert entry["windows"]["rows"] == [[350, 554]]
    assert entry["windows"]["stamped_inside_scored_outside"] == 8
    detectors = entry["detectors"]
    assert detectors["ensemble"]["samples"] == 788
    assert detectors["ensemble"]["non_finite"] == 1
    assert detectors["ensemble/seasonal"]["behind_skipped"] == 11
    assert detectors["windowed_gaussian"]["behind_skipped"] == 0
    assert "clock set back 1x, up to 55 min" in finished.stdout
    assert "ensemble/seasonal: " in finished.stdout
    assert "11 skipped" in finished.stdout
    assert "8 rows stamped inside a window scored outside it" in finished.stdout
