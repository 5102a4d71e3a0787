"""Wait in the main thread for SIGTERM or SIGINT (servers that run in threads)."""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignal:
    """SIGTERM/SIGINT handlers installed now (a signal that comes during start-up is kept, not
    fatal); :meth:`wait` blocks until one came, ``event`` lets start-up steps give up early."""

    def __init__(self) -> None:
        self.got: list[int] = []
        self.event = threading.Event()
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handler)

    def _handler(self, signum: int, _frame: object) -> None:
        self.got.append(signum)
        self.event.set()

    def wait(self, poll_s: float = 0.5) -> int:
        """The signal's number, once one came (wakes every ``poll_s``: see :func:`wait_for_stop_signal`
        for why)."""
        while not self.event.wait(poll_s):
            pass
        return self.got[0]


def wait_for_stop_signal(poll_s: float = 0.5) -> int:
    """Block until SIGTERM or SIGINT; returns the signal's number.

    The kernel may hand a process-wide signal to any of its threads (for example when the
    main thread is still stopped after SIGSTOP/SIGCONT), and Python runs the handler only
    once the main thread runs bytecode again: an untimed wait could then sleep through it
    (seen: a server that ignored SIGTERM after a SIGCONT). So the wait wakes every ``poll_s``.
    """
    return StopSignal().wait(poll_s)
