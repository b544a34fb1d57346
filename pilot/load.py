"""A load generator for the staging fleet: closed-loop HTTP clients on threads.

In process (benchmarks, tests)::

    with LoadGenerator(["http://127.0.0.1:18101/"], concurrency=32) as load:
        time.sleep(10)
    print(load.stats().p95_ms)

As a process (what `Fleet.inject("overload", ...)` starts, so the load outlives the CLI call that
asked for it)::

    python -m pilot.load --url http://127.0.0.1:18101/ --concurrency 32 --duration 600

Each client sends its next request as soon as the previous one is answered (or, with `rate`,
at a fixed pace), so when the service saturates, the requests pile up in its worker queue and
its latency rises — the overload the platform has to notice. `duration` bounds every run, so a
generator nobody stopped still ends on its own.

With a `DailyCycle` the paced rate follows a day compressed into `day_seconds` (a trough at
night, the peak in the afternoon), so staging has busy and quiet hours and a maintenance job has
a low-impact window to find::

    python -m pilot.load --url http://127.0.0.1:18101/ --rate 20 --day-seconds 3600
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from types import FrameType, TracebackType
from typing import Self

import httpx

DEFAULT_CONCURRENCY = 32
DEFAULT_DURATION_S = 600.0
_MAX_SAMPLES = 20_000


@dataclass(frozen=True)
class LoadStats:
    """What a load generator did so far; latencies are over the most recent requests."""

    sent: int
    ok: int
    errors: int
    failures: int
    elapsed_s: float
    rps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


@dataclass(frozen=True)
class LoadWindow:
    """The requests of one measuring interval (`LoadGenerator.window`)."""

    sent: int
    latencies_ms: list[float]  # of the answered ones (errors too), oldest first
    errors: int  # answered with HTTP >= 400
    failures: int  # no answer: timeout or connection error

    @property
    def p95_ms(self) -> float | None:
        return percentile(self.latencies_ms, 0.95)

    @property
    def error_ratio(self) -> float:
        return (self.errors + self.failures) / self.sent if self.sent else 0.0


def percentile(samples: Sequence[float], q: float) -> float | None:
    """The `q`-quantile (0..1) of `samples` by nearest rank; None when there are none."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class DailyCycle:
    """A day of traffic compressed into `day_seconds`; time 0 is midnight of the compressed day.

    Shapes (`shape`):

    * ``cosine``: `trough_share` of the peak at the trough, the whole of it at `peak_at` (a share
      of the day; 0.625 = 15:00), a cosine in between — a smooth day a reactive scaler follows;
    * ``business``: the trough all night, a surge when the working day opens (centred on
      `opens_at`, 08:30; from 10% to 90% of the way up in `ramp_share` of the day, an hour),
      a working day of 80% to 100% of the peak (the whole of it at `peak_at`) and the fall when
      it closes (`closes_at`, 19:00) — the morning surge a scaler must be ahead of.
    """

    day_seconds: float
    trough_share: float = 0.2
    peak_at: float = 0.625
    shape: str = "cosine"
    opens_at: float = 8.5 / 24
    closes_at: float = 19 / 24
    ramp_share: float = 1 / 24

    SHAPES = ("cosine", "business")

    def __post_init__(self) -> None:
        if not self.day_seconds > 0:
            raise ValueError(f"day_seconds must be positive, not {self.day_seconds}")
        if not 0 < self.trough_share <= 1:
            raise ValueError(f"trough_share must be in (0, 1], not {self.trough_share}")
        if not 0 <= self.peak_at < 1:
            raise ValueError(f"peak_at must be in [0, 1), not {self.peak_at}")
        if self.shape not in self.SHAPES:
            raise ValueError(f"shape must be one of {self.SHAPES}, not {self.shape!r}")
        if not 0 < self.ramp_share <= 0.25:
            raise ValueError(f"ramp_share must be in (0, 0.25], not {self.ramp_share}")
        if not 0 <= self.opens_at < self.closes_at < 1:
            raise ValueError(
                f"opens_at ({self.opens_at}) and closes_at ({self.closes_at}) must satisfy"
                " 0 <= opens_at < closes_at < 1"
            )

    def share(self, elapsed: float) -> float:
        """The share of the peak rate `elapsed` seconds after midnight of the compressed day."""
        day = elapsed / self.day_seconds
        hump = (1 + math.cos(2 * math.pi * (day - self.peak_at))) / 2
        if self.shape == "cosine":
            return self.trough_share + (1 - self.trough_share) * hump
        phase = day % 1.0
        width = self.ramp_share / (2 * math.log(9))  # 10% -> 90% of a logistic in ramp_share
        opened = _logistic((phase - self.opens_at) / width)
        open_still = _logistic((self.closes_at - phase) / width)
        return self.trough_share + (1 - self.trough_share) * opened * open_still * (
            0.8 + 0.2 * hump
        )


