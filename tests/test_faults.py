"""Faults and bad inputs a hostile but realistic user tries (issue 16), and the fault table.

Each test injects one fault or feeds one bad input and checks the promise of the README's
"Reliability" section: the command ends with one ``error:`` (or ``stopped:``) line on
stderr, no traceback, and no file of any run is harmed. ``CASES`` lists every such test of
the suite (these and the older ones elsewhere); ``scripts/fault_table.py`` runs them and
writes the table the README quotes.
"""

import dataclasses
import io
import json
import os
import shutil
import signal
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stackrnn_jax import init_params, run_dir, stacked_rnn, train
from stackrnn_jax.cli import main
from stackrnn_jax.config import TrainConfig
from tests.helpers import BAD_INPUTS, PER_CLASS, TINY, fails_with_one_line, write_archive

# tfds and the encoded-data cache live under a temporary HOME (conftest.private_caches).
pytestmark = pytest.mark.usefixtures("private_caches")

RUN = [*TINY, "--epochs", "2"]  # the last --epochs wins


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the fault table: ``kind`` is "fault" (injected) or "input" (bad input)."""

    kind: str
    what: str
    test: str  # pytest node id


def _cases(kind, module, rows):
    return [Case(kind, what, f"tests/{module}::{test}") for what, test in rows]


NON_FINITE = [("--lr", "nan"), ("--lr", "inf"), ("--clip-norm", "nan"), ("--dropout", "nan"),
              ("--val-fraction", "inf")]
CASES = [
    *_cases("fault", "test_faults.py", [
        ("best checkpoint's array data truncated: predict, evaluate",
         "test_damaged_best_checkpoint_is_one_line"),
        ("newest train_state checkpoint's array data truncated: resume",
         "test_damaged_train_state_array_data_falls_back_to_the_previous_one"),
        ("XLA RESOURCE_EXHAUSTED during training", "test_device_out_of_memory_is_one_line"),
        ("failed start (bad --data), then a corrected command",
         "test_failed_start_does_not_block_the_corrected_command"),
        ("SIGTERM during start-up", "test_sigterm_during_start_up_is_one_line"),
        ("train again on a finished run (another --strategy)",
         "test_finished_run_is_read_only_to_train"),
        ("resume with another data source (another vocabulary)",
         "test_resume_on_other_data_is_refused"),
        ("best.json names ../victim, an absolute path, or the run itself",
         "test_paths_read_from_run_files_stay_inside_the_run"),
    ]),
    *_cases("fault", "test_resume.py", [
        ("SIGKILL mid-epoch, then resume", "test_sigkill_mid_epoch_then_resume_is_bit_identical"),
        ("SIGTERM mid-epoch, then resume",
         "test_sigterm_saves_a_checkpoint_and_exits_then_resumes_exactly"),
        ("newest checkpoint truncated",
         "test_corrupt_newest_checkpoint_falls_back_to_the_previous_one"),
        ("checkpoint of another config", "test_checkpoint_of_another_config_is_refused"),
        ("NaN loss mid-run", "test_nan_stops_naming_the_step_and_keeps_the_last_good_checkpoint"),
        ("second train on a locked work directory",
         "test_second_train_on_a_locked_workdir_is_refused"),
        ("unwritable work directory", "test_unwritable_workdir_is_one_clear_error"),
        ("disk full (ENOSPC) mid-run", "test_disk_full_loses_nothing_and_the_run_resumes"),
    ]),
    *_cases("fault", "test_cli.py", [
        ("damaged run files (no best.json, missing checkpoint, bad config.json)",
         "test_broken_run_is_one_line"),
        ("SIGTERM mid-epoch through the CLI, then resume",
         "test_sigterm_checkpoints_and_the_same_command_resumes"),
    ]),
    *_cases("input", "test_faults.py", [
        ("--batch-size above the training set",
         "test_batch_size_above_the_training_set_is_refused"),
        ("--units 100000000 (memory estimate before allocating)",
         "test_absurd_model_is_refused_before_allocating"),
        ("a model whose compiled step exceeds the free memory",
         "test_compiled_step_above_free_memory_is_refused"),
        *[(f"{flag} {value}", f"test_non_finite_float_option_is_refused[{flag}-{value}]")
          for flag, value in NON_FINITE],
        ("config file with nan", "test_non_finite_config_file_is_refused"),
        ("all reviews empty", "test_all_empty_reviews_are_refused"),
        ("a few empty reviews among real ones (a warning with their count)",
         "test_a_few_empty_reviews_are_counted_in_a_warning"),
        ("predict a text with no known word", "test_text_with_no_known_word_is_marked"),
        ("lengths out of range under jax.jit", "test_bad_lengths_under_jit_are_clamped_or_checked"),
    ]),
    *_cases("input", "test_cli.py", [
        *[(" ".join(argv), f"test_bad_input_is_one_line[argv{index}-{status}-{message}]")
          for index, (argv, status, message) in enumerate(BAD_INPUTS)],
        ("non-UTF-8, blank and NUL predict input", "test_non_text_and_empty_predict_input"),
        ("work directory of another config",
         "test_workdir_with_another_config_is_refused_unless_overwrite"),
        ("unreadable archive", "test_unreadable_archive_is_one_data_error_line"),
        ("multi-host flags without a coordinator",
         "test_multi_host_flags_without_a_coordinator_are_one_line"),
    ]),
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """``(archive, workdir)`` of one tiny finished CLI run (2 epochs); copy it before harming it."""
    root = tmp_path_factory.mktemp("faults")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("HOME", str(root / "home"))
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    archive = write_archive(root / "aclImdb.tar.gz")
    try:
        assert main(["train", "--workdir", str(root / "run"), "--data", str(archive), *RUN]) == 0
    finally:
        monkeypatch.undo()
    return archive, root / "run"


@pytest.fixture
def data(finished, monkeypatch):
    """The finished run's archive, with HOME where tfds prepared and encoded it already."""
    monkeypatch.setenv("HOME", str(finished[0].parent / "home"))
    return finished[0]


