"""A forecast as a picture: the history, the forecast, its 80% and 95% bands, the limit.

The x axis is hours from the forecast's origin (the last observed step): history to the left,
the forecast to the right, so a glance tells how far away the limit is.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from models.forecasting import ForecastReport


def plot(report: ForecastReport, path: Path, *, history_points: int = 2016) -> Path:
    """Write a PNG of `report` to `path` (matplotlib's Agg backend: no display); the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    origin = report.history[-1].ts if report.history else report.points[0].ts

    def hours(moment: datetime) -> float:
        return (moment - origin).total_seconds() / 3600

    shown = report.history[-history_points:]
    ahead = [hours(p.ts) for p in report.points]
    figure, axes = plt.subplots(figsize=(11, 4.5), dpi=110)
    try:
        axes.plot(
            [hours(p.ts) for p in shown],
            [p.value for p in shown],
            color="#333",
            lw=1,
            label="history",
        )
        for level, alpha in ((95, 0.18), (80, 0.35)):
            axes.fill_between(
                ahead,
                [getattr(p, f"lo{level}") for p in report.points],
                [getattr(p, f"hi{level}") for p in report.points],
                color="#4c72b0",
                alpha=alpha,
                lw=0,
                label=f"{level}% interval",
            )
        axes.plot(
            ahead,
            [p.mean for p in report.points],
            color="#4c72b0",
            lw=1.6,
            label=f"forecast ({report.model})",
        )
        found = report.exhaustion
        if found is not None:
            axes.axhline(found.limit, color="#c44e52", ls="--", lw=1, label="limit")
            if found.eta is not None:
                axes.axvline(
                    hours(found.eta),
                    color="#c44e52",
                    lw=1,
                    label=f"exhaustion (p={found.probability:.2f}, {found.source})",
                )
        axes.axvline(0.0, color="#999", lw=0.8)
        axes.set_title(f"{report.service} {report.metric} ({report.repairs})")
        axes.set_xlabel(f"hours from {origin:%Y-%m-%d %H:%M} UTC")
        axes.set_ylabel(report.metric)
        axes.grid(alpha=0.3)
        axes.legend(loc="upper left", fontsize=8)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, bbox_inches="tight")
    finally:
        plt.close(figure)
    return path
