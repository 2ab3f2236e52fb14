"""Never lose a run: checkpoints, exact resume after SIGKILL/SIGTERM, corrupt checkpoints,
NaN/Inf, determinism, and the work directory's faults (lock, unwritable, disk full)."""

import errno
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from stackrnn_jax import run_dir, train
from stackrnn_jax.checkpoints import CheckpointError, TrainCheckpoints
from stackrnn_jax.interrupts import TrainingInterrupted
from stackrnn_jax.train import NonFiniteError
from tests.helpers import METRICS, RESUMABLE, final_state, inject, run_fit


def assert_same_run(history_a, history_b, workdir_a, workdir_b):
    for row_a, row_b in zip(history_a["epochs"], history_b["epochs"], strict=True):
        assert {k: row_a[k] for k in METRICS} == {k: row_b[k] for k in METRICS}
    assert history_a["best_epoch"] == history_b["best_epoch"]
    state_a, position_a = final_state(workdir_a)
    state_b, position_b = final_state(workdir_b)
    assert position_a["step"] == position_b["step"]
    jax.tree.map(np.testing.assert_array_equal, state_a, state_b)  # bit for bit


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    return workdir, run_fit(workdir)


KILLED_CHILD = """
import os, signal, sys
sys.path.insert(0, {root!r})
from stackrnn_jax import train
from tests import helpers

def die(batch):
    os.kill(os.getpid(), signal.SIGKILL)

original = train.batches
def patched(split, batch_size, **options):
    iterator = original(split, batch_size, **options)
    if options.get("shuffle") and options.get("epoch") == 2:
        return (die(b) if i == 7 else b for i, b in enumerate(iterator, start=1))
    return iterator
train.batches = patched
helpers.run_fit({workdir!r})
"""


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path, uninterrupted):
    workdir = tmp_path / "killed"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = KILLED_CHILD.format(root=root, workdir=str(workdir))
    child = subprocess.run([sys.executable, "-c", code],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    # Killed at epoch 2, batch 7 (global step 20): the newest step checkpoint is step 18.
    steps = TrainCheckpoints(workdir, keep=3, identity=run_dir.identity(RESUMABLE)).steps()
    assert steps[-1] == 18 and 13 in steps
    history = json.loads((workdir / run_dir.HISTORY_JSON).read_text())
    assert [row["epoch"] for row in history["epochs"]] == [1]
    resumed = run_fit(workdir)
    assert_same_run(uninterrupted[1], resumed, uninterrupted[0], workdir)


def test_sigterm_saves_a_checkpoint_and_exits_then_resumes_exactly(tmp_path, monkeypatch,
                                                                  uninterrupted):
    workdir = tmp_path / "terminated"
    inject(monkeypatch, 2, 5, lambda batch: (os.kill(os.getpid(), signal.SIGTERM), batch)[1])
    with pytest.raises(TrainingInterrupted, match="checkpoint saved") as stopped:
        run_fit(workdir)
    assert stopped.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    assert final_state(workdir)[1]["step"] == 13 + 5  # saved right after the step in flight
    monkeypatch.undo()
    assert_same_run(uninterrupted[1], run_fit(workdir), uninterrupted[0], workdir)


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, uninterrupted):
    workdir = tmp_path / "corrupt"
    run_fit(workdir)
    checkpoints = TrainCheckpoints(workdir, keep=3, identity=run_dir.identity(RESUMABLE))
    newest = checkpoints.directory / str(checkpoints.steps()[-1])
    checkpoints.close()
    for path in (newest / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # truncated
    with pytest.warns(UserWarning, match="unreadable.*falling back"):
        _, position = final_state(workdir)
    assert position["step"] == 36 and position["epoch"] == 3  # step 39's predecessor


def test_checkpoint_of_another_config_is_refused(tmp_path):
    workdir = tmp_path / "other"
    run_fit(workdir, RESUMABLE.replace(epochs=1))
    with pytest.raises(CheckpointError, match="another config.*epochs: 1 -> 3"):
        final_state(workdir, RESUMABLE)
    with pytest.raises(run_dir.RunError, match="another config"):
        run_dir.prepare(workdir, RESUMABLE.replace(units=4))


def test_checkpoint_from_before_a_field_existed_resumes_at_its_default(tmp_path, monkeypatch):
    """Checkpoints record the config fields of their time; a field added since (val_split)
    counts as its default there, which is what those runs did."""
    workdir = tmp_path / "older"
    identity = run_dir.identity
    monkeypatch.setattr(run_dir, "identity", lambda config: {
        k: v for k, v in identity(config).items() if k != "val_split"})
    run_fit(workdir, RESUMABLE.replace(epochs=1))
    monkeypatch.undo()
    assert final_state(workdir, RESUMABLE.replace(epochs=1))[1]["epoch"] == 2
    with pytest.raises(CheckpointError, match="another config.*val_split: 'random' -> 'movie'"):
        final_state(workdir, RESUMABLE.replace(epochs=1, val_split="movie"))


def test_finished_run_is_not_retrained(tmp_path, monkeypatch, uninterrupted):
    workdir, history = uninterrupted
    monkeypatch.setattr(train, "train_epoch", lambda *args, **kw: pytest.fail("a step ran"))
    again = run_fit(workdir)
    assert again["epochs"] == history["epochs"]


def test_same_seed_same_config_is_deterministic(tmp_path, uninterrupted):
    workdir = tmp_path / "again"
    assert_same_run(uninterrupted[1], run_fit(workdir, resume=False), uninterrupted[0], workdir)


def poison(batch):
    return {**batch, "labels": np.full_like(batch["labels"], np.nan)}


def test_nan_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    workdir = tmp_path / "nan"
    inject(monkeypatch, 2, 2, poison)  # global step 15
    with pytest.raises(NonFiniteError, match=r"NaN/Inf at step 15 \(epoch 2\)"):
        run_fit(workdir)
    arrays, position = final_state(workdir)
    assert position["step"] == 13  # the epoch-1 checkpoint; nothing after the bad step
    assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(arrays) if a.dtype.kind == "f")


