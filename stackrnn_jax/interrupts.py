"""SIGINT/SIGTERM: during training, finish the current step, checkpoint, exit cleanly;
at any other time, stop with one line (``stopping_on_signals``)."""

from __future__ import annotations

import contextlib
import signal
import threading


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
        self._previous: dict[int, object] = {}

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
def stopping_on_signals(what_happened: str):
    """While active, SIGINT and SIGTERM raise ``TrainingInterrupted`` wherever the main
    thread is (start-up, data preparation, compiling), so that every stage ends with one
    line: "interrupted (signal N)" + ``what_happened``. ``StopRequests`` takes over inside
    the training loop. The previous handlers come back on exit (inert outside the main
    thread)."""
    def stop(signum, frame):
        raise TrainingInterrupted(f"interrupted (signal {signum}){what_happened}", signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {signum: signal.signal(signum, stop) for signum in StopRequests.SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
