"""Telemetry: cleaning, the scrape pipeline, and the three metric sources on real backends.

The scrape tests read the live staging fleet's real ``/metrics`` into a real PostgreSQL; the
Prometheus tests run the real ``prometheus`` server scraping that fleet (skipped only when the
binary is not installed); the CSV tests replay a NAB file from ``../shared/datasets`` (skipped
when the data set is absent).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text
from sqlmodel import Session

from models.tables import MetricSample
from nofx.db import make_engine
from nofx.telemetry import (
    CsvReplaySource,
    MetricSource,
    MetricSourceError,
    PrometheusSource,
    ScrapeSource,
    ScrapeTarget,
    SeriesNotFoundError,
    clean_series,
    histogram_quantile,
    increase,
    inventory_targets,
    latency_quantile,
    make_source,
    parse_exposition,
    prune_samples,
    rate,
    scrape_targets,
    window_quantile,
)
from nofx.telemetry.cleaning import RowAudit, audit_rows, clean_with_report
from pilot.fleet import Fleet, free_port
from tests.fixtures_prometheus import PrometheusServer

NAB_FILE = (
    Path(__file__).resolve().parents[2]
    / "shared/datasets/nab/data/realAWSCloudwatch/ec2_cpu_utilization_5f5533.csv"
)
T0 = pd.Timestamp("2024-01-01T00:00:00Z")
SECOND = timedelta(seconds=1)


def at(*seconds: float) -> pd.DatetimeIndex:
    """UTC timestamps ``seconds`` after T0."""
    return pd.DatetimeIndex([T0 + pd.Timedelta(seconds=s) for s in seconds])


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout}s")
        time.sleep(0.2)


# --------------------------------------------------------------------------------------------
# Cleaning


def test_nan_and_infinities_are_dropped() -> None:
    raw = pd.Series([1.0, np.nan, np.inf, -np.inf, 5.0, "oops"], index=at(0, 1, 2, 3, 4, 5))

    cleaned = clean_series(raw)

    assert cleaned.tolist() == [1.0, 5.0]
    assert list(cleaned.index) == list(at(0, 4))


def test_duplicates_resolve_the_same_whatever_the_order() -> None:
    stamps = at(0, 1, 1, 1, 2)
    values = [1.0, 7.0, 3.0, 5.0, 2.0]
    forward = clean_series(pd.Series(values, index=stamps))
    backward = clean_series(pd.Series(values[::-1], index=stamps[::-1]))

    assert forward.tolist() == [1.0, 7.0, 2.0]  # default "max": a spike stays visible
    pd.testing.assert_series_equal(forward, backward)
    assert clean_series(pd.Series(values, index=stamps), duplicates="last").tolist() == [
        1.0,
        5.0,
        2.0,
    ]


def test_out_of_order_samples_are_sorted() -> None:
    cleaned = clean_series(pd.Series([3.0, 1.0, 2.0], index=at(3, 1, 2)))

    assert cleaned.index.is_monotonic_increasing
    assert cleaned.tolist() == [1.0, 2.0, 3.0]


def test_short_gaps_are_bridged_long_gaps_left_missing() -> None:
    # Samples at 0..2, a 2-point hole (3, 4), samples 5..6, a 5-point hole (7..11), sample 12.
    raw = pd.Series([0.0, 1.0, 2.0, 5.0, 6.0, 12.0], index=at(0, 1, 2, 5, 6, 12))

    dropped = clean_series(raw, SECOND, start=T0, end=T0 + pd.Timedelta(seconds=12))
    kept = clean_series(raw, SECOND, start=T0, end=T0 + pd.Timedelta(seconds=12), long_gaps="nan")

    # The short hole carries the last observed value; the long one is not invented at all.
    assert list(dropped.index) == list(at(0, 1, 2, 3, 4, 5, 6, 12))
    assert dropped.tolist() == [0.0, 1.0, 2.0, 2.0, 2.0, 5.0, 6.0, 12.0]
    assert list(kept.index) == list(at(*range(13)))
    assert kept.iloc[7:12].isna().all()
    assert kept.iloc[3:5].tolist() == [2.0, 2.0]


def test_grid_points_only_use_past_samples() -> None:
    # A sample at 1.5s belongs to the point at 2s, never to the one at 1s (no look-ahead).
    raw = pd.Series([10.0, 20.0], index=at(0, 1.5))

    cleaned = clean_series(raw, SECOND, max_gap_steps=0)

    assert cleaned.to_dict() == {T0: 10.0, T0 + pd.Timedelta(seconds=2): 20.0}


def test_nothing_before_the_first_sample_is_filled() -> None:
    raw = pd.Series([4.0, 5.0], index=at(3, 4))

    cleaned = clean_series(raw, SECOND, start=T0, end=T0 + pd.Timedelta(seconds=4))

    assert list(cleaned.index) == list(at(3, 4))


@pytest.mark.parametrize(
    "raw",
    [
        pd.Series([], dtype="float64"),
        pd.Series([np.nan, np.inf], index=at(0, 1)),
        pd.Series([1.0, 2.0], index=["not a time", "nor this"]),
        pd.Series(["a", "b"], index=at(0, 1)),
    ],
    ids=["empty", "all-non-finite", "bad-timestamps", "bad-values"],
)
def test_empty_or_invalid_input_gives_an_empty_series(raw: pd.Series) -> None:
    for kwargs in ({}, {"step": SECOND}, {"step": SECOND, "start": T0, "end": T0}):
        cleaned = clean_series(raw, **kwargs)
        assert cleaned.empty
        assert str(cleaned.index.tz) == "UTC"
        assert cleaned.dtype == np.float64


def test_naive_timestamps_are_utc_and_numbers_are_unix_seconds() -> None:
    naive = clean_series(pd.Series([1.0], index=pd.DatetimeIndex(["2024-01-01 00:00:00"])))
    numeric = clean_series(pd.Series([1.0], index=[T0.timestamp()]))

    assert naive.index[0] == T0
    assert numeric.index[0] == T0


def test_bad_arguments_are_refused_with_a_message() -> None:
    raw = pd.Series([1.0], index=at(0))
    with pytest.raises(ValueError, match="step must be a positive"):
        clean_series(raw, timedelta(0))
    with pytest.raises(ValueError, match="max_gap_steps"):
        clean_series(raw, SECOND, max_gap_steps=-1)
    with pytest.raises(ValueError, match="coarser step"):
        clean_series(raw, timedelta(microseconds=1), start=T0, end=T0 + pd.Timedelta(days=30))


_samples = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=120_000).map(lambda ms: ms / 1000),  # s after T0
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True, width=64),
            st.integers(min_value=-1000, max_value=1000).map(float),
        ),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None, database=None)
@given(
    samples=_samples,
    step_seconds=st.sampled_from([1, 2, 5]),
    max_gap=st.integers(min_value=0, max_value=4),
    shuffle_seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_cleaning_properties(
    samples: list[tuple[float, float]], step_seconds: int, max_gap: int, shuffle_seed: int
) -> None:
    raw = pd.Series([v for _, v in samples], index=at(*(s for s, _ in samples)), dtype=float)
    shuffled = raw.sample(frac=1.0, random_state=shuffle_seed % (2**32))
    step = timedelta(seconds=step_seconds)

    for series, grid in ((raw, None), (raw, step)):
        cleaned = clean_series(series, grid, max_gap_steps=max_gap)
        again = clean_series(shuffled, grid, max_gap_steps=max_gap)

        # Sorted, unique, UTC, finite, and independent of arrival order.
        assert cleaned.index.is_monotonic_increasing
        assert cleaned.index.is_unique
        assert cleaned.empty or str(cleaned.index.tz) == "UTC"
        assert np.isfinite(cleaned.to_numpy()).all()
        pd.testing.assert_series_equal(cleaned, again)
        # Cleaning a clean series changes nothing.
        pd.testing.assert_series_equal(clean_series(cleaned, grid, max_gap_steps=max_gap), cleaned)

        finite = raw[np.isfinite(raw.to_numpy())]
        if grid is None:
            assert set(cleaned.index) == set(finite.index)
            continue
        # Never invented: each point holds a value observed at or before it, at most
        # max_gap + 1 steps earlier; and every point is on the grid.
        horizon = pd.Timedelta(step) * (max_gap + 1)
        for stamp, value in cleaned.items():
            assert (stamp - T0) % pd.Timedelta(step) == pd.Timedelta(0)
            window = finite[(finite.index <= stamp) & (finite.index > stamp - horizon)]
            assert value in set(window.tolist())


# A real NAB series made messy as real telemetry is (see tests/test_nab_scoring.py): the clock
# set back one hour once, twelve rows written twice, one NaN value, a two-hour gap. 788 rows.
MESSY = Path(__file__).parent / "data" / "nab_clock_set_back.csv"


def messy_series() -> pd.Series:
    frame = pd.read_csv(MESSY)
    return pd.Series(frame["value"].to_numpy(), index=frame["timestamp"], name="value")


def test_cleaning_the_messy_real_series_reports_what_it_found_and_did() -> None:
    cleaned = clean_with_report(messy_series())
    gridded = clean_with_report(messy_series(), timedelta(minutes=5))

    # Twelve retried writes and the set-back clock's return to 09:02 repeat the newest stamp,
    # eleven set-back rows are behind it; the NaN row leaves no hole in the time axis.
    assert cleaned.report.audit == RowAudit(
        rows=788,
        non_finite=1,
        repeated=13,
        behind=11,
        clock_set_back=1,
        largest_behind_seconds=3300.0,
        gaps=1,
        largest_gap_seconds=7500.0,
    )
    report = cleaned.report
    # Every set-back row lands on a stamp already taken: merged, none merely reordered.
    assert (report.dropped, report.duplicates_merged, report.sorted_into_place) == (1, 24, 0)
    assert len(cleaned.series) == 788 - 1 - 24
    assert cleaned.series.index.is_monotonic_increasing
    assert cleaned.series.index.is_unique
    assert (report.points_filled, report.points_missing) == (0, 0)
    assert report.describe() == (
        "788 rows: 1 with a non-finite value; 13 repeating the newest timestamp; 11 stamped "
        "behind the newest (clock set back 1x, up to 55 min); 1 gap (longest 2.08 h); "
        "1 dropped, 24 merged (max)"
    )
    # On a grid the NaN's point is bridged; the two-hour gap is left out, not invented.
    assert gridded.report.audit == cleaned.report.audit
    assert (gridded.report.points_filled, gridded.report.points_missing) == (1, 24)
    steps = gridded.series.index.to_series().diff().dropna()
    assert steps.max() == pd.Timedelta(minutes=125)
    assert gridded.report.as_dict()["audit"]["behind"] == 11


def test_late_rows_are_sorted_into_place_and_unusable_rows_named() -> None:
    raw = pd.Series(
        [0.0, 2.0, 1.0, 1.5, "oops", 3.0, 9.0],
        index=[*at(0, 2, 1, 1, 4, 3), "not a time"],
    )

    result = clean_with_report(raw)

    assert result.series.tolist() == [0.0, 1.5, 2.0, 3.0]  # the duplicate at 1 s merged by max
    audit = result.report.audit
    assert (audit.rows, audit.bad_timestamps, audit.non_finite) == (7, 1, 1)
    # Both rows at 1 s are behind 2 s, the clock went back once (2 -> 1 -> 1 -> 3: the row at
    # 4 s is not finite, so 3 s follows 1 s); one of them was the first at 1 s, now in place.
    assert (audit.repeated, audit.behind, audit.clock_set_back) == (0, 2, 1)
    assert audit.largest_behind_seconds == 1.0
    assert result.report.sorted_into_place == 1
    assert result.report.duplicates_merged == 1
    assert result.report.dropped == 2


def test_short_and_long_gaps_are_counted_on_the_grid() -> None:
    raw = pd.Series([0.0, 1.0, 2.0, 5.0, 6.0, 12.0], index=at(0, 1, 2, 5, 6, 12))
    end = T0 + pd.Timedelta(seconds=12)

    for long_gaps in ("drop", "nan"):
        report = clean_with_report(raw, SECOND, start=T0, end=end, long_gaps=long_gaps).report
        assert (report.points_filled, report.points_missing) == (2, 5)
        assert (report.audit.gaps, report.audit.largest_gap_seconds) == (2, 6.0)


def test_audit_rows_keeps_every_row_and_agrees_with_cleaning() -> None:
    raw = messy_series()
    before = raw.copy()

    audit = audit_rows(raw)

    pd.testing.assert_series_equal(raw, before)
    assert audit == clean_with_report(raw).report.audit
    assert audit_rows(pd.Series([], dtype="float64")) == RowAudit()


# --------------------------------------------------------------------------------------------
# Derived: counter rates, histogram quantiles


def test_rate_survives_a_counter_reset() -> None:
    # The process restarted between 2s and 3s: the counter fell from 20 to 5.
    counter = pd.Series([0.0, 10.0, 20.0, 5.0, 15.0], index=at(0, 1, 2, 3, 4))

    assert increase(counter).tolist() == [10.0, 10.0, 5.0, 10.0]
    assert rate(counter).tolist() == [10.0, 10.0, 5.0, 10.0]
    assert (rate(counter) >= 0).all()
    # Over a 2s trailing window: (10 + 10) / 2, (10 + 5) / 2, (5 + 10) / 2.
    assert rate(counter, window=timedelta(seconds=2)).tolist()[1:] == [10.0, 7.5, 7.5]


def test_rate_of_too_little_data_is_empty() -> None:
    assert rate(pd.Series([], dtype=float)).empty
    assert rate(pd.Series([3.0], index=at(0))).empty


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    buckets = {"0.1": 50.0, "0.5": 90.0, "1.0": 100.0, "+Inf": 100.0}

    # rank 95 lies in (0.5, 1.0], 5 of its 10 observations in: 0.5 + 0.5 * 5/10.
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.75)
    # rank 50 is the whole first bucket: 0 + 0.1 * 50/50.
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    # rank in the +Inf bucket: the highest finite bound is the best answer.
    assert histogram_quantile(0.95, {0.1: 10.0, math.inf: 100.0}) == pytest.approx(0.1)
    assert math.isnan(histogram_quantile(0.95, {0.1: 0.0, math.inf: 0.0}))
    assert math.isnan(histogram_quantile(0.95, {0.1: 5.0}))  # no +Inf bucket
    with pytest.raises(ValueError, match="quantile"):
        histogram_quantile(1.5, buckets)


def test_latency_quantile_over_time_with_a_reset() -> None:
    # Cumulative bucket counters; the process restarts between 2s and 3s.
    frame = pd.DataFrame(
        {
            "0.1": [0.0, 9.0, 18.0, 0.0, 0.0],
            "1.0": [0.0, 10.0, 20.0, 10.0, 20.0],
            "+Inf": [0.0, 10.0, 20.0, 10.0, 20.0],
        },
        index=at(0, 1, 2, 3, 4),
    )

    p95 = latency_quantile(frame, 0.95)

    # 1s, 2s: 9 of 10 under 0.1 -> rank 9.5 in (0.1, 1.0]: 0.1 + 0.9 * 0.5/1 = 0.55.
    # 3s: after the reset 10 new observations, none under 0.1 -> 0.1 + 0.9 * 9.5/10 = 0.955.
    assert p95.tolist() == pytest.approx([0.55, 0.55, 0.955, 0.955])


# --------------------------------------------------------------------------------------------
# Scrape into metric_samples


def fleet_targets(engine: Engine, fleet: Fleet) -> list[ScrapeTarget]:
    names = {service.name for service in fleet.spec.services}
    return [target for target in inventory_targets(engine) if target.service in names]


def sample_count(engine: Engine, services: list[str]) -> int:
    with engine.connect() as conn:
        count = conn.execute(
            text("SELECT count(*) FROM metric_samples WHERE service = ANY(:names)"),
            {"names": services},
        ).scalar_one()
    return int(count)


def hit(fleet: Fleet, service: str, times: int) -> None:
    url = f"http://127.0.0.1:{fleet.spec.get(service).port}/"
    with httpx.Client(timeout=2.0) as client:
        for _ in range(times):
            assert client.get(url).status_code == 200


def test_parse_exposition_keeps_what_promql_sees() -> None:
    page = (
        "# TYPE req_total counter\n"
        'req_total{path="/"} 3\n'
        'req_created{path="/"} 1.7e9\n'
        "# TYPE lat histogram\n"
        'lat_bucket{le="0.1"} 1\nlat_bucket{le="+Inf"} 2\nlat_count 2\nlat_sum 0.3\n'
        "lat_created 1.7e9\n"
        "# TYPE temp gauge\ntemp NaN\n"
        "# TYPE up gauge\nup 1 1700000000000\n"
    )

    samples = {(s.metric, tuple(sorted(s.labels.items()))): s for s in parse_exposition(page)}

    assert set(samples) == {
        ("req_total", (("path", "/"),)),
        ("lat_bucket", (("le", "0.1"),)),
        ("lat_bucket", (("le", "+Inf"),)),
        ("lat_count", ()),
        ("lat_sum", ()),
        ("up", ()),
    }
    assert samples[("up", ())].ts == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    with pytest.raises(ValueError, match="could not convert"):
        parse_exposition("this is { not an exposition\n")


def test_scraping_the_fleet_again_for_one_tick_is_idempotent(
    db_engine: Engine, live_fleet: Fleet
) -> None:
    targets = fleet_targets(db_engine, live_fleet)
    services = [target.service for target in targets]
    assert len(targets) == 2
    tick = datetime.now(UTC).replace(microsecond=0)

    def stored() -> dict[tuple[str, str, str], float]:
        with db_engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT service, metric, labels::text AS labels, value FROM metric_samples"
                    " WHERE service = ANY(:names) AND ts = :tick"
                ),
                {"names": services, "tick": tick},
            )
            return {(r.service, r.metric, r.labels): r.value for r in rows}

    first = scrape_targets(db_engine, targets, timeout=2.0, at=tick)
    after_first = stored()
    # A retried attempt for the same tick: the pages changed meanwhile (the first scrape's own
    # request to /metrics was counted), yet what was stored stays as it was.
    retried = [scrape_targets(db_engine, targets, timeout=2.0, at=tick) for _ in range(2)]
    after_retries = stored()
    next_tick = scrape_targets(db_engine, targets, timeout=2.0, at=tick + SECOND)

    assert all(result.ok and result.inserted > 0 for result in first), first
    assert len(after_first) == sum(result.inserted for result in first)
    assert {key: after_retries[key] for key in after_first} == after_first
    assert sample_count(db_engine, services) == len(after_retries) + sum(
        result.inserted for result in next_tick
    )
    # Once the label sets are the same, a re-scrape of the tick writes nothing at all.
    assert all(result.ok and result.inserted == 0 for result in retried[-1]), retried
    assert all(result.ok and result.inserted > 0 for result in next_tick), next_tick
    metrics = {metric for (_, metric, _) in after_retries}
    assert {
        "pilot_requests_total",
        "pilot_request_duration_seconds_bucket",
        "pilot_request_duration_seconds_count",
        "pilot_request_duration_seconds_sum",
        "pilot_up",
        "process_resident_memory_bytes",
    } <= metrics
    assert not any(name.endswith("_created") for name in metrics)


def test_a_dead_or_hung_target_fails_alone(db_engine: Engine, live_fleet: Fleet) -> None:
    targets = fleet_targets(db_engine, live_fleet)
    healthy, frozen = targets
    dead = ScrapeTarget(service="t-nobody-home", endpoint=f"http://127.0.0.1:{free_port()}")
    garbage = ScrapeTarget(service=healthy.service, endpoint=healthy.endpoint, path="/health")
    live_fleet.inject("hang", frozen.service)
    try:
        started = time.monotonic()
        results = scrape_targets(db_engine, [healthy, frozen, dead, garbage], timeout=1.0)
        elapsed = time.monotonic() - started
    finally:
        live_fleet.clear(frozen.service)

    by_url = {result.url: result for result in results}
    assert [result.url for result in results] == [t.url for t in (healthy, frozen, dead, garbage)]
    assert by_url[healthy.url].ok
    assert by_url[healthy.url].inserted > 0
    failures = {url: (result.ok, result.error or "") for url, result in by_url.items()}
    assert failures[frozen.url][0] is False
    assert "timed out after 1s" in failures[frozen.url][1]
    assert failures[dead.url][0] is False
    assert "ConnectError" in failures[dead.url][1]
    assert failures[garbage.url][0] is False
    assert "unparseable /metrics page" in failures[garbage.url][1]
    assert elapsed < 5.0  # targets are scraped in parallel: the hang costs one timeout


def test_scrape_source_returns_the_scraped_series(db_engine: Engine, live_fleet: Fleet) -> None:
    targets = fleet_targets(db_engine, live_fleet)
    api = live_fleet.spec.services[0].name
    tick = datetime.now(UTC).replace(microsecond=0)
    source = ScrapeSource(db_engine)
    assert isinstance(source, MetricSource)
    for second, requests in enumerate([1, 5, 3]):
        hit(live_fleet, api, requests)
        results = scrape_targets(db_engine, targets, at=tick + second * SECOND)
        assert all(result.ok for result in results), results

    series = source.query_range(
        api, "pilot_requests_total", tick, tick + 2 * SECOND, SECOND, {"path": "/"}
    )
    everything = source.query_range(api, "pilot_requests_total", tick, tick + 2 * SECOND, SECOND)

    assert list(series.index) == [pd.Timestamp(tick + n * SECOND) for n in range(3)]
    assert series.tolist() == [1.0, 6.0, 9.0]
    assert rate(series).tolist() == [5.0, 3.0]
    assert (everything >= series).all()  # summed over every path and status
    latest = source.latest(api, "pilot_requests_total", {"path": "/"}, at=tick + 2 * SECOND)
    assert latest is not None
    assert (latest.ts, latest.value) == (tick + 2 * SECOND, 9.0)
    assert source.latest(api, "pilot_requests_total", {"path": "/"}, at=tick - SECOND) is None
    assert source.query_range("t-unknown", "pilot_up", tick, tick, SECOND).empty

    buckets = source.query_range_by(
        api, "pilot_request_duration_seconds_bucket", "le", tick, tick + 2 * SECOND, SECOND
    )
    p95 = window_quantile(
        source, api, "pilot_request_duration_seconds", tick, tick + 2 * SECOND, SECOND
    )
    assert "+Inf" in buckets.columns
    assert 0.0 < p95 < 10.0


def test_metric_sample_model_reads_back_with_its_label_hash(db_engine: Engine) -> None:
    stamp = datetime(2020, 1, 1, tzinfo=UTC)
    with Session(db_engine) as session:
        sample = MetricSample(
            service="t-model", metric="m", labels={"b": "1", "a": "2"}, ts=stamp, value=1.5
        )
        session.add(sample)
        session.commit()
        session.refresh(sample)
        assert sample.labels_hash is not None
        assert len(sample.labels_hash) == 32
    with db_engine.begin() as conn:
        conn.execute(text("DELETE FROM metric_samples WHERE service = 't-model'"))


def test_prune_samples_deletes_only_what_is_older_than_retention(
    fresh_database_url: str,
) -> None:
    engine = make_engine(fresh_database_url)
    now = datetime(2024, 6, 1, tzinfo=UTC)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO metric_samples (service, metric, ts, value)"
                    " SELECT 'svc', 'm', CAST(:now AS timestamptz) - make_interval(mins => n), n"
                    " FROM generate_series(0, 299) AS n"
                ),
                {"now": now},
            )

        deleted = prune_samples(engine, timedelta(hours=2), now=now, batch_size=50)

        with engine.connect() as conn:
            oldest = conn.execute(text("SELECT min(ts) FROM metric_samples")).scalar_one()
            left = conn.execute(text("SELECT count(*) FROM metric_samples")).scalar_one()
        assert deleted == 300 - 121  # minutes 121..299 are older than 2h; 0..120 stay
        assert left == 121
        assert oldest == now - timedelta(hours=2)
        assert prune_samples(engine, timedelta(hours=2), now=now) == 0
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------------------
# Prometheus


def test_prometheus_source_sees_what_the_scrape_source_sees(
    db_engine: Engine, live_fleet: Fleet, fleet_prometheus: PrometheusServer
) -> None:
    api = live_fleet.spec.services[0].name
    source = PrometheusSource(fleet_prometheus.url)
    selector = {"path": "/"}

    def prometheus_counted(expected: int) -> Callable[[], bool]:
        def check() -> bool:
            sample = source.latest(api, "pilot_requests_total", selector)
            return sample is not None and sample.value == expected

        return check

    start = datetime.now(UTC)
    hit(live_fleet, api, 3)
    wait_for(prometheus_counted(3), 20.0, "prometheus did not scrape the first requests")
    hit(live_fleet, api, 4)
    wait_for(prometheus_counted(7), 20.0, "prometheus did not scrape the next requests")
    time.sleep(1.2)  # so that a grid point (start + k * 1s) lies after the scrape that saw 7
    end = datetime.now(UTC)
    series = source.query_range(api, "pilot_requests_total", start, end, SECOND, selector)
    scrape_targets(db_engine, fleet_targets(db_engine, live_fleet))
    scraped = ScrapeSource(db_engine).latest(api, "pilot_requests_total", selector)

    assert isinstance(source, MetricSource)
    assert str(series.index.tz) == "UTC"
    assert series.iloc[0] == 3.0
    assert series.iloc[-1] == 7.0
    assert series.is_monotonic_increasing
    assert rate(series).sum() == pytest.approx(4.0)  # 4 requests, one point per second
    assert scraped is not None
    assert scraped.value == 7.0

    p95 = window_quantile(
        source, api, "pilot_request_duration_seconds", start, end, SECOND, labels=selector
    )
    assert 0.0 < p95 <= 0.1  # the 4 requests counted in the window, each well under 100 ms

    # `latest` reports when the value was scraped, not when the query ran.
    observed = source.latest(api, "pilot_requests_total", selector, at=end)
    assert observed is not None
    assert end - timedelta(seconds=2) < observed.ts < end

    # The service mapping: `service` label by default; a job-wide view with service_label=job.
    whole_job = PrometheusSource(fleet_prometheus.url, service_label="job")
    up = whole_job.latest("nofx-fleet", "pilot_up")
    assert up is not None
    assert up.value == len(live_fleet.spec.services)
    assert source.query_range("t-unknown", "pilot_up", start, end, SECOND).empty
    source.close()
    whole_job.close()


def test_prometheus_range_queries_are_chunked(fleet_prometheus: PrometheusServer) -> None:
    service = next(iter(fleet_prometheus.targets))
    whole = PrometheusSource(fleet_prometheus.url)
    chunked = PrometheusSource(fleet_prometheus.url, max_points=3)
    wait_for(lambda: whole.latest(service, "pilot_up") is not None, 10.0, "pilot_up not scraped")
    start = datetime.now(UTC)
    time.sleep(2.5)

    expected = whole.query_range(service, "pilot_up", start, start + 2 * SECOND, SECOND / 4)
    series = chunked.query_range(service, "pilot_up", start, start + 2 * SECOND, SECOND / 4)

    assert len(series) == 9  # 2s at 250ms: 9 points, fetched in 4 requests of at most 3
    pd.testing.assert_series_equal(series, expected)
    assert (series == 1.0).all()


def test_prometheus_failures_raise_a_named_error() -> None:
    unreachable = PrometheusSource(f"http://127.0.0.1:{free_port()}", timeout=1.0)
    now = datetime.now(UTC)
    with pytest.raises(MetricSourceError, match="unreachable"):
        unreachable.query_range("svc", "up", now - SECOND, now, SECOND)
    with pytest.raises(ValueError, match="metric name"):
        unreachable.query_range("svc", "up{evil}", now - SECOND, now, SECOND)
    assert (
        unreachable.selector('a"b', "up", {"path": "/x\\y"}) == 'up{service="a\\"b",path="/x\\\\y"}'
    )


# --------------------------------------------------------------------------------------------
# CSV replay


@pytest.fixture
def nab_file() -> Path:
    if not NAB_FILE.is_file():
        pytest.skip(f"NAB data set not present at {NAB_FILE}")
    return NAB_FILE


def test_csv_replay_of_a_nab_file(nab_file: Path) -> None:
    source = CsvReplaySource(nab_file)
    name = nab_file.stem
    first = pd.Timestamp("2014-02-14T14:27:00Z")

    recorded = source.series(name)
    hour = source.query_range(
        name, "value", first, first + pd.Timedelta(hours=1), timedelta(minutes=5)
    )
    latest = source.latest(name, "value")

    assert len(recorded) == 4032
    assert recorded.index[0] == first
    assert recorded.iloc[0] == pytest.approx(51.846)
    assert len(hour) == 13
    assert hour.iloc[0] == pytest.approx(51.846)
    assert hour.iloc[1] == pytest.approx(44.508)
    assert latest is not None
    assert latest.ts == recorded.index[-1].to_pydatetime()
    assert source.query_range(name, "value", first, first, SECOND, {"k": "v"}).empty
    with pytest.raises(SeriesNotFoundError, match="no column"):
        source.series(name, "cpu")


def test_csv_replay_of_a_directory_shifted_to_now(nab_file: Path) -> None:
    replay_from = datetime(2030, 1, 1, tzinfo=UTC)
    source = CsvReplaySource(nab_file.parents[1], start_at=replay_from)

    by_path = source.series(f"{nab_file.parent.name}/{nab_file.stem}")
    by_stem = source.series(nab_file.stem)

    assert by_path.index[0] == pd.Timestamp(replay_from)
    pd.testing.assert_series_equal(by_path, by_stem)
    with pytest.raises(SeriesNotFoundError, match="no replayed series"):
        source.series("no_such_file")


def test_csv_replay_cleans_dirty_rows(tmp_path: Path) -> None:
    (tmp_path / "dirty.csv").write_text(
        "timestamp,value\n"
        "2024-01-01 00:00:02,2\n"
        "2024-01-01 00:00:00,0\n"
        "2024-01-01 00:00:01,NaN\n"
        "2024-01-01 00:00:01,1\n"
        "2024-01-01 00:00:01,1.5\n"
        "not a time,9\n"
        "2024-01-01 00:00:05,5\n"
        "2024-01-01 00:00:20,20\n"
    )
    source = CsvReplaySource(tmp_path)

    series = source.query_range("dirty", "value", T0, T0 + pd.Timedelta(seconds=20), SECOND)

    # Sorted, NaN and the bad row dropped, the duplicate merged (max), the 2-point hole
    # bridged, the 14-point hole left out.
    assert series.to_dict() == {
        T0: 0.0,
        T0 + pd.Timedelta(seconds=1): 1.5,
        T0 + pd.Timedelta(seconds=2): 2.0,
        T0 + pd.Timedelta(seconds=3): 2.0,
        T0 + pd.Timedelta(seconds=4): 2.0,
        T0 + pd.Timedelta(seconds=5): 5.0,
        T0 + pd.Timedelta(seconds=20): 20.0,
    }


# --------------------------------------------------------------------------------------------
# Choosing a source


def test_make_source_builds_each_kind_and_refuses_bad_config(
    db_engine: Engine, tmp_path: Path
) -> None:
    (tmp_path / "s.csv").write_text("timestamp,value\n2024-01-01 00:00:00,1\n")

    sources = [
        make_source("scrape", engine=db_engine),
        make_source("prometheus", base_url="http://127.0.0.1:9090"),
        make_source("csv", path=tmp_path),
    ]

    assert [type(s) for s in sources] == [ScrapeSource, PrometheusSource, CsvReplaySource]
    assert all(isinstance(s, MetricSource) for s in sources)
    with pytest.raises(ValueError, match="unknown telemetry source 'influx'"):
        make_source("influx")
    with pytest.raises(ValueError, match=r"'prometheus'.*base_url"):
        make_source("prometheus")
    with pytest.raises(ValueError, match=r"'scrape'.*base_url"):
        make_source("scrape", engine=db_engine, base_url="http://x")