def _logistic(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, x))))


class LoadGenerator:
    """`concurrency` threads, each a keep-alive HTTP client, sending GETs to `urls` in turn.

    Args:
        urls: targets, spread over the clients round robin.
        concurrency: clients, i.e. requests in flight at most.
        rate: requests per second for all clients together; None sends as fast as answered.
        timeout: seconds one request may take before it counts as a failure.
        cycle: with `rate`, scale it by a compressed daily cycle (`rate` is the peak).
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        rate: float | None = None,
        timeout: float = 5.0,
        cycle: DailyCycle | None = None,
    ) -> None:
        if cycle is not None and rate is None:
            raise ValueError("a daily cycle paces the rate: give a rate (its peak) too")
        if not urls:
            raise ValueError("a load generator needs at least one URL")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be positive, not {rate}")
        self.urls = list(urls)
        self.concurrency = concurrency
        self.rate = rate
        self.timeout = timeout
        self.cycle = cycle
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._latencies: deque[float] = deque(maxlen=_MAX_SAMPLES)
        self._sent = self._ok = self._errors = self._failures = 0
        self._started: float | None = None
        self._window_mark = (0, 0, 0, 0)  # sent, answered, errors, failures at the last window
        self._stopped: float | None = None

    def start(self) -> Self:
        """Start the clients; returns self so ``LoadGenerator(...).start()`` reads as one step."""
        if self._threads:
            raise RuntimeError("this load generator has already been started")
        self._started = time.monotonic()
        for index in range(self.concurrency):
            thread = threading.Thread(
                target=self._client, args=(index,), name=f"load-{index}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> LoadStats:
        """Stop the clients (each finishes its request in flight) and return the totals."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._stopped is None:
            self._stopped = time.monotonic()
        return self.stats()

    def run(self, duration: float) -> LoadStats:
        """Send load for `duration` seconds (or until `stop` from another thread)."""
        self.start()
        self._stop.wait(duration)
        return self.stop()

    @property
    def running(self) -> bool:
        """Whether any client is still sending."""
        return any(thread.is_alive() for thread in self._threads)

    def stats(self) -> LoadStats:
        """Totals so far and latency percentiles over the most recent requests."""
        with self._lock:
            samples = list(self._latencies)
            sent, ok, errors, failures = self._sent, self._ok, self._errors, self._failures
        end = self._stopped or time.monotonic()
        elapsed = end - self._started if self._started is not None else 0.0
        p50, p95, p99 = (percentile(samples, q) for q in (0.5, 0.95, 0.99))
        return LoadStats(
            sent=sent,
            ok=ok,
            errors=errors,
            failures=failures,
            elapsed_s=round(elapsed, 3),
            rps=round(sent / elapsed, 1) if elapsed > 0 else 0.0,
            p50_ms=_ms(p50),
            p95_ms=_ms(p95),
            p99_ms=_ms(p99),
            max_ms=_ms(max(samples)) if samples else None,
        )

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def window(self) -> LoadWindow:
        """What was sent and answered since the previous call (or the start): the requests of
        one measuring interval, for a per-interval p95 or error ratio."""
        with self._lock:
            samples = list(self._latencies)
            now = (self._sent, self._ok + self._errors, self._errors, self._failures)
        before, self._window_mark = self._window_mark, now
        answered = now[1] - before[1]  # each answer appended one latency
        fresh = samples[len(samples) - min(answered, len(samples)) :] if answered else []
        return LoadWindow(
            sent=now[0] - before[0],
            latencies_ms=[round(s * 1000, 3) for s in fresh],
            errors=now[2] - before[2],
            failures=now[3] - before[3],
        )

    def current_rate(self) -> float | None:
        """Requests per second the clients pace themselves to now (None: as fast as answered)."""
        if self.rate is None:
            return None
        if self.cycle is None or self._started is None:
            return self.rate
        return self.rate * self.cycle.share(time.monotonic() - self._started)

    def _client(self, index: int) -> None:
        interval = self.concurrency / self.rate if self.rate else 0.0
        next_at = time.monotonic() + (interval * index / self.concurrency)
        turn = index
        with httpx.Client(timeout=self.timeout) as client:
            while not self._stop.is_set():
                if interval:
                    if self._stop.wait(max(0.0, next_at - time.monotonic())):
                        break
                    rate = self.current_rate()
                    next_at += self.concurrency / rate if rate else interval
                url = self.urls[turn % len(self.urls)]
                turn += 1
                began = time.perf_counter()
                try:
                    status = client.get(url).status_code
                except httpx.HTTPError:
                    status = None
                    # A refused connection comes back at once: do not spin on a dead service.
                    self._stop.wait(0.05)
                took = time.perf_counter() - began
                with self._lock:
                    self._sent += 1
                    if status is None:
                        self._failures += 1
                    elif status < 400:
                        self._ok += 1
                        self._latencies.append(took)
                    else:
                        self._errors += 1
                        self._latencies.append(took)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pilot.load", description="Drive HTTP load at pilot services."
    )
    parser.add_argument(
        "--url", action="append", required=True, help="target URL (repeat for several)"
    )
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("--rate", type=float, default=None, help="requests/s in total")
    parser.add_argument(
        "--duration", type=float, default=DEFAULT_DURATION_S, help="stop after this many seconds"
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    parser.add_argument(
        "--day-seconds",
        type=float,
        default=None,
        help="follow a daily cycle compressed into this many seconds (--rate is its peak)",
    )
    parser.add_argument(
        "--trough-share", type=float, default=0.2, help="the trough's share of the peak rate"
    )
    parser.add_argument(
        "--shape",
        choices=DailyCycle.SHAPES,
        default="cosine",
        help="the daily cycle's shape (business: a morning surge, a working day, an evening fall)",
    )
    parser.add_argument(
        "--report-every", type=float, default=5.0, help="print a JSON stats line this often"
    )
    args = parser.parse_args(argv)
    try:
        cycle = (
            DailyCycle(args.day_seconds, args.trough_share, shape=args.shape)
            if args.day_seconds is not None
            else None
        )
        load = LoadGenerator(
            args.url,
            concurrency=args.concurrency,
            rate=args.rate,
            timeout=args.timeout,
            cycle=cycle,
        )
    except ValueError as exc:
        parser.error(str(exc))
    done = threading.Event()

    def finish(_signum: int, _frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, finish)
    signal.signal(signal.SIGINT, finish)
    load.start()
    deadline = time.monotonic() + args.duration
    while not done.is_set() and time.monotonic() < deadline:
        done.wait(min(args.report_every, max(0.0, deadline - time.monotonic())))
        if not done.is_set():
            print(
                json.dumps(
                    {"event": "load", "rate_now": load.current_rate(), **load.stats().as_dict()}
                ),
                flush=True,
            )
    print(json.dumps({"event": "load stopped", **load.stop().as_dict()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
