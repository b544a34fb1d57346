"""The pilot HTTP service: one real process of the staging fleet the platform heals.

Run as ``python -m pilot.service --name NAME --port PORT --state-dir DIR``. It answers
``GET /health`` (what the monitor probes), ``GET /metrics`` (what telemetry scrapes) and ``GET /``
(the "work" a user would notice missing). Every start appends a line to ``DIR/starts.log`` so
tests and chaos experiments can count restarts from outside, independently of supervisord.

It uses only the standard library's HTTP server so that a fault injected into it (SIGKILL,
SIGSTOP) behaves exactly as it would for any process, with no framework in between.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)

from nofx.logging import configure_logging, get_logger

HOST = "127.0.0.1"
STARTS_LOG = "starts.log"
# Paths outside this set are counted as "other", so a scanner cannot blow up label cardinality.
_KNOWN_PATHS = frozenset({"/", "/health", "/metrics"})

log = get_logger("pilot.service")


def _package_version() -> str:
    try:
        return version("nofx-autonomy")
    except PackageNotFoundError:
        return "0.0.0+local"


class PilotService:
    """State and metrics of one pilot process, shared by its request threads.

    Args:
        name: the service name (the supervisord program name), reported by /health and metrics.
        port: the TCP port it serves on 127.0.0.1.
        state_dir: where `starts.log` lives; shared by the whole fleet.
    """

    def __init__(self, name: str, port: int, state_dir: Path) -> None:
        self.name = name
        self.port = port
        self.state_dir = state_dir
        self.pid = os.getpid()
        self.started_at = time.time()
        self._started_monotonic = time.monotonic()
        self._work_lock = threading.Lock()
        self.work_done = 0

        # An own registry: the default one would mix in whatever else imported prometheus_client.
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pilot_requests",
            "HTTP requests served, by path and status code.",
            ["path", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "pilot_request_duration_seconds",
            "Time to serve an HTTP request, by path.",
            ["path"],
            registry=self.registry,
        )
        # process_start_time_seconds, CPU, resident memory, open fds: what a leak looks like.
        ProcessCollector(registry=self.registry)
        up = Gauge(
            "pilot_up", "1 while this pilot process serves requests.", registry=self.registry
        )
        up.set(1)
        Info("pilot_build", "Build of the pilot service.", registry=self.registry).info(
            {
                "service": name,
                "version": _package_version(),
                "python": platform.python_version(),
            }
        )

    @property
    def uptime_seconds(self) -> float:
        return time.monotonic() - self._started_monotonic

    def record_start(self) -> None:
        """Append this start to `starts.log`, durably, as one line per start.

        One `write` of a short line to an O_APPEND file is atomic, so the fleet's processes can
        share the file; fsync makes the count survive a crash right after the start.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"service": self.name, "pid": self.pid, "started_at": self.started_at})
        fd = os.open(self.state_dir / STARTS_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def do_work(self) -> int:
        """Count one unit of work and return the running total."""
        with self._work_lock:
            self.work_done += 1
            return self.work_done

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "service": self.name,
            "pid": self.pid,
            "started_at": self.started_at,
            "uptime_seconds": round(self.uptime_seconds, 3),
        }


class PilotHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that carries the pilot's state for its handlers."""

    daemon_threads = True

    def __init__(self, service: PilotService) -> None:
        self.service = service
        super().__init__((HOST, service.port), PilotRequestHandler)


class PilotRequestHandler(BaseHTTPRequestHandler):
    """Serves /health, /metrics and / and records each request in the metrics."""

    server: PilotHTTPServer
    server_version = "pilot"

    def do_GET(self) -> None:
        service = self.server.service
        path = self.path.split("?", 1)[0]
        label = path if path in _KNOWN_PATHS else "other"
        started = time.perf_counter()
        if path == "/health":
            status = self._send_json(200, service.health())
        elif path == "/metrics":
            status = self._send(200, generate_latest(service.registry), CONTENT_TYPE_LATEST)
        elif path == "/":
            count = service.do_work()
            status = self._send_json(200, {"service": service.name, "pid": service.pid, "n": count})
        else:
            status = self._send_json(404, {"error": f"no such path: {path}"})
        service.requests.labels(path=label, status=str(status)).inc()
        service.latency.labels(path=label).observe(time.perf_counter() - started)

    def _send_json(self, status: int, body: dict[str, Any]) -> int:
        return self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> int:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return status

    def log_message(self, format: str, *args: Any) -> None:
        """Access logs are off: the request counter says the same without filling the disk."""

    def log_error(self, format: str, *args: Any) -> None:
        log.warning("http error", detail=format % args, service=self.server.service.name)


def serve(name: str, port: int, state_dir: Path) -> int:
    """Serve until SIGTERM or SIGINT; return the process exit code.

    The port is bound before the start is recorded, so `starts.log` counts only starts that
    actually served.
    """
    service = PilotService(name, port, state_dir)
    try:
        server = PilotHTTPServer(service)
    except OSError as exc:
        log.error("cannot bind", service=name, host=HOST, port=port, error=str(exc))
        return 1

    def stop(signum: int, _frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever() to return, which runs on this (main) thread:
        # ask for it from another thread or the handler would deadlock.
        log.info("stopping", service=name, signal=signal.Signals(signum).name)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    service.record_start()
    log.info("started", service=name, pid=service.pid, host=HOST, port=port)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    log.info("stopped", service=name, pid=service.pid, uptime_seconds=service.uptime_seconds)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pilot.service", description=__doc__)
    parser.add_argument("--name", required=True, help="service name (the supervisord program)")
    parser.add_argument("--port", required=True, type=int, help="TCP port on 127.0.0.1")
    parser.add_argument("--state-dir", required=True, type=Path, help="directory of starts.log")
    args = parser.parse_args(argv)
    configure_logging(os.environ.get("NOFX_LOG_LEVEL", "INFO"), json=True)
    return serve(args.name, args.port, args.state_dir)


if __name__ == "__main__":
    sys.exit(main())
