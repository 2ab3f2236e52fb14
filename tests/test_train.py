"""Training loop on a learnable synthetic task: loss, one trace, run files, best-epoch reload."""

import csv
import io
import json
import re

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from stackrnn_jax import distributed, run_dir, train
from stackrnn_jax.data import Vocabulary
from stackrnn_jax.predict import load_run, predict_proba
from stackrnn_jax.train import (
    create_model,
    create_optimizer,
    fit,
    learning_rate,
    make_train_step,
    train_epoch,
)
from tests.helpers import TRAIN_CONFIG, synthetic_split, write_archive


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small run shared by the tests below: ``(workdir, history, printed lines)``."""
    workdir = tmp_path_factory.mktemp("run")
    run_dir.prepare(workdir, TRAIN_CONFIG)
    Vocabulary(TRAIN_CONFIG.num_words, tuple(f"w{i}" for i in range(17))).save(
        workdir / run_dir.VOCAB)
    lines = []

    class Out:
        def write(self, text):
            lines.extend(text.splitlines())

        def flush(self):
            pass

    history = fit(TRAIN_CONFIG, synthetic_split(200, 0), synthetic_split(64, 1), workdir,
                  progress=False, out=Out())
    return workdir, history, [line for line in lines if line]


def test_loss_decreases_and_task_is_learned(trained):
    _, history, _ = trained
    losses = [row["loss"] for row in history["epochs"]]
    assert losses[-1] < losses[0]
    assert history["best_val_accuracy"] > 0.8


def test_epoch_lines_are_keras_style(trained):
    _, _, lines = trained
    pattern = (r"Epoch {}/3 - \d+s - loss: \d\.\d{{4}} - accuracy: \d\.\d{{4}} - "
               r"val_loss: \d\.\d{{4}} - val_accuracy: \d\.\d{{4}}")
    for epoch in (1, 2, 3):
        assert re.fullmatch(pattern.format(epoch), lines[epoch - 1])
    assert lines[3].startswith("Best epoch: ")


def test_history_files_hold_the_epochs_run(trained):
    workdir, history, _ = trained
    saved = json.loads((workdir / run_dir.HISTORY_JSON).read_text())
    assert [row["epoch"] for row in saved["epochs"]] == [1, 2, 3]
    assert saved["best_epoch"] == history["best_epoch"]
    assert 0.0 <= saved["outside_share"] < 1.0 and saved["step_s"] > 0
    with open(workdir / run_dir.HISTORY_CSV) as file:
        rows = list(csv.DictReader(file))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "outside_share"} <= set(rows[0])
    assert (workdir / run_dir.PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_best_epoch_reloads_with_config_and_vocab(trained):
    workdir, history, _ = trained
    run = load_run(workdir)
    assert run.config == TRAIN_CONFIG and run.vocab.num_words == TRAIN_CONFIG.num_words
    assert run.best["epoch"] == history["best_epoch"]
    assert len(list((workdir / run_dir.CHECKPOINTS).iterdir())) == 1  # older bests removed
    texts = ["w0 w1 w2", "w3 w4"]
    probabilities = predict_proba(run, texts)
    assert probabilities.shape == (2,) and np.all((probabilities >= 0) & (probabilities <= 1))
    np.testing.assert_allclose(predict_proba(run, texts[:1]), probabilities[:1], atol=1e-6)


def test_train_step_traces_once():
    config = TRAIN_CONFIG.replace(batch_size=24)  # 100 reviews: the last batch is padded
    model = create_model(config)
    optimizer = nnx.Optimizer(model, create_optimizer(config, 20), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    layout = distributed.DataParallel(config.batch_size)
    state = layout.replicate(state)
    step = make_train_step(graphdef, config, layout.replicated)
    split = synthetic_split(100, 2)
    for epoch in (1, 2):
        state, metrics, timer = train_epoch(step, state, split, config, epoch, progress=False,
                                            layout=layout)
    assert step._cache_size() == 1
    assert timer.seconds["step"] > 0 and np.isfinite(metrics["loss"])


def test_schedules_and_clipping():
    warm = learning_rate(TRAIN_CONFIG.replace(warmup_steps=10), 100)
    assert float(warm(0)) == 0.0 and float(warm(10)) == pytest.approx(1e-2) == float(warm(99))
    cosine = learning_rate(TRAIN_CONFIG.replace(schedule="cosine", warmup_steps=10), 100)
    assert float(cosine(10)) == pytest.approx(1e-2) and float(cosine(100)) == pytest.approx(0.0)


@pytest.mark.parametrize("clip_norm, seen_norm", [(1.0, 1.0), (0.0, 100.0 * 3 ** 0.5)])
def test_clipping_bounds_the_gradient_adam_sees(clip_norm, seen_norm):
    """Adam's first moment after one step is (1 - b1) times the gradient it was given."""
    optimizer = create_optimizer(TRAIN_CONFIG.replace(clip_norm=clip_norm), 100)
    params = {"w": jnp.zeros(3)}
    _, state = optimizer.update({"w": jnp.full(3, 100.0)}, optimizer.init(params), params)
    first_moment = optax.tree_utils.tree_get(state, "mu")
    assert float(optax.tree.norm(first_moment)) == pytest.approx(0.1 * seen_norm, rel=1e-6)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_weight_decay_shrinks_the_weights_by_lr_times_decay(weight_decay):
    """With a zero gradient Adam's step is zero, so AdamW's step is the decay alone:
    -lr * weight_decay * w (lr 1e-2, constant)."""
    optimizer = create_optimizer(TRAIN_CONFIG.replace(weight_decay=weight_decay), 100)
    params = {"w": jnp.array([1.0, -2.0, 4.0])}
    updates, _ = optimizer.update({"w": jnp.zeros(3)}, optimizer.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["w"]), -1e-2 * weight_decay * params["w"],
                               rtol=1e-6)


