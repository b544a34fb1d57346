"""What the benchmarks that bring their own staging fleet share: taking it down again.

A benchmark's fleet is registered in the running stack's inventory (so the platform's monitor
probes it) and carries faults while it runs. `retire_on_exit` registers its removal on the
benchmark's `nofx.shutdown.StopOnSignals` before it starts, so that an error, a SIGTERM (a
`timeout`) or a Ctrl-C anywhere after, even halfway through its start, leaves no pilot, load
generator, fault or inventory row behind.
"""

from __future__ import annotations

import contextlib
import sys

from sqlalchemy.engine import Engine

from nofx.faults import clear_recorded
from nofx.inventory import unregister
from pilot.fleet import Fleet, FleetError


def retire_fleet(fleet: Fleet, engine: Engine) -> None:
    """Clear the faults left on `fleet` (on the record), unregister it and stop it.

    A fault that cannot be cleared is reported and the rest goes on: the fleet is stopped
    whatever else fails, since its processes would otherwise outlive the benchmark.
    """
    names = [s.name for s in fleet.spec.services]
    try:
        if fleet.is_running():
            for name in names:
                try:
                    clear_recorded(fleet, engine, name)
                except FleetError as err:
                    print(f"clear {name}: {err}", file=sys.stderr, flush=True)
    finally:
        try:
            unregister(engine, names)
        finally:
            fleet.stop()


def retire_on_exit(cleanup: contextlib.ExitStack, fleet: Fleet, engine: Engine) -> Fleet:
    """Have `cleanup` retire `fleet` when it exits (register before `fleet.start`)."""
    cleanup.callback(retire_fleet, fleet, engine)
    return fleet
