"""Score our online detectors on the Numenta Anomaly Benchmark (NAB), baselines in the same run.

    python benchmarks/nab.py --data DIR --labels DIR [--out FILE.json] [--detectors NAME ...]
                             [--workers N]

Every ``*.csv`` under ``--data`` (columns ``timestamp,value``) is one series; its scoring windows
come from ``--labels/combined_windows.json``, keyed by the path relative to ``--data``. Each
detector runs online over each file (a fresh instance per file, one configuration for the whole
corpus, labels never seen by a detector); then ``nofx.detection.nab_scoring`` picks one threshold
per detector and profile for the whole corpus and normalises the score (null detector 0, perfect
100). Default detectors: our ``ensemble``, NAB's ``windowed_gaussian`` baseline and
``never_fires``; ``windowed_gaussian_nab_legacy`` reproduces the score function of NAB's own
published windowed-Gaussian results (see ``WindowedGaussianDetector``).

Files are taken as they are, odd rows included, because NAB scores every row in file order:
unparseable timestamps and values, repeated timestamps and a clock set back (rows stamped behind
the newest) are not cleaned away. Windows are located by timestamp as NAB locates them
(``locate_windows``) and each detector applies its own policy to odd samples (non-finite ones
skipped; repeated and behind ones scored, except by the seasonal member, which skips the latter).
What each file held and what was done with it is printed after the table and kept in the JSON
under ``run.odd_rows``, for every file with odd rows, gaps, or rows whose stamp and window
disagree.

Prints a table (progress on stderr) and writes JSON: one entry per detector with its three
normalised profile scores, plus ``thresholds`` (per detector and profile) and ``run`` (what ran,
where, how long, the per-detector counts behind the scores, the odd rows).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from nofx.detection import (
    DETECTORS,
    EnsembleConfig,
    OnlineDetector,
    WindowedGaussianDetector,
    make_detector,
)
from nofx.detection.detectors import OddRows
from nofx.detection.ensemble import run_series
from nofx.detection.nab_scoring import (
    PROFILES,
    CorpusScore,
    LocatedWindows,
    ScoredSeries,
    Window,
    locate_windows,
    score_corpus,
)
from nofx.telemetry.cleaning import RowAudit, audit_rows

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DETECTORS = ("ensemble", "windowed_gaussian", "never_fires")
EXTRA_DETECTORS: dict[str, Callable[[], OnlineDetector]] = {
    "windowed_gaussian_nab_legacy": partial(
        WindowedGaussianDetector, tail="nab_legacy", name="windowed_gaussian_nab_legacy"
    ),
}


@dataclasses.dataclass(frozen=True, slots=True)
class LabelledFile:
    """One NAB series, rows in file order, with its windows located and its odd rows audited.

    Attributes:
        seconds: Unix seconds per row (``NaN`` where the timestamp does not parse).
        located: the windows as row ranges and the rows whose stamp and window disagree.
        audit: what is odd about the rows (kept, not cleaned: NAB scores every row).
    """

    name: str
    seconds: npt.NDArray[np.float64]
    values: npt.NDArray[np.float64]
    located: LocatedWindows
    audit: RowAudit

    @property
    def windows(self) -> tuple[Window, ...]:
        """The windows as inclusive row ranges."""
        return self.located.rows

    @property
    def has_odd_rows(self) -> bool:
        """Anything a reader of the scores should be told about."""
        located = self.located
        return bool(
            self.audit.odd
            or self.audit.gaps
            or located.stamped_inside_scored_outside
            or located.scored_inside_stamped_outside
        )


def detector_factory(name: str) -> Callable[[], OnlineDetector]:
    """A zero-argument constructor for a detector name (picklable for worker processes)."""
    if name in EXTRA_DETECTORS:
        return EXTRA_DETECTORS[name]
    if name not in DETECTORS:
        known = ", ".join(sorted([*DETECTORS, *EXTRA_DETECTORS]))
        raise SystemExit(f"unknown detector {name!r}; known: {known}")
    return partial(make_detector, name)


def load_corpus(data_dir: Path, labels_dir: Path) -> tuple[list[LabelledFile], list[str]]:
    """Every CSV under ``data_dir`` that has windows; also the names of those that have none."""
    windows_path = labels_dir / "combined_windows.json"
    all_windows: dict[str, list[list[str]]] = json.loads(windows_path.read_text())
    files: list[LabelledFile] = []
    unlabelled: list[str] = []
    for path in sorted(data_dir.rglob("*.csv")):
        name = path.relative_to(data_dir).as_posix()
        if name not in all_windows:
            unlabelled.append(name)
            continue
        frame = pd.read_csv(path)
        parsed = pd.to_datetime(frame["timestamp"], errors="coerce")
        stamps = parsed.to_numpy(dtype="datetime64[ns]")
        values = pd.to_numeric(frame["value"], errors="coerce").to_numpy(dtype=np.float64)
        limits = [(start, end) for start, end in all_windows[name]]
        seconds = stamps.astype("int64").astype(np.float64) / 1e9
        seconds[np.isnat(stamps)] = np.nan
        try:
            located = locate_windows(stamps, limits)
        except ValueError as error:
            raise SystemExit(f"{name}: {error}") from None
        files.append(
            LabelledFile(
                name=name,
                seconds=seconds,
                values=values,
                located=located,
                audit=audit_rows(pd.Series(values, index=parsed)),
            )
        )
    return files, unlabelled


@dataclasses.dataclass(frozen=True, slots=True)
class DetectorRuns:
    """Every detector's scores on every file, with what it did with odd samples.

    Attributes:
        scores: per detector, one score array per file (in file order).
        odd_rows: per detector, per file, its ``OddRows`` (an ensemble's members included).
        cpu_seconds: per detector, the time its runs took.
    """

    scores: dict[str, list[npt.NDArray[np.float64]]]
    odd_rows: dict[str, list[dict[str, OddRows]]]
    cpu_seconds: dict[str, float]


def _run_one(
    detector: str, index: int, item: LabelledFile
) -> tuple[str, int, npt.NDArray[np.float64], dict[str, OddRows], float]:
    started = time.perf_counter()
    run = run_series(item.seconds, item.values, detector_factory(detector))
    return detector, index, run.scores, run.odd_rows, time.perf_counter() - started


def run_detectors(detectors: list[str], files: list[LabelledFile], workers: int) -> DetectorRuns:
    """Every detector on every file, computed in ``workers`` processes."""
    runs = DetectorRuns(
        scores={d: [np.empty(0)] * len(files) for d in detectors},
        odd_rows={d: [{}] * len(files) for d in detectors},
        cpu_seconds=dict.fromkeys(detectors, 0.0),
    )
    jobs = [(d, i) for d in detectors for i in range(len(files))]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_run_one, d, i, files[i]) for d, i in jobs]
        for done, future in enumerate(as_completed(futures), start=1):
            detector, index, result, odd_rows, seconds = future.result()
            runs.scores[detector][index] = result
            runs.odd_rows[detector][index] = odd_rows
            runs.cpu_seconds[detector] += seconds
            print(
                f"[{done}/{len(jobs)}] {detector:<28} {files[index].name} ({seconds:.1f}s)",
                file=sys.stderr,
                flush=True,
            )
    return runs


def odd_rows_report(files: list[LabelledFile], runs: DetectorRuns) -> dict[str, Any]:
    """Per file with anything odd: its rows, its windows, and what each detector did."""
    report: dict[str, Any] = {}
    for index, item in enumerate(files):
        if not item.has_odd_rows:
            continue
        detectors: dict[str, Any] = {}
        for per_file in runs.odd_rows.values():
            for name, odd in per_file[index].items():
                detectors[name] = {**odd.as_dict(), "summary": odd.describe()}
        report[item.name] = {
            "rows": {**item.audit.as_dict(), "summary": item.audit.describe()},
            "scored": "every row, in file order (NAB's rule)",
            "windows": item.located.as_dict(),
            "detectors": detectors,
        }
    return report


def format_odd_rows(report: dict[str, Any]) -> str:
    """The odd-rows report as lines: one per file, one per detector that did something with
    odd samples (an ensemble member only where it did otherwise than its ensemble)."""
    if not report:
        return "no odd rows: every file is sorted, unique, finite and without gaps"
    lines = ["odd rows (kept and scored in file order, as NAB scores them):"]
    for name, entry in report.items():
        windows = entry["windows"]
        line = f"  {name}: {entry['rows']['rows']} rows: {entry['rows']['summary']}"
        if windows["stamped_inside_scored_outside"] or windows["scored_inside_stamped_outside"]:
            line += (
                f"; windows by timestamp: {windows['stamped_inside_scored_outside']} rows "
                "stamped inside a window scored outside it (NAB closes a window at its end "
                f"stamp), {windows['scored_inside_stamped_outside']} inside a window's rows "
                "stamped outside it"
            )
        lines.append(line)
        detectors = entry["detectors"]
        for detector, odd in detectors.items():
            # An ensemble's member is named only where it did otherwise than the ensemble.
            parent = detectors.get(detector.partition("/")[0]) if "/" in detector else None
            acted = odd["non_finite"] or odd["repeated"] or odd["behind"]
            if acted and (parent is None or parent["summary"] != odd["summary"]):
                lines.append(f"    {detector}: {odd['summary']}")
    return "\n".join(lines)


def score_detectors(
    scores: dict[str, list[npt.NDArray[np.float64]]], files: list[LabelledFile]
) -> dict[str, dict[str, CorpusScore]]:
    """Each detector's corpus score under each profile, at its own best threshold."""
    results: dict[str, dict[str, CorpusScore]] = {}
    for detector, per_file in scores.items():
        series = [
            ScoredSeries(item.name, file_scores, item.windows)
            for item, file_scores in zip(files, per_file, strict=True)
        ]
        results[detector] = {name: score_corpus(series, p) for name, p in PROFILES.items()}
    return results


def format_table(results: dict[str, dict[str, CorpusScore]]) -> str:
    """The NAB table: normalised score per profile, plus the standard profile's counts."""
    header = (
        f"{'detector':<30}{'standard':>10}{'low_FP':>10}{'low_FN':>10}"
        f"{'windows hit':>13}{'FP':>6}  threshold (standard)"
    )
    lines = [header, "-" * len(header)]
    for detector, by_profile in results.items():
        standard = by_profile["standard"]
        detected = sum(f.detected for f in standard.files)
        total = detected + sum(f.missed for f in standard.files)
        false_positives = sum(f.false_positives for f in standard.files)
        lines.append(
            f"{detector:<30}{standard.normalised:>10.1f}"
            f"{by_profile['reward_low_FP'].normalised:>10.1f}"
            f"{by_profile['reward_low_FN'].normalised:>10.1f}"
            f"{f'{detected}/{total}':>13}{false_positives:>6}  {standard.threshold:.12g}"
        )
    return "\n".join(lines)


def to_json(results: dict[str, dict[str, CorpusScore]], run: dict[str, Any]) -> dict[str, Any]:
    """``{detector: {profile: score}}`` plus ``thresholds`` and ``run``."""
    document: dict[str, Any] = {
        detector: {profile: round(r.normalised, 3) for profile, r in by_profile.items()}
        for detector, by_profile in results.items()
    }
    document["thresholds"] = {
        detector: {profile: r.threshold for profile, r in by_profile.items()}
        for detector, by_profile in results.items()
    }
    counts: dict[str, Any] = {}
    for detector, by_profile in results.items():
        counts[detector] = {
            profile: {
                "raw": round(r.raw, 4),
                "null": r.null,
                "perfect": r.perfect,
                "windows_detected": sum(f.detected for f in r.files),
                "windows_missed": sum(f.missed for f in r.files),
                "false_positives": sum(f.false_positives for f in r.files),
            }
            for profile, r in by_profile.items()
        }
    document["run"] = {**run, "counts": counts}
    return document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of NAB data CSVs")
    parser.add_argument("--labels", type=Path, required=True, help="folder of NAB label JSONs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/nab.json")
    parser.add_argument("--detectors", nargs="+", default=list(DEFAULT_DETECTORS))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    for name in args.detectors:
        detector_factory(name)  # fail before any work on an unknown name

    started = time.perf_counter()
    files, unlabelled = load_corpus(args.data, args.labels)
    if not files:
        raise SystemExit(f"no labelled CSV under {args.data}")
    for name in unlabelled:
        print(f"skipped {name}: no windows in the labels", file=sys.stderr)
    runs = run_detectors(args.detectors, files, max(1, args.workers))
    results = score_detectors(runs.scores, files)
    odd_rows = odd_rows_report(files, runs)
    elapsed = time.perf_counter() - started

    print(format_table(results))
    print()
    print(format_odd_rows(odd_rows))
    print(
        f"\n{len(files)} files, {sum(len(f.windows) for f in files)} windows, "
        f"{sum(f.values.size for f in files)} rows; {elapsed:.0f}s wall, {args.workers} workers"
    )
    run = {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "data": str(args.data),
        "labels": str(args.labels),
        "files": len(files),
        "windows": sum(len(f.windows) for f in files),
        "rows": int(sum(f.values.size for f in files)),
        "unlabelled_files_skipped": unlabelled,
        "wall_seconds": round(elapsed, 1),
        "detector_cpu_seconds": {d: round(s, 1) for d, s in runs.cpu_seconds.items()},
        "workers": args.workers,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "ensemble_config": dataclasses.asdict(EnsembleConfig()),
        "odd_rows": odd_rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(to_json(results, run), indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
