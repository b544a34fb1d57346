"""Online anomaly detection: statistical detectors, their ensemble and the NAB scorer.

Plain Python and numpy, no Temporal: the monitor calls it from an activity, the NAB benchmark
from a script, tests directly.
"""

from nofx.detection.detectors import (
    DETECTORS,
    DetectorScore,
    EwmaDetector,
    NeverFiresDetector,
    OnlineDetector,
    RangeBreakoutDetector,
    RobustZScoreDetector,
    SeasonalDetector,
    WindowedGaussianDetector,
    make_detector,
)
from nofx.detection.ensemble import (
    AnomalyLikelihood,
    EnsembleConfig,
    EnsembleDetector,
    EnsembleEvidence,
    MemberEvidence,
    MemberSpec,
    detect_series,
)

__all__ = [
    "DETECTORS",
    "AnomalyLikelihood",
    "DetectorScore",
    "EnsembleConfig",
    "EnsembleDetector",
    "EnsembleEvidence",
    "EwmaDetector",
    "MemberEvidence",
    "MemberSpec",
    "NeverFiresDetector",
    "OnlineDetector",
    "RangeBreakoutDetector",
    "RobustZScoreDetector",
    "SeasonalDetector",
    "WindowedGaussianDetector",
    "detect_series",
    "make_detector",
]
