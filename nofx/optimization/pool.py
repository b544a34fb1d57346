"""Connection-pool size from how often connections are asked for and how long they are held.

A pool of c connections serving requests that each hold one for a mean `service_time` is an
M/M/c queue (Poisson arrivals, exponential holding times, c servers): Little's law gives the
mean number held, the offered load a = λ·S (in Erlangs), and Erlang's C formula the probability
that a request finds every connection busy and waits:

    P(wait) = C(c, a),   P(W > t) = C(c, a) · exp(-(c - a) · t / S)   (for a < c)

The recommendation is the smallest pool whose chance of a request waiting longer than
`max_wait_s` is at most `1 - quantile` at the busy-hour load; a pool bigger than that holds
database sessions (memory on the server, `max_connections`) for nothing, a smaller one makes
requests queue. The standard textbook formulas (Erlang C via the Erlang B recursion, which stays
stable for large pools), written out here because no maintained Python library covers them
without pulling in a simulator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_POOL = 10_000


@dataclass(frozen=True)
class PoolSize:
    """A pool size and what it means at the load it was sized for."""

    size: int
    offered_load: float  # Erlangs: the mean number of connections held (Little's law)
    utilisation: float  # offered load / size
    p_wait: float  # the chance a request finds every connection busy
    p_wait_over: float  # the chance it waits longer than the target
    mean_wait_s: float


def erlang_c(servers: int, load: float) -> float:
    """The probability that an arrival waits in an M/M/c queue with `servers` and offered
    `load` (Erlangs); 1.0 when the load reaches the servers (the queue grows without end)."""
    if servers < 1:
        raise ValueError(f"servers must be at least 1, not {servers}")
    if load < 0 or not math.isfinite(load):
        raise ValueError(f"load must be a finite number >= 0, not {load!r}")
    if load == 0:
        return 0.0
    if load >= servers:
        return 1.0
    blocking = 1.0  # Erlang B with 0 servers
    for k in range(1, servers + 1):
        blocking = load * blocking / (k + load * blocking)
    return servers * blocking / (servers - load * (1 - blocking))


def judge(size: int, arrival_rate: float, service_time_s: float, max_wait_s: float) -> PoolSize:
    """What a pool of `size` gives at `arrival_rate` requests/s holding a connection for a mean
    `service_time_s`."""
    load = arrival_rate * service_time_s
    waits = erlang_c(size, load)
    if load >= size:
        return PoolSize(size, load, load / size, 1.0, 1.0, math.inf)
    rate = (size - load) / service_time_s if service_time_s > 0 else math.inf
    over = waits * math.exp(-rate * max_wait_s) if math.isfinite(rate) else 0.0
    mean_wait = waits / rate if math.isfinite(rate) and rate > 0 else 0.0
    return PoolSize(size, load, load / size, waits, over, mean_wait)


def recommend_pool(
    arrival_rate: float,
    service_time_s: float,
    *,
    max_wait_s: float,
    quantile: float = 0.95,
    minimum: int = 1,
) -> PoolSize:
    """The smallest pool (at least `minimum`) in which a request waits longer than `max_wait_s`
    with probability at most `1 - quantile`.

    Raises:
        ValueError: a negative or non-finite rate or time, or a quantile outside (0, 1).
    """
    for name, value in (("arrival_rate", arrival_rate), ("service_time_s", service_time_s)):
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
    if max_wait_s < 0 or not math.isfinite(max_wait_s):
        raise ValueError(f"max_wait_s must be a finite number >= 0, not {max_wait_s!r}")
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), not {quantile!r}")
    load = arrival_rate * service_time_s
    size = max(minimum, 1, math.floor(load) + 1)
    while size <= MAX_POOL:
        found = judge(size, arrival_rate, service_time_s, max_wait_s)
        if found.p_wait_over <= 1 - quantile:
            return found
        size += 1
    raise ValueError(f"a load of {load:.1f} Erlangs needs more than {MAX_POOL} connections")


def holding_time(mean_in_use: float, arrival_rate: float) -> float:
    """Little's law backwards: the mean time a connection is held, from the mean number in use
    and the rate of requests that use one.

    Raises:
        ValueError: no requests (the holding time is unknown), or a negative count.
    """
    if arrival_rate <= 0 or not math.isfinite(arrival_rate):
        raise ValueError(f"arrival_rate must be > 0 to infer a holding time, not {arrival_rate!r}")
    if mean_in_use < 0 or not math.isfinite(mean_in_use):
        raise ValueError(f"mean_in_use must be a finite number >= 0, not {mean_in_use!r}")
    return mean_in_use / arrival_rate
