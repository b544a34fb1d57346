"""Problem patterns as signatures over signals.

A signature names the signals a pattern requires (all must be present), the signals that support
it (each adds confidence) and the signals that contradict it (each vetoes the match — a hang is
not a crash). Signals are derived from probes, the provider and the anomaly detectors, so the same
signature works whatever the metric source.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.detection import Pattern, PatternMatch, ServiceEvidence, Signal


@dataclass(frozen=True)
class Signature:
    pattern: Pattern
    required: frozenset[Signal]
    supporting: frozenset[Signal] = frozenset()
    contradicting: frozenset[Signal] = frozenset()
    # Among patterns that match, a more specific one wins a tie (a config-caused error spike
    # over a bare latency regression).
    specificity: int = 0


SIGNATURES: tuple[Signature, ...] = (
    Signature(
        "service_down",
        required=frozenset({"probe_refused"}),
        supporting=frozenset({"process_down"}),
        contradicting=frozenset({"process_frozen"}),
        specificity=5,
    ),
    Signature(
        "service_hung",
        required=frozenset({"probe_timeout"}),
        supporting=frozenset({"process_frozen"}),
        contradicting=frozenset({"process_down", "request_rate_up", "pool_saturated"}),
        specificity=4,
    ),
    Signature(
        "error_spike_after_config_change",
        required=frozenset({"error_ratio_up", "config_changed"}),
        supporting=frozenset({"latency_up"}),
        specificity=4,
    ),
    Signature(
        "db_pool_exhaustion",
        required=frozenset({"pool_saturated"}),
        supporting=frozenset({"latency_up", "error_ratio_up", "probe_timeout"}),
        contradicting=frozenset({"request_rate_up"}),
        specificity=3,
    ),
    Signature(
        "overload",
        required=frozenset({"request_rate_up", "latency_up"}),
        supporting=frozenset({"error_ratio_up", "pool_saturated", "probe_timeout"}),
        specificity=3,
    ),
    Signature(
        "stale_cache",
        required=frozenset({"cache_stale"}),
        specificity=3,
    ),
    Signature(
        "memory_leak",
        required=frozenset({"memory_growing"}),
        supporting=frozenset({"latency_up"}),
        specificity=2,
    ),
    Signature(
        "disk_filling",
        required=frozenset({"disk_growing"}),
        specificity=2,
    ),
    Signature(
        "latency_regression",
        required=frozenset({"latency_up"}),
        supporting=frozenset({"config_changed"}),
        contradicting=frozenset({"request_rate_up", "pool_saturated"}),
        specificity=1,
    ),
)


def match_patterns(evidence: ServiceEvidence) -> list[PatternMatch]:
    """Every pattern whose signature the evidence satisfies, best first.

    Confidence starts at 0.6 for a bare match and rises with each supporting signal present, so
    a match backed by more independent evidence ranks higher.
    """
    signals = set(evidence.signals)
    matches: list[tuple[float, int, PatternMatch]] = []
    for signature in SIGNATURES:
        if not signature.required <= signals or signature.contradicting & signals:
            continue
        support = sorted(signature.supporting & signals)
        missing = sorted(signature.supporting - signals)
        share = len(support) / len(signature.supporting) if signature.supporting else 1.0
        confidence = round(0.6 + 0.4 * share, 3)
        match = PatternMatch(
            pattern=signature.pattern,
            confidence=confidence,
            matched=sorted(signature.required),
            supporting=support,
            missing=missing,
        )
        matches.append((confidence, signature.specificity, match))
    matches.sort(key=lambda item: (item[1], item[0]), reverse=True)
    return [m for _, _, m in matches]


def best_pattern(evidence: ServiceEvidence) -> PatternMatch | None:
    """The pattern the evidence matches best, or None when no signature is satisfied."""
    found = match_patterns(evidence)
    return found[0] if found else None
