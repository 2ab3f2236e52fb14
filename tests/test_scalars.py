"""``--tensorboard``: the scalars read back from the event files as TensorBoard shows them,
and a crashed-then-resumed run that shows every step once, with the uninterrupted values."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

pytest.importorskip("tensorboardX", reason="the tensorboard extra (tensorboardX) is not installed")
from tensorboardX.proto import event_pb2  # noqa: E402

from stackrnn_jax import run_dir  # noqa: E402
from stackrnn_jax.cli import build_parser  # noqa: E402
from stackrnn_jax.train import fit, learning_rate  # noqa: E402
from tests.helpers import TRAIN_CONFIG, inject, synthetic_split  # noqa: E402

# 13 steps per epoch (200 reviews, batch 16, the last batch of 8); a sync every 2 batches
# and at the epoch's end, a checkpoint every 5 steps.
LOGGED = TRAIN_CONFIG.replace(epochs=2, log_every=2, checkpoint_every=5, schedule="cosine",
                        warmup_steps=3)
TRAIN_TAGS = ("train/loss", "train/accuracy", "train/grad_norm", "train/learning_rate")


def _records(path):
    """The events of one file (TFRecord framing: length, its CRC, the data, its CRC)."""
    data, offset = path.read_bytes(), 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        yield event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
        offset += 12 + length + 4


def read_scalars(logdir, *, purge: bool = True) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` in write order. With ``purge``, as TensorBoard
    reads them: a session start at step s hides every earlier event at a step >= s."""
    files = [list(_records(path)) for path in logdir.glob("events.out.tfevents.*")]
    events = []
    for file in sorted(files, key=lambda records: records[0].wall_time):
        for event in file:
            if purge and event.session_log.status == event_pb2.SessionLog.START:
                events = [e for e in events if e[1] < event.step]
            for value in event.summary.value:
                events.append((value.tag, event.step, value.simple_value))
    scalars: dict[str, list[tuple[int, float]]] = {}
    for tag, step, value in events:
        scalars.setdefault(tag, []).append((step, value))
    return scalars


def run(workdir, logdir):
    config = LOGGED.replace(tensorboard=str(logdir))
    run_dir.prepare(workdir, config)
    return fit(config, synthetic_split(200, 0), synthetic_split(64, 1), workdir,
               progress=False, out=open(os.devnull, "w"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("scalars")
    return run(root / "run", root / "tb"), read_scalars(root / "tb")


def test_scalars_at_every_sync_and_epoch(uninterrupted):
    history, scalars = uninterrupted
    # Every 2 batches of an epoch, at its end (13, 26) and at each checkpoint (5, 10, ...).
    syncs = [2, 4, 5, 6, 8, 10, 12, 13, 15, 17, 19, 20, 21, 23, 25, 26]
    for tag in (*TRAIN_TAGS, "train/step_time_s"):
        assert [step for step, _ in scalars[tag]] == syncs, tag
    assert [step for step, _ in scalars["val/loss"]] == [13, 26]
    rows = history["epochs"]
    np.testing.assert_allclose([v for _, v in scalars["val/loss"]],
                               [row["val_loss"] for row in rows], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in scalars["val/accuracy"]],
                               [row["val_accuracy"] for row in rows], rtol=1e-6)
    # Per-interval train means, weighted by the examples in each interval, give the epoch's
    # (16 per step, 8 in each epoch's last).
    examples = {step: 8 if step % 13 == 0 else 16 for step in range(1, 27)}
    for epoch, row in enumerate(rows):
        points = [(s, v) for s, v in scalars["train/loss"] if 13 * epoch < s <= 13 * epoch + 13]
        starts = [13 * epoch] + [s for s, _ in points[:-1]]
        weights = [sum(examples[t] for t in range(a + 1, s + 1))
                   for a, (s, _) in zip(starts, points)]
        assert abs(np.average([v for _, v in points], weights=weights) - row["loss"]) < 1e-5
    schedule = learning_rate(LOGGED, 26)
    np.testing.assert_allclose([v for _, v in scalars["train/learning_rate"]],
                               [float(schedule(step - 1)) for step in syncs], rtol=1e-6)
    assert all(np.isfinite(v) and v > 0 for _, v in scalars["train/grad_norm"])
    assert all(v > 0 for _, v in scalars["train/step_time_s"])


def test_crash_and_resume_shows_each_step_once(tmp_path, monkeypatch, uninterrupted):
    """Crash before step 18 (logged up to 17, checkpointed at 15), then resume at 15."""
    def crash(batch):
        raise RuntimeError("crash (test)")

    inject(monkeypatch, 2, 5, crash)
    with pytest.raises(RuntimeError, match="crash"):
        run(tmp_path / "run", tmp_path / "tb")
    monkeypatch.undo()
    run(tmp_path / "run", tmp_path / "tb")
    raw = read_scalars(tmp_path / "tb", purge=False)
    assert [s for s, _ in raw["train/loss"]].count(17) == 2    # written twice, purged once
    shown = read_scalars(tmp_path / "tb")
    expected = uninterrupted[1]
    for tag in (*TRAIN_TAGS, "val/loss", "val/accuracy"):
        assert shown[tag] == expected[tag], tag   # bit-identical resume: the same values
    assert [s for s, _ in shown["train/step_time_s"]] == [s for s, _ in expected[TRAIN_TAGS[0]]]


def test_cli_flag_sets_the_config_field():
    args = build_parser().parse_args(["train", "--workdir", "w", "--tensorboard", "tb"])
    assert args.tensorboard == "tb"
    assert "tensorboard" in run_dir.EXECUTION_FIELDS   # may change when a run resumes


def test_without_tensorboardx_the_flag_is_one_clear_error(tmp_path, monkeypatch):
    """A ValueError: the CLI prints it as one ``error:`` line (``cli.main``)."""
    import sys

    monkeypatch.setitem(sys.modules, "tensorboardX", None)   # import fails as if absent
    with pytest.raises(ValueError, match=r"needs tensorboardX: pip install"):
        run(tmp_path / "run", tmp_path / "tb")