def copy_run(finished, tmp_path):
    shutil.copytree(finished[1], tmp_path / "run")
    return tmp_path / "run"


def snapshot(*folders):
    """Every file under ``folders`` (the lock aside) with its bytes."""
    return {p: p.read_bytes() for folder in folders for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != run_dir.LOCK}


def truncate_array_data(checkpoint, pattern="**/d/*"):
    """Cut the array-data files of an orbax checkpoint: its OCDBT data files (``d/``, at the
    top once orbax merged the processes' databases, and ``ocdbt.process_N/d/``); the
    metadata stays intact."""
    files = [p for p in checkpoint.glob(pattern) if p.is_file()]
    assert files, f"no array data under {checkpoint}"
    for path in files:
        path.write_bytes(path.read_bytes()[:10])


# 1. Damaged checkpoint data.

def test_damaged_best_checkpoint_is_one_line(finished, data, tmp_path, capfd, monkeypatch):
    import gc
    import time

    archive = data
    workdir = copy_run(finished, tmp_path)
    best = workdir / json.loads((workdir / run_dir.BEST).read_text())["checkpoint"]
    truncate_array_data(best, "ocdbt.process_0/d/*")  # the array values, not the b-tree root
    unraisable = []  # what Python would print as "Exception ignored in ..." (at exit, say)
    monkeypatch.setattr(sys, "unraisablehook", lambda u: unraisable.append(repr(u.exc_value)))
    for argv in (["predict", "--workdir", str(workdir), "good film"],
                 ["evaluate", "--workdir", str(workdir), "--data", str(archive)]):
        message = fails_with_one_line(capfd, argv)
        assert f"{best}: damaged checkpoint (" in message and "--overwrite" in message
    for _ in range(3):  # the failed read's other futures finish in orbax's threads
        time.sleep(0.2)
        gc.collect()
    assert unraisable == []


def test_damaged_train_state_array_data_falls_back_to_the_previous_one(finished, tmp_path):
    from tests.helpers import final_state

    workdir = copy_run(finished, tmp_path)  # checkpoints at steps 21 and 42 (the epoch ends)
    config = run_dir.read_config(workdir)
    truncate_array_data(workdir / run_dir.TRAIN_STATE / "42" / "state")
    with pytest.warns(UserWarning, match="step 42 .* unreadable.*falling back"):
        _, position = final_state(workdir, config)
    assert position["step"] == 21 and position["epoch"] == 2


