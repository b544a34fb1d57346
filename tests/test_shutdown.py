"""SIGTERM and SIGINT stop what a process started (nofx.shutdown), on real processes.

A real Python process starts a real fleet (supervisord, a pilot service, and an overload's load
generator in a session of its own) under `StopOnSignals`, the way the benchmarks do, and is sent
a signal. What an operator would check afterwards: the process exited non-zero with 128 + the
signal, and nothing it started is left running — also when a second signal arrives while it is
still cleaning up.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import IO, Any

import psutil
import pytest

from pilot.fleet import Fleet, FleetSpec, ServiceSpec

ROOT = Path(__file__).resolve().parent.parent

# The benchmarks' shape: register the cleanup, start the fleet, fault it, run until stopped.
# `hold` runs first when cleaning up and waits for the test's go, so that the test can send a
# second signal while the cleanup is under way, and says whether it was cut short.
CHILD = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path

    from nofx.shutdown import StopOnSignals
    from pilot.fleet import Fleet, FleetSpec, ServiceSpec, free_port

    home, go_on = Path(sys.argv[1]), Path(sys.argv[2])

    def hold():
        print("cleaning", flush=True)
        deadline = time.monotonic() + 60
        while not go_on.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        print("held to the end", flush=True)

    with StopOnSignals() as cleanup:
        fleet = Fleet(home, FleetSpec(services=[ServiceSpec(name="solo", port=free_port())]))
        cleanup.callback(fleet.stop)
        cleanup.callback(hold)
        fleet.start(timeout=60)
        load = fleet.inject("overload", "solo", concurrency=2)
        pids = {
            "supervisord": fleet.rpc().supervisor.getPID(),
            "pilot": fleet.pid("solo"),
            "load": load["pid"],
        }
        print("ready " + json.dumps(pids), flush=True)
        while True:
            time.sleep(1)
    """
)


class Output:
    """The child's output, line by line, read by a thread (its logs go there too)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        stream = process.stdout
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def until(self, prefix: str, timeout: float) -> str:
        """The rest of the next line that starts with `prefix`."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break  # the child exited
            if line.startswith(prefix):
                return line[len(prefix) :]
            self.seen.append(line)
        pytest.fail(f"no {prefix!r} line within {timeout}s; output: {self.seen[-10:]}")


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def left_running(pids: dict[str, int], home: Path, timeout: float = 10.0) -> dict[str, Any]:
    """What is still running of `pids`, or of anything started under `home`, after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        alive: dict[str, Any] = {name: pid for name, pid in pids.items() if running(pid)}
        for process in psutil.process_iter(["cmdline", "status"]):
            cmdline = " ".join(process.info["cmdline"] or [])
            if str(home) in cmdline and process.info["status"] != psutil.STATUS_ZOMBIE:
                alive[f"pid {process.pid}"] = cmdline
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


@pytest.mark.parametrize("first", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_fleet_it_started_even_when_signalled_again(
    tmp_path: Path, first: signal.Signals
) -> None:
    home, go_on = tmp_path / "home", tmp_path / "go-on"
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(home), str(go_on)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = Output(process)
    try:
        pids: dict[str, int] = json.loads(output.until("ready ", timeout=120))
        assert all(running(pid) for pid in pids.values()), pids

        process.send_signal(first)
        output.until("cleaning", timeout=30)
        process.send_signal(signal.SIGTERM)  # must not cut the cleanup short
        go_on.touch()
        output.until("held to the end", timeout=30)
        assert process.wait(timeout=60) == 128 + first

        assert left_running(pids, home) == {}
        assert not (home / "fleet" / "supervisor.sock").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        # when the test fails, the fleet must not outlive it (stopping a stopped one is fine)
        Fleet(home, FleetSpec(services=[ServiceSpec(name="solo", port=1)])).stop()


def test_a_normal_exit_cleans_up_and_does_not_turn_into_a_stop() -> None:
    """No signal: the callbacks run once, in reverse, and the process exits as it would."""
    program = textwrap.dedent(
        """
        from nofx.shutdown import StopOnSignals
        with StopOnSignals() as cleanup:
            cleanup.callback(print, "second")
            cleanup.callback(print, "first")
        print("after")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout.split()) == (0, ["first", "second", "after"])
