"""Looking at a replica from outside, as its users do: its health check and real requests.

Plain code shared by the healing checks (`validate_health`, `validate_requests`), the chaos
track's steady-state probe and re-admission after a traffic mitigation.
"""

from __future__ import annotations

import time

import httpx

from models.actions import RequestCheck, ValidateRequestsParams


def check_health(endpoint: str, timeout_seconds: float) -> tuple[bool, str, float]:
    """GET {endpoint}/health once: (healthy, what was seen, latency ms)."""
    started = time.perf_counter()
    try:
        response = httpx.get(f"{endpoint}/health", timeout=timeout_seconds)
    except httpx.TimeoutException:
        return False, f"no answer within {timeout_seconds:g}s", timeout_seconds * 1000
    except httpx.TransportError as err:
        return False, f"unreachable: {type(err).__name__}", (time.perf_counter() - started) * 1000
    latency = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        return False, f"HTTP {response.status_code}", latency
    return True, "HTTP 200", latency


def request_round(
    client: httpx.Client,
    endpoint: str,
    service: str,
    params: ValidateRequestsParams,
    round_number: int,
) -> RequestCheck:
    """`params.requests` real GETs of `params.path`: passed when errors, p95 and staleness hold."""
    errors = stale = 0
    latencies: list[float] = []
    for _ in range(params.requests):
        began = time.perf_counter()
        try:
            response = client.get(f"{endpoint}{params.path}")
        except httpx.HTTPError:
            errors += 1
            continue
        latencies.append((time.perf_counter() - began) * 1000)
        if response.status_code >= 500:
            errors += 1
            continue
        if params.fresh_cache:
            try:
                cache = response.json().get("cache") or {}
            except ValueError:
                cache = {}
            stale += bool(cache.get("stale"))
    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else None
    ratio = errors / params.requests
    problems = []
    if ratio > params.max_error_ratio:
        problems.append(f"error ratio {ratio:.2f} > {params.max_error_ratio}")
    if params.max_p95_ms is not None and (p95 is None or p95 > params.max_p95_ms):
        problems.append(f"p95 {p95 if p95 is None else round(p95)} ms > {params.max_p95_ms:g} ms")
    if params.fresh_cache and stale:
        problems.append(f"{stale} stale cache read(s)")
    return RequestCheck(
        service=service,
        passed=not problems,
        rounds=round_number,
        error_ratio=round(ratio, 4),
        p95_ms=None if p95 is None else round(p95, 1),
        stale_reads=stale,
        detail="; ".join(problems)
        or f"{params.requests} requests: error ratio {ratio:.2f}, p95 {p95 and round(p95)} ms",
    )
