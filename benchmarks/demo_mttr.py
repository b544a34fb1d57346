"""Time to detect and to recover for the README's demo, over several runs against one stack.

    python benchmarks/demo_mttr.py --runs 5 [--fault kill|hang] [--out FILE.json]

Each run is `nofx demo --json` (the stack is started by the first run and reused); the figures
are the demo's own: fault injected → incident opened (detect) and → incident resolved with the
service passing its health checks (recover). Prints each run, then medians, and writes JSON.

Killing the same service again within the guardrails' cooldown is what a crash loop looks like,
and the platform rightly asks a person before restarting it once more; the benchmark measures
recovery, so it sets the cooldown to 0 after the first run and restores it at the end — also
when a run fails or the benchmark is stopped by SIGTERM or SIGINT, which first stops the demo
in flight (with SIGTERM, so that a stack it is starting is undone) and exits 128 + the signal.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from nofx.shutdown import StopOnSignals

ROOT = Path(__file__).resolve().parent.parent


DEMO_TIMEOUT_S = 300
STOP_GRACE_S = 60  # what `nofx demo` may take to undo a stack it was starting


def run_demo(fault: str, service: str) -> dict[str, object]:
    """One `nofx demo --json`; stopped gently (SIGTERM, then SIGKILL) if this process stops."""
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from nofx.cli import run; run()",
            "demo",
            "--json",
            "--fault",
            fault,
            "--service",
            service,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as demo:
        try:
            stdout, stderr = demo.communicate(timeout=DEMO_TIMEOUT_S)
        except BaseException:
            demo.terminate()
            try:
                demo.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                demo.kill()
            raise
    if demo.returncode != 0:
        raise SystemExit(f"demo failed ({demo.returncode}): {stderr.strip()[-500:]}")
    summary: dict[str, object] = json.loads(stdout.strip().splitlines()[-1])
    return summary


def set_cooldown(seconds: float) -> float:
    """Set the guardrails' cooldown on the running stack's database; return the previous one."""
    from nofx.db import make_engine
    from nofx.healing.guardrails import read_controls, set_policy
    from nofx.settings import get_settings
    from nofx.stack import Stack

    settings = get_settings()
    engine = make_engine(settings.database_url or Stack(settings).recorded()["database_url"])
    try:
        with engine.connect() as conn:
            previous = read_controls(conn).policy.cooldown_seconds
        set_policy(engine, {"cooldown_seconds": seconds})
    finally:
        engine.dispose()
    return previous


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--fault", choices=["kill", "hang"], default="kill")
    parser.add_argument("--service", default="pilot-api")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/demo_mttr.json")
    args = parser.parse_args()

    runs = []
    with StopOnSignals() as cleanup:
        for index in range(1, args.runs + 1):
            if index == 2:
                cleanup.callback(set_cooldown, set_cooldown(0.0))
            summary = run_demo(args.fault, args.service)
            runs.append(summary)
            print(
                f"run {index}: detect {summary['time_to_detect_s']}s  recover"
                f" {summary['time_to_recover_s']}s  (demo command {summary['demo_seconds']}s)",
                flush=True,
            )
            time.sleep(1)
    detect = [float(r["time_to_detect_s"]) for r in runs]  # type: ignore[arg-type]
    recover = [float(r["time_to_recover_s"]) for r in runs]  # type: ignore[arg-type]
    result = {
        "benchmark": "demo_mttr",
        "measured_at": datetime.now(UTC).isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "fault": args.fault,
        "service": args.service,
        "runs": runs,
        "median_time_to_detect_s": round(statistics.median(detect), 2),
        "median_time_to_recover_s": round(statistics.median(recover), 2),
        "max_time_to_recover_s": max(recover),
    }
    print(
        f"median over {len(runs)} runs: detect {result['median_time_to_detect_s']}s,"
        f" recover {result['median_time_to_recover_s']}s (max {result['max_time_to_recover_s']}s)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
