"""SIGTERM handled like Ctrl+C by the commands that write files.

``kill``, ``timeout`` and SLURM stop a job with SIGTERM, whose default action ends the
process at once: a writer's ``except BaseException`` clean-up never runs and a partial
output or a hidden temporary file is left behind. Inside :func:`sigterm_raises`, SIGTERM
raises :class:`Terminated` instead, so the same clean-up as for SIGINT runs; the command
then exits with 143 (128 + 15), the status a shell reports for a process ended by SIGTERM.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: Exit status of a command stopped by SIGTERM (128 + signal number).
SIGTERM_EXIT = 128 + signal.SIGTERM


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM inside :func:`sigterm_raises`."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated(f"stopped by signal {signum} (SIGTERM)")


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` within the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