def test_workdir_with_another_config_is_refused(tmp_path):
    run_dir.prepare(tmp_path / "w", TRAIN_CONFIG)
    (tmp_path / "w" / run_dir.TRAIN_STATE / "3").mkdir(parents=True)  # a checkpoint: a run
    # same model
    run_dir.prepare(tmp_path / "w", TRAIN_CONFIG.replace(strategy="loop", log_every=1))
    with pytest.raises(run_dir.RunError, match="cell: 'simple' -> 'gru'"):
        run_dir.prepare(tmp_path / "w", TRAIN_CONFIG.replace(cell="gru"))
    run_dir.prepare(tmp_path / "w", TRAIN_CONFIG.replace(cell="gru"), overwrite=True)
    assert run_dir.read_config(tmp_path / "w").cell == "gru"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(run_dir.RunError, match="holds no run"):
        run_dir.prepare(tmp_path / "other", TRAIN_CONFIG)


@pytest.mark.usefixtures("private_caches")
def test_train_and_evaluate_holds_out_the_validation_its_config_names(tmp_path, monkeypatch):
    """The split reaches fit: whole movies with val_split="movie", reviews at random
    (sharing movies with training) with "random"; one line says which."""
    archive = write_archive(tmp_path / "aclImdb.tar.gz", movies=True)
    splits = {}
    monkeypatch.setattr(train, "fit", lambda config, part, val, *args, **kwargs: splits.update(
        {config.val_split: (part, val)}) or {})
    out = io.StringIO()
    config = TRAIN_CONFIG.replace(num_words=40, maxlen=16)
    for val_split in ("movie", "random"):
        train.train_and_evaluate(config.replace(val_split=val_split), tmp_path / val_split,
                                 archive, out=out)
    shared = {name: set(part.movies.tolist()) & set(val.movies.tolist())
              for name, (part, val) in splits.items()}
    assert not shared["movie"] and shared["random"]
    assert len(splits["random"][1]) == 40  # round(0.2 * 101) per label
    assert 40 - 8 <= len(splits["movie"][1]) <= 40  # short of it by less than a movie
    lines = out.getvalue().splitlines()
    movies = len(set(splits["movie"][1].movies.tolist()))
    assert lines[0].endswith(f"; {movies} movies, 0 of them also in training")
    assert lines[1].endswith(f", {len(shared['random'])} of them also in training")


def test_without_validation_every_epoch_trains_and_the_last_is_kept(tmp_path):
    """val_fraction 0: fit gets no validation split, prints no val_ numbers, records none,
    and keeps the last epoch's weights (they reload and predict)."""
    config = TRAIN_CONFIG.replace(val_fraction=0.0)
    run_dir.prepare(tmp_path, config)
    Vocabulary(config.num_words, tuple(f"w{i}" for i in range(17))).save(tmp_path / run_dir.VOCAB)
    out = io.StringIO()
    history = fit(config, synthetic_split(200, 0), None, tmp_path, progress=False, out=out)
    lines = out.getvalue().splitlines()
    assert all("val_" not in line for line in lines[:3]) and len(lines) == 4
    assert lines[3].startswith("Last epoch kept: 3 (no validation); ")
    assert history["best_epoch"] == 3 and history["best_val_accuracy"] is None
    assert history["val_examples"] == 0
    assert [row["val_accuracy"] for row in history["epochs"]] == [None, None, None]
    with open(tmp_path / run_dir.HISTORY_CSV) as file:
        assert [row["val_accuracy"] for row in csv.DictReader(file)] == ["", "", ""]
    assert (tmp_path / run_dir.PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = load_run(tmp_path)
    assert run.best["epoch"] == 3 and run.best["val_accuracy"] is None
    assert len(list((tmp_path / run_dir.CHECKPOINTS).iterdir())) == 1


def test_train_and_evaluate_without_validation_trains_on_every_train_review(tmp_path,
                                                                            monkeypatch):
    archive = write_archive(tmp_path / "aclImdb.tar.gz", movies=True)
    seen = {}
    monkeypatch.setattr(train, "fit", lambda config, part, val, *args, **kwargs: seen.update(
        part=part, val=val) or {})
    out = io.StringIO()
    config = TRAIN_CONFIG.replace(num_words=40, maxlen=16, val_fraction=0.0)
    train.train_and_evaluate(config, tmp_path / "run", archive, out=out)
    assert seen["val"] is None and len(seen["part"]) == 202
    assert out.getvalue().splitlines()[0] == ("Validation: none (val_fraction 0); training on "
                                              "all 202 train reviews, the last epoch is kept")
