"""SIGINT/SIGTERM: during training, finish the current step, checkpoint, exit cleanly;
at any other time, exit at once with one line (``exiting_on_signals``)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint; ``signum`` says which."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class StopRequests:
    """While active, SIGINT and SIGTERM only set ``signum``; the loop polls it between steps.

    Killing a process inside a jitted step or halfway through a checkpoint write would
    lose the step or the file; deferring the signal to the next step boundary loses
    neither. Outside the main thread (where Python cannot install handlers) it is inert.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}   # what signal.signal returned

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._request)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _request(self, signum, frame) -> None:
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def exiting_on_signals(line: str):
    """While active, SIGINT and SIGTERM end the process at once with ``line`` (formatted
    with ``signum``) on stderr and status 128 + signum, wherever the main thread is:
    start-up, imports, data preparation, compiling. ``StopRequests`` takes over inside the
    training loop, where a checkpoint comes first.

    Exiting at once is what the default SIGTERM does, and is safe for the same reason a
    SIGKILL is: every file is written aside and renamed. An exception raised from the
    handler instead could land in library code that catches it (tensorflow-datasets'
    lazy imports do) and leave it half initialised. The previous handlers come back on
    exit (inert outside the main thread).
    """
    def stop(signum, frame):
        os.write(sys.stderr.fileno(), (line.format(signum=signum) + "\n").encode())
        os._exit(128 + signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {signum: signal.signal(signum, stop) for signum in StopRequests.SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
