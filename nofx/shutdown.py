"""Stopping on SIGTERM and SIGINT without leaving behind what the process started.

The staging fleet's supervisord, the load generators and the stack's parts run in sessions of
their own, so that they outlive the command that started them when they should. The flip side:
a benchmark or a `nofx up` stopped by a signal (a `timeout`, a Ctrl-C, a CI runner ending a job)
died at once and left a whole fleet running, one service still overloaded. `StopOnSignals` is an
`ExitStack` whose callbacks run on those signals too, once, to the end.

    with StopOnSignals() as cleanup:
        fleet.start()
        cleanup.callback(fleet.stop)
        ...  # SIGTERM here: fleet.stop runs, then the process exits with status 143

The first SIGTERM or SIGINT raises `Interrupted` (a `SystemExit` with status 128 + the signal's
number) in the main thread, so `finally` blocks and the stack's callbacks run as they would on
any exception, and `except Exception` does not swallow it. From then on, and whenever the
callbacks run, a further signal is only logged: cleaning up is never cut short. A signal that
arrives while the callbacks of a normal exit run still ends the process, with its status.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType, TracebackType
from typing import Any, Self

from nofx.logging import get_logger

SIGNALS = (signal.SIGTERM, signal.SIGINT)

log = get_logger("nofx.shutdown")

# The signal that started this process's stop (globals: signal handlers are process-wide),
# shared by every StopOnSignals, which may nest:
# once one has raised Interrupted, none raises again until the outermost has exited.
_stopping: int | None = None
_depth = 0


class Interrupted(SystemExit):
    """SIGTERM or SIGINT arrived: unwind, cleaning up, and exit with status 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name}"


class StopOnSignals(contextlib.ExitStack):
    """An `ExitStack` whose callbacks also run, undisturbed, when SIGTERM or SIGINT arrives.

    Outside the main thread (where Python cannot handle signals) it is a plain `ExitStack`.
    """

    def __init__(self) -> None:
        super().__init__()
        self._previous: dict[int, Any] = {}
        self._noted: int | None = None

    def __enter__(self) -> Self:
        global _depth
        super().__enter__()
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._interrupt) for signum in SIGNALS}
            _depth += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        global _depth, _stopping
        handlers = self._previous
        for signum in handlers:
            signal.signal(signum, self._note)  # the callbacks below run to the end
        try:
            suppressed = bool(super().__exit__(exc_type, exc, tb))
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            if handlers:
                _depth -= 1
                if _depth == 0:
                    _stopping = None
        if self._noted is not None and (exc_type is None or suppressed):
            raise Interrupted(self._noted)
        return suppressed

    def _interrupt(self, signum: int, frame: FrameType | None) -> None:
        global _stopping
        if _stopping is not None:
            self._note(signum, frame)
            return
        _stopping = signum
        for handled in self._previous:
            signal.signal(handled, self._note)
        log.warning("stopping: cleaning up what was started", signal=signal.Signals(signum).name)
        raise Interrupted(signum)

    def _note(self, signum: int, _frame: FrameType | None) -> None:
        global _stopping
        log.warning("signal while cleaning up: cleanup goes on", signal=signal.Signals(signum).name)
        if _stopping is None:  # the first signal, during a normal exit's cleanup: exit after it
            _stopping = self._noted = signum
