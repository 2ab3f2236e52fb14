"""The ``stackrnn`` command end to end on a tiny synthetic aclImdb archive, and its bad inputs."""

import io
import json
import re
import shutil
import subprocess
import sys

import pytest

from stackrnn_jax import run_dir
from stackrnn_jax.cli import main
from tests.helpers import BAD_INPUTS, PER_CLASS, TINY, fails_with_one_line, inject, write_archive

# tfds and the encoded-data cache live under a temporary HOME (conftest.private_caches).
pytestmark = pytest.mark.usefixtures("private_caches")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(archive, workdir, train stdout)`` of one tiny CLI training run."""
    root = tmp_path_factory.mktemp("cli")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("HOME", str(root / "home"))
    archive = write_archive(root / "aclImdb.tar.gz")
    workdir = root / "run"
    stdout = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stdout)
    try:
        assert main(["train", "--workdir", str(workdir), "--data", str(archive), *TINY]) == 0
    finally:
        monkeypatch.undo()
    return archive, workdir, stdout.getvalue()


def test_train_prints_epochs_and_saves_the_run(trained):
    _, workdir, out = trained
    assert re.search(r"^Epoch 3/3 - \d+s - loss: \d\.\d{4} - accuracy: \d\.\d{4} - "
                     r"val_loss: \d\.\d{4} - val_accuracy: \d\.\d{4}$", out, re.M)
    config = json.loads((workdir / run_dir.CONFIG).read_text())
    assert ((config["units"], config["maxlen"], config["mask"], config["cell"])
            == (8, 16, True, "simple"))
    for name in (run_dir.VOCAB, run_dir.BEST, run_dir.HISTORY_JSON, run_dir.HISTORY_CSV,
                 run_dir.PLOT):
        assert (workdir / name).is_file(), name


def test_evaluate_counts_every_test_review_once(trained, capsys):
    from stackrnn_jax.predict import evaluate_run, load_run

    archive, workdir, _ = trained
    assert main(["evaluate", "--workdir", str(workdir), "--data", str(archive)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"Test Loss: \d\.\d{4}", lines[0])
    accuracy = float(re.fullmatch(r"Test Accuracy: (\d\.\d{4})", lines[1]).group(1))
    assert accuracy > 0.9  # the synthetic task is easy
    assert evaluate_run(load_run(workdir), archive)["examples"] == 2 * PER_CLASS


def test_predict_arguments_file_and_stdin(trained, capsys, tmp_path, monkeypatch):
    _, workdir, _ = trained
    reviews = tmp_path / "reviews.txt"
    reviews.write_text("a great wonderful film\n\nawful boring plot\n")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"great wonderful\n")))
    assert main(["predict", "--workdir", str(workdir), "awful boring movie", "-",
                 "--file", str(reviews)]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [row[1] for row in rows] == ["negative", "positive", "positive", "negative"]
    assert all(0.0 <= float(row[0]) <= 1.0 for row in rows)
    assert rows[0][2] == "awful boring movie"


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "stackrnn_jax", "predict", "--workdir",
                             "/nonexistent", "x"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.startswith(
        "error: no trained run in /nonexistent")


def test_precedence_preset_file_flags_reach_config_json(tmp_path, capsys):
    config_file = tmp_path / "run.toml"
    config_file.write_text('cell = "lstm"\nepochs = 2\nunits = 16\n')
    workdir = tmp_path / "run"
    message = fails_with_one_line(capsys, ["train", "--workdir", str(workdir),
                                           "--preset", "gru-best",
                                           "--config", str(config_file), "--units", "8",
                                           "--val-split", "movie",
                                           "--data", str(tmp_path / "missing.tar.gz")])
    assert "IMDB data path does not exist" in message  # a DataError: one line too
    saved = json.loads((workdir / run_dir.CONFIG).read_text())
    assert saved["cell"] == "lstm" and saved["epochs"] == 2  # file over preset
    assert saved["units"] == 8 and saved["val_split"] == "movie"  # flags over file
    assert saved["dropout"] == 0.5  # from the preset




@pytest.mark.parametrize("argv, status, message", BAD_INPUTS)
def test_bad_input_is_one_line(capsys, tmp_path, monkeypatch, argv, status, message):
    monkeypatch.chdir(tmp_path)
    assert message in fails_with_one_line(capsys, argv, status)


def test_non_text_and_empty_predict_input(capsys, tmp_path, monkeypatch):
    binary = tmp_path / "reviews.bin"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    assert "not UTF-8 text" in fails_with_one_line(capsys, ["predict", "--workdir", "w",
                                                            "--file", str(binary)])
    (tmp_path / "blank.txt").write_text("\n  \n")
    assert "no review given" in fails_with_one_line(capsys, ["predict", "--workdir", "w", "--file",
                                                             str(tmp_path / "blank.txt")])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"ok\x00review")))
    assert "stdin: not text" in fails_with_one_line(capsys, ["predict", "--workdir", "w", "-"])


def test_workdir_with_another_config_is_refused_unless_overwrite(trained, capsys, tmp_path):
    archive, workdir, _ = trained
    other = tmp_path / "run"
    other.mkdir()
    (other / run_dir.CONFIG).write_text((workdir / run_dir.CONFIG).read_text())
    shutil.copytree(workdir / run_dir.TRAIN_STATE, other / run_dir.TRAIN_STATE)  # a run
    message = fails_with_one_line(capsys, ["train", "--workdir", str(other), "--data", str(archive),
                                           *TINY, "--cell", "gru"])
    assert "holds a run with another config (cell: 'simple' -> 'gru')" in message
    assert "--overwrite" in message


def test_broken_run_is_one_line(trained, capsys, tmp_path):
    _, workdir, _ = trained
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in (run_dir.CONFIG, run_dir.VOCAB):
        (broken / name).write_text((workdir / name).read_text())
    predict = ["predict", "--workdir", str(broken), "good"]
    assert "no best checkpoint" in fails_with_one_line(capsys, predict)
    (broken / run_dir.BEST).write_text('{"epoch": 1, "checkpoint": "checkpoints/epoch_9"}')
    assert "unreadable checkpoint" in fails_with_one_line(capsys, predict)
    (broken / run_dir.CONFIG).write_text("{not json")
    assert "unreadable" in fails_with_one_line(capsys, ["evaluate", "--workdir", str(broken)])


def test_unreadable_archive_is_one_data_error_line(capsys, tmp_path):
    archive = tmp_path / "aclImdb.tar.gz"
    archive.write_text("not a tar archive")
    message = fails_with_one_line(capsys, ["train", "--workdir", str(tmp_path / "run"),
                                           "--data", str(archive)])
    assert "not a readable tar archive" in message


def test_sigterm_checkpoints_and_the_same_command_resumes(trained, capsys, tmp_path, monkeypatch):
    import os
    import signal


    archive, _, _ = trained
    argv = ["train", "--workdir", str(tmp_path / "run"), "--data", str(archive), *TINY]
    inject(monkeypatch, 2, 3, lambda batch: (os.kill(os.getpid(), signal.SIGTERM), batch)[1])
    assert main(argv) == 128 + signal.SIGTERM
    err = capsys.readouterr().err  # tfds' progress bars come first
    assert re.search(r"stopped: interrupted \(signal 15\) at epoch 2, step \d+; checkpoint saved: "
                     r"run the same command to resume\n$", err) and "Traceback" not in err, err
    monkeypatch.undo()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"Resuming from step \d+ \(epoch 2, batch 3 of \d+\)", out)
    assert ([line[:9] for line in out.splitlines() if line.startswith("Epoch")]
            == ["Epoch 2/3", "Epoch 3/3"])
    assert main(argv) == 0  # a finished run is reported, not retrained
    assert "already trained its 3 epochs" in capsys.readouterr().out
    assert main(["evaluate", "--workdir", str(tmp_path / "run"), "--data", str(archive)]) == 0


def test_multi_host_flags_without_a_coordinator_are_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    message = fails_with_one_line(capsys, ["train", "--workdir", str(tmp_path / "run"),
                                           "--num-processes", "2"])
    assert "--num-processes and --process-id need --coordinator" in message


def test_movie_split_on_a_copy_without_urls_is_one_warning_line(capsys, tmp_path, monkeypatch):
    from stackrnn_jax import train

    archive = write_archive(tmp_path / "aclImdb.tar.gz")  # no urls_{pos,neg}.txt
    monkeypatch.setattr(train, "fit", lambda *args, **kwargs: {})  # the split is what is tested
    assert main(["train", "--workdir", str(tmp_path / "run"), "--data", str(archive), *TINY,
                 "--val-split", "movie"]) == 0
    captured = capsys.readouterr()
    assert re.fullmatch(r"warning: val_split=movie: 202 of the 202 train reviews have no movie "
                        r"\(aclImdb/train/urls_pos.txt .*held out at random instead.*\n",
                        captured.err), captured.err
    assert re.search(r"^Validation: 40 of 202 train reviews .*; movies unknown$", captured.out,
                     re.M)