def test_nan_skip_policy_skips_the_step_and_finishes(tmp_path, monkeypatch):
    workdir = tmp_path / "skip"
    inject(monkeypatch, 2, 2, poison)
    history = run_fit(workdir, RESUMABLE.replace(on_nonfinite="skip"))
    assert [row["skipped_steps"] for row in history["epochs"]] == [0, 1, 0]
    assert all(np.isfinite(row["loss"]) for row in history["epochs"])
    arrays, _ = final_state(workdir, RESUMABLE.replace(on_nonfinite="skip"))
    assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(arrays) if a.dtype.kind == "f")


def test_second_train_on_a_locked_workdir_is_refused(tmp_path):
    workdir = tmp_path / "locked"
    run_fit(workdir, RESUMABLE.replace(epochs=1))
    files = lambda: {p: p.read_bytes() for p in workdir.rglob("*")  # noqa: E731
                     if p.is_file() and p.name != run_dir.LOCK}
    before = files()
    with run_dir.lock(workdir):
        in_use = r"in use by another `stackrnn train` \(pid \d+\)"
        with pytest.raises(run_dir.RunError, match=in_use):
            train.train_and_evaluate(RESUMABLE, workdir, data=tmp_path / "never-read")
    assert files() == before


def test_unwritable_workdir_is_one_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(run_dir.RunError, match="cannot write there"):
        train.train_and_evaluate(RESUMABLE, blocker / "run", data=tmp_path / "never-read")


def test_disk_full_loses_nothing_and_the_run_resumes(tmp_path, monkeypatch, uninterrupted):
    workdir = tmp_path / "full"
    real_write_text, calls = run_dir.write_text, []

    def full_disk(path, text):
        calls.append(path.name)
        if path.name == run_dir.HISTORY_JSON and calls.count(run_dir.HISTORY_JSON) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write_text(path, text)

    monkeypatch.setattr(run_dir, "write_text", full_disk)
    with pytest.raises(run_dir.RunError, match="no space left.*resume"):
        run_fit(workdir)
    monkeypatch.undo()
    saved = json.loads((workdir / run_dir.HISTORY_JSON).read_text())  # the old file, whole
    assert [row["epoch"] for row in saved["epochs"]] == [1]
    assert not [p for p in workdir.iterdir() if p.name.endswith(".tmp")]
    assert_same_run(uninterrupted[1], run_fit(workdir), uninterrupted[0], workdir)


