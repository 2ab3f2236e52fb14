"""``--tensorboard DIR``: training scalars for TensorBoard, written with tensorboardX
(the ``tensorboard`` extra; no TensorFlow). The x axis is the global step.

At every host sync of the train loop (the progress bar's: every ``log_every`` steps, at
checkpoints and at the end of an epoch) ``train/loss`` and ``train/accuracy`` (means
over the examples since the previous sync), ``train/grad_norm`` (the mean global norm of
the gradients since then, before clipping, over finite steps), ``train/learning_rate``
(the rate the last step used) and ``train/step_time_s`` (wall seconds per step since
the previous sync, the host's share included; the first sync also holds the compile);
after every epoch ``val/loss`` and ``val/accuracy``. The numbers come from the totals the
sync already transferred, so logging adds no device->host transfer.

Resuming: the writer opens with ``purge_step`` = the resumed step + 1, so TensorBoard
hides what an interrupted run wrote after its last checkpoint (steps the resumed run
writes again), and a fresh run (step 0) hides a previous run's events in the same
folder: no step shows twice.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np


class ScalarLog:
    """The scalars of one training process (see the module docstring)."""

    def __init__(self, logdir: str | Path, schedule: Callable[[int], float], start_step: int):
        try:
            from tensorboardX import SummaryWriter
        except ImportError as error:
            raise ValueError("--tensorboard needs tensorboardX: pip install "
                             "'stackrnn-jax[tensorboard]' (or pip install tensorboardX)") from error
        self._writer = SummaryWriter(str(logdir), purge_step=start_step + 1)
        self._schedule = schedule
        # (step, the epoch's totals then or None, time) of the previous sync
        self._since: tuple[int, dict | None, float] = (start_step, None, time.perf_counter())

    def epoch_started(self, step: int, totals=None) -> None:
        """The loop starts an epoch at ``step`` with ``totals`` (restored mid-epoch, on the
        host) or from zero (None); the time spent validating before it is not a step's."""
        self._since = (step, None if totals is None else _host(totals), time.perf_counter())

    def sync(self, step: int, totals) -> None:
        """A host sync after global step ``step``; ``totals``: the epoch's sums so far."""
        now, totals = time.perf_counter(), _host(totals)
        last_step, last, last_time = self._since
        self._since = (step, totals, now)
        steps = step - last_step
        if steps <= 0:
            return
        delta = {k: float(v) - (float(last[k]) if last is not None else 0.0)
                 for k, v in totals.items() if k in ("loss", "correct", "count", "grad_norm",
                                                     "nonfinite")}
        if delta["count"] > 0:
            self._add("train/loss", delta["loss"] / delta["count"], step)
            self._add("train/accuracy", delta["correct"] / delta["count"], step)
        if steps > delta["nonfinite"]:
            self._add("train/grad_norm", delta["grad_norm"] / (steps - delta["nonfinite"]), step)
        self._add("train/learning_rate", float(self._schedule(step - 1)), step)
        self._add("train/step_time_s", (now - last_time) / steps, step)

    def validation(self, step: int, metrics: dict[str, float]) -> None:
        self._add("val/loss", metrics["loss"], step)
        self._add("val/accuracy", metrics["accuracy"], step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def _add(self, tag: str, value: float, step: int) -> None:
        self._writer.add_scalar(tag, value, step)


class NoLog:
    """Without ``--tensorboard``: the same calls, nothing written."""

    def epoch_started(self, step, totals=None):
        pass

    def sync(self, step, totals):
        pass

    def validation(self, step, metrics):
        pass

    def close(self):
        pass


def open_log(logdir: str | Path | None, schedule: Callable[[int], float], start_step: int):
    """A ``ScalarLog`` into ``logdir``, or a ``NoLog`` when it is empty or None."""
    return ScalarLog(logdir, schedule, start_step) if logdir else NoLog()


def _host(totals) -> dict[str, np.ndarray]:
    import jax
    return jax.device_get(totals)