# 2. Memory.

def test_batch_size_above_the_training_set_is_refused(data, tmp_path, capfd):
    archive = data
    message = fails_with_one_line(capfd, ["train", "--workdir", str(tmp_path / "run"),
                                          "--data", str(archive), *RUN, "--batch-size", "10000000"])
    training = round(2 * PER_CLASS * 0.8)
    assert f"batch_size 10000000 is larger than the {training} training reviews" in message


def test_absurd_model_is_refused_before_allocating(data, tmp_path, capfd, monkeypatch):
    archive = data
    monkeypatch.setattr(train, "create_model", lambda *a, **k: pytest.fail("allocated the model"))
    message = fails_with_one_line(capfd, ["train", "--workdir", str(tmp_path / "run"),
                                          "--data", str(archive), *RUN, "--units", "100000000"])
    assert "needs at least" in message and "available" in message and "--units" in message


def test_compiled_step_above_free_memory_is_refused(data, tmp_path, capfd, monkeypatch):
    from stackrnn_jax import memory

    archive = data
    monkeypatch.setattr(memory, "estimate_bytes", lambda config: 0)  # the estimate passes
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 1000)
    message = fails_with_one_line(capfd, ["train", "--workdir", str(tmp_path / "run"),
                                          "--data", str(archive), *RUN])
    assert "the compiled train step needs" in message and "available" in message
    assert not (tmp_path / "run" / run_dir.TRAIN_STATE).exists() or not any(
        (tmp_path / "run" / run_dir.TRAIN_STATE).iterdir())  # refused before the first step


def test_device_out_of_memory_is_one_line(data, tmp_path, capfd, monkeypatch):
    archive = data

    def exhausted(*args, **kwargs):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to "
                                         "allocate 40000000000 bytes.\nBufferAssignment ...")

    monkeypatch.setattr(train, "_compiled_train_step", exhausted)  # XLA's compile can run out too
    message = fails_with_one_line(capfd, ["train", "--workdir", str(tmp_path / "run"),
                                          "--data", str(archive), *RUN])
    assert message.startswith("error: out of memory") and "--batch-size" in message


def test_memory_estimate_grows_with_the_model():
    from flax import nnx

    from stackrnn_jax import memory

    for config in (TrainConfig(num_words=50), TrainConfig(num_words=50, cell="gru", layers=3,
                                                           bidirectional=True)):
        model = train.create_model(config)
        counted = sum(a.size for a in jax.tree.leaves(nnx.state(model, nnx.Param)))
        assert memory.parameter_count(config) == counted

    small = memory.estimate_bytes(TrainConfig())
    assert small > 4 * 4 * 10_000 * 32  # at least the embedding, its gradient and Adam moments
    assert memory.estimate_bytes(TrainConfig(units=1024)) > 10 * small  # 256x the recurrent weights
    assert memory.estimate_bytes(TrainConfig(batch_size=4096)) > small
    assert memory.available_bytes() > 0


# 3. Non-finite floats.

@pytest.mark.parametrize("flag, value", NON_FINITE)
def test_non_finite_float_option_is_refused(tmp_path, capfd, flag, value):
    message = fails_with_one_line(capfd, ["train", "--workdir", str(tmp_path / "run"), flag, value])
    assert "expected a finite" in message or "expected a rate" in message or "fraction" in message
    assert value in message
    assert not (tmp_path / "run").exists()


def test_non_finite_config_file_is_refused(tmp_path, capfd):
    config = tmp_path / "run.toml"
    config.write_text("learning_rate = nan\n")
    message = fails_with_one_line(capfd, ["train", "--workdir", str(tmp_path / "run"),
                                          "--config", str(config)])
    assert "learning_rate: expected a finite number, got nan" in message
    for name in ("learning_rate", "clip_norm"):
        with pytest.raises(ValueError, match=f"{name}: expected a finite number"):
            TrainConfig(**{name: float("inf")})