DATA_PARALLEL_CHILD = """
import json, os, sys
sys.path.insert(0, {root!r})
import jax
from tests import helpers
history = helpers.run_fit({workdir!r}, helpers.RESUMABLE.replace(dropout=0.0, epochs=2,
                              batch_size={batch_size}), resume=False)
from flax import nnx
from stackrnn_jax import run_dir, train
model = train.create_model(helpers.RESUMABLE)
# unsharded, as predict.py
params, _ = run_dir.restore_best({workdir!r}, nnx.state(model, nnx.Param))
nnx.update(model, params)
graphdef, state = nnx.split(model)
best = train.evaluate(train.make_eval_step(graphdef, helpers.RESUMABLE), state,
                      helpers.synthetic_split(64, 1), {batch_size})
print(json.dumps({{"devices": jax.device_count(), "best": [best["loss"], best["accuracy"]],
                  "losses": [[r[k] for k in helpers.METRICS] for r in history["epochs"]]}}))
"""


def run_child(tmp_path, name, devices, batch_size=16):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_PLATFORMS": "cpu"}
    code = DATA_PARALLEL_CHILD.format(root=root, workdir=str(tmp_path / name),
                                      batch_size=batch_size)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300)


def test_eight_devices_train_like_one_for_the_same_global_batch(tmp_path):
    one, eight = (run_child(tmp_path, f"d{n}", n) for n in (1, 8))
    assert one.returncode == 0 and eight.returncode == 0, (one.stderr + eight.stderr)[-2000:]
    one, eight = (json.loads(r.stdout.strip().splitlines()[-1]) for r in (one, eight))
    assert (one["devices"], eight["devices"]) == (1, 8)
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(eight["best"], one["best"], rtol=1e-5, atol=1e-6)


def test_global_batch_that_does_not_divide_over_the_devices_is_refused(tmp_path):
    child = run_child(tmp_path, "uneven", 8, batch_size=12)
    assert child.returncode != 0
    assert "batch_size 12 does not divide evenly over the 8 devices" in child.stderr


TWO_PROCESS_CHILD = """
import json, os, sys
sys.path.insert(0, {root!r})
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
from stackrnn_jax import distributed, run_dir, train
distributed.initialize(coordinator="localhost:{port}", num_processes=2, process_id={process})
from tests import helpers
config = helpers.RESUMABLE.replace(dropout=0.0, epochs=2)
with run_dir.lock({workdir!r}):
    run_dir.prepare_on_all_hosts({workdir!r}, config)
    history = train.fit(config, helpers.synthetic_split(200, 0),
                        helpers.synthetic_split(64, 1),
                        {workdir!r}, progress=False, resume=False)
print(json.dumps({{"processes": jax.process_count(), "devices": jax.device_count(),
                  "losses": [[r[k] for k in helpers.METRICS] for r in history["epochs"]]}}))
"""


@pytest.mark.slow  # two processes and a third for the reference: ~1-2 min
def test_two_processes_train_like_one(tmp_path):
    """Multi-host on one machine: two CPU processes joined by jax.distributed (gloo)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    children = [subprocess.Popen(
        [sys.executable, "-c", TWO_PROCESS_CHILD.format(root=root, port=port, process=p,
                                                        workdir=str(tmp_path / "shared"))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for p in (0, 1)]
    outputs = [child.communicate(timeout=300) for child in children]
    for child, (_, err) in zip(children, outputs):
        assert child.returncode == 0, err[-2000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert [(r["processes"], r["devices"]) for r in results] == [(2, 2), (2, 2)]
    single = run_child(tmp_path, "single", 1)
    single = json.loads(single.stdout.strip().splitlines()[-1])
    for result in results:
        np.testing.assert_allclose(result["losses"], single["losses"], rtol=1e-5, atol=1e-6)
    assert "Epoch 1/2" in outputs[0][0] and "Epoch 1/2" not in outputs[1][0]  # process 0 logs
    assert (tmp_path / "shared" / run_dir.PLOT).is_file()
