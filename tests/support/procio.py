"""Reading a child process's stdout line protocol with a deadline."""

from __future__ import annotations

import select
import subprocess
import time


def next_line(proc: subprocess.Popen, prefix: str, timeout_s: float) -> str | None:
    """The next stdout line of ``proc`` that starts with ``prefix`` (stripped), skipping other
    lines (logs); None when the process closed stdout or ``timeout_s`` passed first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            line = proc.stdout.readline()
            if not line:
                return None
            if line.startswith(prefix):
                return line.strip()
    return None
