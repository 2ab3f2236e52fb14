"""A run's work directory: what training writes there and evaluate/predict read back.

Layout::

    config.json      the resolved TrainConfig
    vocab.json       the vocabulary the ids were encoded with
    best.json        {"epoch", "checkpoint", metrics...}: which checkpoint is the best epoch
    checkpoints/epoch_<n>/   orbax checkpoint of the model parameters (nnx.Param state)
    train_state/<step>/      the latest resumable checkpoints (``checkpoints.TrainCheckpoints``)
    history.json / history.csv / history.png   per-epoch metrics and timings, and their plot
    .lock            held (``flock``) while a ``train`` runs here

Every file is replaced atomically (written aside, then renamed), and the best
checkpoint is switched by rewriting ``best.json`` only after the new checkpoint is
complete, so an interrupted run always leaves a loadable best epoch.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from stackrnn_jax.config import TrainConfig

CONFIG, VOCAB, BEST = "config.json", "vocab.json", "best.json"
HISTORY_JSON, HISTORY_CSV, PLOT = "history.json", "history.csv", "history.png"
CHECKPOINTS, TRAIN_STATE, LOCK = "checkpoints", "train_state", ".lock"
# Changing these keeps the trained model's meaning, so they do not make a run dir incompatible
# (a run may be resumed with another strategy or checkpoint cadence).
EXECUTION_FIELDS = ("strategy", "unroll", "log_every", "checkpoint_every", "keep_checkpoints",
                    "on_nonfinite", "tensorboard")


class RunError(ValueError):
    """A work directory is missing, unreadable or holds an incompatible run; one line for the
    user."""


def identity(config: TrainConfig) -> dict[str, Any]:
    """The config fields that define the trained model (all but ``EXECUTION_FIELDS``)."""
    return {k: v for k, v in config.to_dict().items() if k not in EXECUTION_FIELDS}


def with_defaults(recorded: Any) -> Any:
    """A recorded ``identity`` with the fields added since it was written at their defaults
    (their defaults keep the old behaviour), so that a checkpoint of an older version
    resumes; anything but a dict is returned as it is."""
    if not isinstance(recorded, dict):
        return recorded
    return {**identity(TrainConfig()), **recorded}


def prepare_on_all_hosts(workdir: str | Path, config: TrainConfig, *,
                         overwrite: bool = False) -> bool:
    """``prepare`` on process 0 alone, then its answer (can the run resume?) on every process.

    The other processes never look at ``workdir`` while process 0 rewrites it: they could
    find it half prepared (a temporary file, no config yet) and refuse it as "not empty
    and no run". The broadcast is also the barrier after which every process may read it.
    """
    resumable = jax.process_index() == 0 and prepare(workdir, config, overwrite=overwrite)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        resumable = bool(multihost_utils.broadcast_one_to_all(np.asarray(resumable)))
    return resumable


def prepare(workdir: str | Path, config: TrainConfig, *, overwrite: bool = False) -> bool:
    """Get ``workdir`` ready for training ``config``; returns whether a run there can resume.

    A run (a config and at least one checkpoint) with the same config
    (``EXECUTION_FIELDS`` aside) is kept for resuming, untouched: ``train.fit`` rewrites
    its config only once it trains further, so a finished run stays as it is. A run with
    a different config, or a non-empty folder that is no run, is refused unless
    ``overwrite``. A start that failed before its first checkpoint left no run: it is
    replaced. Otherwise (and with ``overwrite``) only the files this module writes are
    removed. Hold ``lock(workdir)`` around it. With several processes, call
    ``prepare_on_all_hosts`` instead.
    """
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise RunError(f"workdir {workdir} exists and is not a directory")
    resumable = False
    if workdir.is_dir() and not overwrite:
        if (workdir / CONFIG).exists():
            resumable = is_run(workdir)
            changed = _differences(read_config(workdir), config)
            if changed and resumable:
                raise RunError(f"workdir {workdir} holds a run with another config ({changed}); "
                               "pass --overwrite to replace it, or choose another --workdir")
            if resumable and (workdir / BEST).exists():
                _read_best(workdir)  # a run whose files point outside it is refused up front
        elif any(p.name != LOCK for p in workdir.iterdir()):
            raise RunError(f"workdir {workdir} is not empty and holds no run; "
                           "pass --overwrite to write into it anyway, or choose another --workdir")
    if resumable:
        return resumable
    try:
        for name in (CONFIG, VOCAB, BEST, HISTORY_JSON, HISTORY_CSV, PLOT):
            (workdir / name).unlink(missing_ok=True)
        shutil.rmtree(workdir / CHECKPOINTS, ignore_errors=True)
        shutil.rmtree(workdir / TRAIN_STATE, ignore_errors=True)
        workdir.mkdir(parents=True, exist_ok=True)
        write_json(workdir / CONFIG, config.to_dict())
    except OSError as error:
        raise unwritable(workdir, error) from error
    return resumable


def is_run(workdir: str | Path) -> bool:
    """Whether ``workdir`` holds a run: a checkpoint was written (a resumable or a best one)."""
    workdir = Path(workdir)
    state = workdir / TRAIN_STATE
    return (workdir / BEST).exists() or (state.is_dir() and any(state.iterdir()))


@contextlib.contextmanager
def lock(workdir: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``workdir`` (created if needed) while the block runs.

    A second ``train`` on the same work directory is refused rather than allowed to
    interleave its writes. The lock is an ``flock`` on ``workdir/.lock``: the kernel
    releases it when the process dies, even by SIGKILL, so no stale lock survives.
    """
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise RunError(f"workdir {workdir} exists and is not a directory")
    if jax.process_index() != 0:  # multi-host: process 0 holds the lock for the whole run
        yield workdir
        return
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        handle = open(workdir / LOCK, "a+", encoding="utf-8")
    except OSError as error:
        raise unwritable(workdir, error) from error
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunError(f"workdir {workdir} is in use by another `stackrnn train` ({holder}); "
                           "wait for it to finish or choose another --workdir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        try:
            yield workdir
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def unwritable(path: str | Path, error: OSError) -> RunError:
    """A RunError that says why ``path`` could not be written and what to do."""
    reason = error.strerror or str(error)
    if error.errno == errno.ENOSPC:
        return RunError(f"{path}: no space left on the device while writing; the files written "
                        "before are intact; free some space and run the same command to resume")
    return RunError(f"{path}: cannot write there ({reason}); choose a writable --workdir")


def read_config(workdir: str | Path) -> TrainConfig:
    """The config saved in ``workdir``; RunError if there is no readable one."""
    path = Path(workdir) / CONFIG
    if not path.is_file():
        raise RunError(f"no trained run in {workdir} (missing {CONFIG}); train one with "
                       f"`stackrnn train --workdir {workdir}`")
    try:
        return TrainConfig.from_dict(json.loads(path.read_text(encoding="utf-8")), str(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as error:
        raise RunError(f"{path}: unreadable ({error})") from error
    except ValueError as error:
        raise RunError(str(error)) from error


def read_vocab(workdir: str | Path):
    """The saved ``Vocabulary``; RunError if it is missing or unreadable."""
    from stackrnn_jax.data import Vocabulary

    path = Path(workdir) / VOCAB
    try:
        return Vocabulary.load(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError,
            ValueError) as error:
        raise RunError(f"{path}: no readable vocabulary ({error})") from error


def save_best(workdir: str | Path, params, info: dict[str, Any]) -> None:
    """Checkpoint ``params`` (an nnx.State) as the best epoch ``info["epoch"]``, atomically."""
    import orbax.checkpoint as ocp

    workdir = Path(workdir)
    name = f"{CHECKPOINTS}/epoch_{info['epoch']}"
    target = (workdir / name).absolute()
    # Read (and check) the previous best first: its folder is removed below.
    previous = _read_best(workdir) if (workdir / BEST).exists() else None
    shutil.rmtree(target, ignore_errors=True)  # a leftover of an interrupted earlier run
    with ocp.StandardCheckpointer() as checkpointer:  # writes aside, renames when complete
        checkpointer.save(target, params)
        checkpointer.wait_until_finished()
    if jax.process_index() != 0:  # the orbax save above is collective; the rest is process 0's
        return
    write_json(workdir / BEST, {**info, "checkpoint": name})
    if previous and previous["checkpoint"] != name:
        shutil.rmtree(workdir / previous["checkpoint"], ignore_errors=True)


def restore_best(workdir: str | Path, abstract_params):
    """``(params, info)`` of the best epoch; ``abstract_params`` gives the tree and shapes."""
    import orbax.checkpoint as ocp

    info = _read_best(workdir)
    path = (Path(workdir) / info["checkpoint"]).absolute()
    if not path.is_dir():
        raise RunError(f"{path}: unreadable checkpoint (missing); train anew with --overwrite")
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            return checkpointer.restore(path, abstract_params), info
    except Exception as error:  # noqa: BLE001 - orbax/tensorstore raise bare Exceptions too
        cause: BaseException = error
        while cause.__cause__ is not None:  # tensorstore's own error says what is wrong
            cause = cause.__cause__
        raise RunError(f"{path}: damaged checkpoint ({first_line(cause)}); restore it from a "
                       "copy, or train anew with --overwrite") from error


def write_history(workdir: str | Path, history: dict[str, Any]) -> None:
    """``history.json`` (everything) and ``history.csv`` (one row per epoch)."""
    workdir = Path(workdir)
    write_json(workdir / HISTORY_JSON, _finite_or_none(history))
    rows = history["epochs"]
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    write_text(workdir / HISTORY_CSV, out.getvalue())


def write_json(path: Path, value) -> None:
    """Strict JSON (no bare NaN/Infinity, which other JSON readers reject), atomically."""
    write_text(path, json.dumps(value, indent=2, allow_nan=False) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a reader sees the old file or the new one."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: written aside, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                     delete=False) as file:
        try:
            file.write(data)
        except BaseException:
            os.unlink(file.name)
            raise
    os.replace(file.name, path)


def _read_best(workdir: str | Path) -> dict[str, Any]:
    """best.json; its checkpoint path must lie under ``workdir/checkpoints`` (it is read,
    and replaced by ``save_best``: a hand-edited ``../victim`` must not be removed)."""
    path = Path(workdir) / BEST
    if not path.is_file():
        raise RunError(f"no best checkpoint in {workdir} (missing {BEST}): "
                       "did training finish an epoch?")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(info.get("checkpoint"), str):
            raise ValueError("no checkpoint entry")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as error:
        raise RunError(f"{path}: unreadable ({error})") from error
    inside = (Path(workdir) / CHECKPOINTS).resolve()
    if inside not in (Path(workdir) / info["checkpoint"]).resolve().parents:
        raise RunError(f"{path}: its checkpoint {info['checkpoint']!r} is outside {inside}; the "
                       "file was edited or damaged: fix it, or train anew with --overwrite")
    return info


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (for one-line reports), at most 400 characters."""
    text = str(error).strip()
    return text.splitlines()[0][:400] if text else ""


def _finite_or_none(value):
    """``value`` with every NaN/Inf float replaced by None (JSON null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def _differences(old: TrainConfig, new: TrainConfig) -> str:
    """``"cell: 'simple' -> 'lstm', ..."`` for the fields that differ, execution fields aside."""
    before, after = old.to_dict(), new.to_dict()
    return ", ".join(f"{name}: {before[name]!r} -> {after[name]!r}" for name in before
                     if name not in EXECUTION_FIELDS and before[name] != after[name])
