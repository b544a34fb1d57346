"""The action matrix's bookkeeping on hand-made cells: the best of a fault and what ties with it,
and `--update` keeping the other faults' cells only under the same configuration
(benchmarks/action_matrix.py; the runs themselves need a fleet and real faults)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # the script imports its neighbours by name

import action_matrix as am  # noqa: E402


def cell(
    fault: str,
    pattern: str,
    playbook: str,
    runs: int,
    successes: int,
    p50: float | None = None,
    enabled: bool = True,
) -> dict[str, Any]:
    """A matrix cell as action_matrix writes it, without its runs' details."""
    return {
        "fault": fault,
        "pattern": pattern,
        "cause": "self",
        "playbook": playbook,
        "enabled": enabled,
        "runs": runs,
        "successes": successes,
        "success_rate": round(successes / runs, 3) if runs else 0.0,
        "recovery_seconds_p50": p50,
    }


def test_the_best_is_the_most_successful_then_the_fastest() -> None:
    best = am.best_of(
        [
            cell("kill", "service_down", "slow-but-sure", 2, 2, 9.0),
            cell("kill", "service_down", "fast-but-flaky", 2, 1, 0.5),
            cell("kill", "service_down", "restart", 2, 2, 1.6),
            cell("crash", "service_down", "restart", 2, 2, 1.0),
        ]
    )
    assert best["kill"]["playbook"] == "restart"
    assert best["kill"]["success_rate"] == 1.0
    assert best["crash"]["playbook"] == "restart"


def test_recoveries_within_one_judge_round_are_tied_the_fastest_first() -> None:
    gap = am.RESOLUTION_SECONDS
    best = am.best_of(
        [
            cell("kill", "service_down", "restart", 2, 2, 1.09),
            cell("kill", "service_down", "drain-and-restart", 2, 2, 1.05),
            cell("kill", "service_down", "slower", 2, 2, 1.05 + gap + 0.01),
            cell("kill", "service_down", "as-fast-but-flaky", 2, 1, 1.0),
            cell("kill", "service_down", "never-ran", 0, 0, None),
            cell("memory_leak", "memory_leak", "restart-leaking", 2, 2, 1.70),
            cell("memory_leak", "latency_regression", "restart-slow", 2, 2, 1.64),
        ]
    )
    assert best["kill"]["playbook"] == "drain-and-restart"
    assert best["kill"]["tied"] == [
        {"pattern": "service_down", "playbook": "drain-and-restart"},
        {"pattern": "service_down", "playbook": "restart"},
    ]
    # a tie crosses patterns: the judge does not know what the fault was diagnosed as
    assert [t["playbook"] for t in best["memory_leak"]["tied"]] == [
        "restart-slow",
        "restart-leaking",
    ]


def test_a_fault_nothing_fixes_has_a_first_cell_but_no_tie() -> None:
    best = am.best_of(
        [
            cell("overload", "overload", "shift", 2, 0, None),
            cell("overload", "overload", "restart", 2, 0, None),
        ]
    )
    assert best["overload"]["success_rate"] == 0.0
    assert best["overload"]["tied"] == []


def _args(tmp_path: Path, runs: int = 2, rto: float = 90.0) -> argparse.Namespace:
    return argparse.Namespace(
        out=tmp_path / "matrix.json",
        priors=tmp_path / "priors.json",
        runs=runs,
        rto=rto,
        hold=am.HOLD_SECONDS,
    )


def test_update_keeps_the_other_faults_and_who_measured_them(tmp_path: Path) -> None:
    first = _args(tmp_path)
    am.write_results(
        first,
        "python benchmarks/action_matrix.py --runs 2",
        datetime(2026, 12, 1, tzinfo=UTC),
        [],
        {
            "cells": [
                cell("kill", "service_down", "restart", 2, 2, 1.1),
                cell("hang", "service_hung", "restart-hung", 2, 1, 1.5),
            ],
            "measured": [],
        },
    )
    kept = am.kept_cells(first, ["hang"])
    assert [c["fault"] for c in kept["cells"]] == ["kill"]
    am.write_results(
        first,
        "python benchmarks/action_matrix.py --runs 2 --faults hang --update",
        datetime(2026, 12, 2, tzinfo=UTC),
        [],
        {
            **kept,
            "cells": [*kept["cells"], cell("hang", "service_hung", "restart-hung", 2, 2, 1.4)],
        },
    )
    written = json.loads(first.out.read_text())
    assert {c["fault"]: c["successes"] for c in written["cells"]} == {"kill": 2, "hang": 2}
    assert written["best"]["hang"]["success_rate"] == 1.0
    assert written["recovery_resolution_seconds"] == am.RESOLUTION_SECONDS
    assert "--update" in json.loads(first.priors.read_text())["source"]


def test_update_refuses_a_matrix_of_another_configuration(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        am.kept_cells(_args(tmp_path), ["kill"])
    am.write_results(_args(tmp_path), "c", datetime(2026, 12, 1, tzinfo=UTC), [], None)
    with pytest.raises(ValueError, match="runs_per_cell"):
        am.kept_cells(_args(tmp_path, runs=3), ["kill"])
    with pytest.raises(ValueError, match="rto_seconds"):
        am.kept_cells(_args(tmp_path, rto=60.0), ["kill"])


def test_a_slow_run_counts_the_mean_ranks_not_the_faster_of_two() -> None:
    # measured on memory_leak: one of two runs took 46 s; the nearest-rank p50 of two is 1.64
    slow_once = {**cell("memory_leak", "latency_regression", "restart-slow", 2, 2, 1.64)}
    slow_once["recovery_seconds"] = [46.4, 1.64]
    steady = {**cell("memory_leak", "memory_leak", "restart-leaking", 2, 2, 1.70)}
    steady["recovery_seconds"] = [1.70, 1.70]
    best = am.best_of([slow_once, steady])["memory_leak"]
    assert (best["playbook"], best["recovery_seconds_mean"]) == ("restart-leaking", 1.7)
    assert [t["playbook"] for t in best["tied"]] == ["restart-leaking"]