def test_run_files_are_strict_json(tmp_path):
    with pytest.raises(ValueError):
        run_dir.write_json(tmp_path / "x.json", {"loss": float("nan")})
    assert not list(tmp_path.iterdir())  # nothing half written
    history = {"epochs": [{"epoch": 1, "loss": float("nan"), "val_loss": float("inf")}]}
    run_dir.write_history(tmp_path, history)
    saved = json.loads((tmp_path / run_dir.HISTORY_JSON).read_text(),
                       parse_constant=lambda name: pytest.fail(f"bare {name}"))
    assert saved["epochs"][0]["loss"] is None and saved["epochs"][0]["val_loss"] is None


# 4. A failed start is no run; 'also': tfds' progress bars obey --no-progress.

def test_failed_start_does_not_block_the_corrected_command(finished, tmp_path, capfd):
    archive, _ = finished
    workdir = tmp_path / "run"
    fails_with_one_line(capfd, ["train", "--workdir", str(workdir), "--data",
                                str(tmp_path / "typo.tar.gz"), *RUN, "--epochs", "1"])
    assert main(["train", "--workdir", str(workdir), "--data", str(archive), *RUN,
                 "--epochs", "1", "--maxlen", "12"]) == 0
    captured = capfd.readouterr()
    assert captured.err == ""  # --no-progress: no tfds bars either (the data is prepared here)
    assert "Epoch 1/1" in captured.out
    assert json.loads((workdir / run_dir.CONFIG).read_text())["maxlen"] == 12


# 5. SIGTERM during start-up.

