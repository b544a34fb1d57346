"""What the benchmarks on CSV data sets share: finding the files and writing the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def csv_files(arguments: list[str]) -> list[Path]:
    """The CSV files named by `arguments`: files, or directories searched for them."""
    found: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found += sorted(path.rglob("*.csv"))
        elif path.is_file():
            found.append(path)
        else:
            raise SystemExit(f"--data {argument}: no such file or directory")
    if not found:
        raise SystemExit("--data: no CSV file found")
    return found


def write_report(out: Path | None, report: dict[str, Any]) -> None:
    """Write `report` as JSON to `out` (making its folder), if one was asked for."""
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
