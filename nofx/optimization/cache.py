"""Cache TTL from its hit ratio and how stale its answers may be.

Each key is requested as a Poisson stream of rate r and its source changes as one of rate u. An
entry filled on a miss lives `ttl` seconds: during that time every request hits (r·T of them on
average), then the next request misses and fills it again (after 1/r on average). So

    hit ratio        h(T) = r·T / (1 + r·T)
    stale among hits s(T) = 1 - (1 - exp(-u·T)) / (u·T)   (a hit x seconds after the fill is
                                                          stale if the source changed since;
                                                          x is uniform over [0, T])
    stale served     h(T) · s(T)

Both grow with T: a longer TTL hits more and serves older answers. The recommendation is the
longest TTL (up to `max_ttl_s`) whose share of stale answers stays within the budget. r and u
come from what the cache already shows at its current TTL: the observed hit ratio gives
r = h / ((1 - h)·T0), the observed stale share gives u (solved by bisection, s is monotone in u).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

BISECTIONS = 200


@dataclass(frozen=True)
class CacheTtl:
    """A TTL and what it should give."""

    ttl_s: float
    hit_ratio: float
    stale_share: float  # of all answers served
    request_rate_per_key: float
    change_rate_per_key: float


def hit_ratio(ttl_s: float, request_rate: float) -> float:
    x = request_rate * ttl_s
    return x / (1 + x) if math.isfinite(x) else 1.0


def stale_among_hits(ttl_s: float, change_rate: float) -> float:
    x = change_rate * ttl_s
    if x <= 0:
        return 0.0
    if x < 1e-6:  # the series 1 - (1 - e^-x)/x = x/2 - x²/6 ..., exact to rounding here
        return x / 2
    return 1 - (1 - math.exp(-x)) / x


def stale_share(ttl_s: float, request_rate: float, change_rate: float) -> float:
    return hit_ratio(ttl_s, request_rate) * stale_among_hits(ttl_s, change_rate)


def rates_from(hit: float, stale: float, ttl_s: float) -> tuple[float, float]:
    """(requests, changes) per key per second that give hit ratio `hit` and stale share `stale`
    (of all answers) at TTL `ttl_s`.

    Raises:
        ValueError: a ratio outside [0, 1), a stale share larger than the hit ratio allows, or
            a TTL <= 0.
    """
    if ttl_s <= 0 or not math.isfinite(ttl_s):
        raise ValueError(f"ttl_s must be a finite number > 0, not {ttl_s!r}")
    if not 0 <= hit < 1:
        raise ValueError(f"hit ratio must be in [0, 1), not {hit!r}")
    requests = hit / ((1 - hit) * ttl_s)
    if stale == 0:
        return requests, 0.0
    if not 0 < stale < hit:  # stale answers are hits, and never all of them
        raise ValueError(f"a stale share of {stale!r} needs a hit ratio above it, not {hit!r}")
    among_hits = stale / hit  # < 1; s(T) < 1 for every finite change rate
    low, high = 0.0, 1.0 / ttl_s
    while stale_among_hits(ttl_s, high) < among_hits:
        high *= 2
    for _ in range(BISECTIONS):
        mid = (low + high) / 2
        if stale_among_hits(ttl_s, mid) < among_hits:
            low = mid
        else:
            high = mid
    return requests, (low + high) / 2


def recommend_ttl(
    hit: float,
    stale: float,
    current_ttl_s: float,
    *,
    stale_budget: float,
    min_ttl_s: float = 1.0,
    max_ttl_s: float = 86_400.0,
) -> CacheTtl:
    """The longest TTL in [min_ttl_s, max_ttl_s] serving at most `stale_budget` stale answers,
    from the hit ratio and stale share seen at `current_ttl_s` (the shortest, if even it is
    over budget).

    Raises:
        ValueError: inconsistent observations (see `rates_from`) or a budget outside (0, 1).
    """
    if not 0 < stale_budget < 1:
        raise ValueError(f"stale_budget must be in (0, 1), not {stale_budget!r}")
    if not 0 < min_ttl_s <= max_ttl_s:
        raise ValueError(f"need 0 < min_ttl_s <= max_ttl_s, not {min_ttl_s!r}, {max_ttl_s!r}")
    requests, changes = rates_from(hit, stale, current_ttl_s)
    if stale_share(max_ttl_s, requests, changes) <= stale_budget:
        ttl = max_ttl_s
    elif stale_share(min_ttl_s, requests, changes) > stale_budget:
        ttl = min_ttl_s
    else:
        low, high = min_ttl_s, max_ttl_s
        for _ in range(BISECTIONS):
            mid = (low + high) / 2
            if stale_share(mid, requests, changes) <= stale_budget:
                low = mid
            else:
                high = mid
        ttl = low
    return CacheTtl(
        ttl_s=ttl,
        hit_ratio=hit_ratio(ttl, requests),
        stale_share=stale_share(ttl, requests, changes),
        request_rate_per_key=requests,
        change_rate_per_key=changes,
    )