def test_sigterm_during_start_up_is_one_line(finished, tmp_path):
    """A real process, signalled once its work directory is prepared: it is then importing,
    preparing the data (a fresh HOME: tfds builds it) or compiling."""
    import subprocess
    import time

    archive, _ = finished
    workdir = tmp_path / "run"
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    child = subprocess.Popen([sys.executable, "-m", "stackrnn_jax", "train", "--workdir",
                              str(workdir), "--data", str(archive), *RUN],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not (workdir / run_dir.CONFIG).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 128 + signal.SIGTERM, err
    assert err == ("stopped: interrupted (signal 15) outside the training steps; nothing was "
                   "lost: run the same command again (a run resumes from its last checkpoint)\n")
    assert "Epoch" not in out
    assert not run_dir.is_run(workdir)  # nothing half done: the same command starts afresh


# 6. Empty reviews.

def test_all_empty_reviews_are_refused(tmp_path, capfd):
    archive = write_archive(tmp_path / "empty.tar.gz", empty=PER_CLASS)
    message = fails_with_one_line(capfd, ["train", "--workdir", str(tmp_path / "run"),
                                          "--data", str(archive), *RUN])
    assert "the train split has 0 reviews with words" in message


def test_a_few_empty_reviews_are_counted_in_a_warning():
    from stackrnn_jax.data import EncodedSplit, check_reviews

    lengths = np.full(300, 5, np.int32)
    split = EncodedSplit(np.ones((300, 5), np.int32), lengths, np.zeros(300, np.int32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_reviews(split, "train")  # none empty: silent
    lengths[:3] = 1  # the start id alone: no word
    with pytest.warns(UserWarning, match="3 of the 300 train reviews have no words"):
        check_reviews(split, "train")
    lengths[:250] = 1
    with pytest.raises(ValueError, match="the train split has 50 reviews with words"):
        check_reviews(split, "train")


# 7. Texts with no known word.

def test_text_with_no_known_word_is_marked(finished, capfd):
    _, workdir = finished
    assert main(["predict", "--workdir", str(workdir), "!!!???", "great wonderful zzzq"]) == 0
    captured = capfd.readouterr()
    rows = [line.split("\t") for line in captured.out.splitlines()]
    assert rows[0][2] == "[no known word] !!!???" and rows[1][2] == "great wonderful zzzq"
    assert captured.err.splitlines() == [
        "warning: review 1 has no word in the run's vocabulary: its score says nothing about it"]
    assert main(["predict", "--workdir", str(workdir), "--json", "!!!???",
                 "great wonderful zzzq"]) == 0
    scored = json.loads(capfd.readouterr().out)
    assert [row["unknown_share"] for row in scored] == [1.0, pytest.approx(1 / 3)]
    assert [row["label"] for row in scored][1] == "positive" and 0 <= scored[0]["probability"] <= 1


# 8. A finished run is read-only to train.

def test_finished_run_is_read_only_to_train(finished, data, tmp_path, capfd):
    archive = data
    workdir = copy_run(finished, tmp_path)
    before = snapshot(workdir)
    assert main(["train", "--workdir", str(workdir), "--data", str(archive), *RUN,
                 "--strategy", "scan"]) == 0
    assert "already trained its 2 epochs" in capfd.readouterr().out
    assert snapshot(workdir) == before


def test_resume_on_other_data_is_refused(finished, tmp_path, capfd):
    workdir = copy_run(finished, tmp_path)
    steps = sorted((workdir / run_dir.TRAIN_STATE).iterdir(), key=lambda path: int(path.name))
    for checkpoint in steps[1:]:
        shutil.rmtree(checkpoint)  # back to epoch 1's end: the run would resume
    shutil.rmtree(workdir / run_dir.CHECKPOINTS)
    (workdir / run_dir.BEST).unlink()
    before = snapshot(workdir)
    other = write_archive(tmp_path / "other.tar.gz", seed=1)  # other reviews: other word ranks
    message = fails_with_one_line(capfd, ["train", "--workdir", str(workdir), "--data", str(other),
                                          *RUN])
    assert "another vocabulary" in message and "--overwrite" in message
    assert snapshot(workdir) == before


# 9. Paths read from run files.

def test_paths_read_from_run_files_stay_inside_the_run(finished, data, tmp_path, capfd):
    archive = data
    workdir = copy_run(finished, tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    best = json.loads((workdir / run_dir.BEST).read_text())
    for path in ("../victim", str(victim), "."):
        (workdir / run_dir.BEST).write_text(json.dumps({**best, "checkpoint": path}))
        message = fails_with_one_line(capfd, ["predict", "--workdir", str(workdir), "good"])
        assert "outside" in message and run_dir.BEST in message
        with pytest.raises(run_dir.RunError, match="outside"):  # the old best is removed here
            run_dir.save_best(workdir, {"w": jnp.ones(2)}, {"epoch": 7})
        message = fails_with_one_line(capfd, ["train", "--workdir", str(workdir),
                                              "--data", str(archive), *RUN])
        assert "outside" in message
    assert (victim / "precious.txt").read_text() == "keep me"
    assert (workdir / run_dir.CONFIG).is_file() and (workdir / run_dir.TRAIN_STATE).is_dir()


# 10. Library: lengths under jax.jit.

def test_bad_lengths_under_jit_are_clamped_or_checked():
    from jax.experimental import checkify

    params = init_params(jax.random.PRNGKey(0), 3, [4])
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 5, 3))
    jitted = jax.jit(lambda n: stacked_rnn(params, x, lengths=n, padding="pre"))
    np.testing.assert_array_equal(jitted(jnp.array([-4, 9, 2])), jitted(jnp.array([0, 5, 2])))
    with pytest.raises(ValueError, match="lengths: expected values in"):
        stacked_rnn(params, x, lengths=np.array([-4, 9, 2]))  # eager: refused

    def checked(n):
        return stacked_rnn(params, x, lengths=n, check_lengths=True)

    run = jax.jit(checkify.checkify(checked))
    error, _ = run(jnp.array([1, 5, 2]))
    error.throw()  # in range: no error
    error, _ = run(jnp.array([1, 6, 2]))
    with pytest.raises(checkify.JaxRuntimeError, match=r"lengths: expected values in \[0, 5\]"):
        error.throw()


def test_every_case_names_a_test():
    """The fault table stays honest: every registered case names a test function
    (``scripts/fault_table.py`` also fails on a node id that pytest does not collect)."""
    for case in CASES:
        module, test = case.test.split("::")
        source = open(os.path.join(os.path.dirname(__file__), os.path.basename(module))).read()
        assert f"def {test.split('[')[0]}(" in source, case.test
    assert {case.kind for case in CASES} == {"fault", "input"}
