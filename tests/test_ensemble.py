"""Ensembles (``members > 1``): the mean logit, per-member clipping against optax on each
member alone, a step that trains each member as it would train alone, and a run that
keeps, reloads, predicts and exports with the ensemble."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from stackrnn_jax import clipping, export, run_dir, train
from stackrnn_jax.data import Vocabulary
from stackrnn_jax.nn import SentimentClassifier, SentimentEnsemble
from stackrnn_jax.predict import load_run, predict_proba
from tests.helpers import (
    TRAIN_CONFIG,
    fails_with_one_line,
    make_run,
    max_error,
    synthetic_split,
)

ENSEMBLE = TRAIN_CONFIG.replace(members=3, clip_norm=0.5, dropout=0.0)


def test_the_ensemble_logit_is_the_mean_of_its_members_and_member_0_is_the_single_model():
    model = train.create_model(ENSEMBLE)
    ids = jnp.asarray(synthetic_split(5, 0).ids)
    members = model.member_logits(ids)
    assert members.shape == (3, 5)
    np.testing.assert_allclose(model(ids), members.mean(axis=0), rtol=1e-6)
    single = train.create_model(ENSEMBLE.replace(members=1))
    assert max_error(nnx.state(model.members[0], nnx.Param), nnx.state(single, nnx.Param)) == 0
    assert max_error(nnx.state(model.members[1], nnx.Param), nnx.state(single, nnx.Param)) > 0
    with pytest.raises(ValueError, match="at least 2 members"):
        SentimentEnsemble([single])


def test_clip_each_member_clips_every_member_by_its_own_norm():
    rng = np.random.default_rng(0)
    tree = {"members": {k: {"w": rng.standard_normal((3, 4)).astype(np.float32) * scale,
                            "b": rng.standard_normal(4).astype(np.float32) * scale}
                        for k, scale in enumerate((0.01, 1.0, 30.0))}}
    clip = clipping.clip_each_member(1.0)
    clipped, _ = clip.update(tree, clip.init(tree))
    alone = optax.clip_by_global_norm(1.0)
    for k, member in tree["members"].items():
        expected, _ = alone.update(member, alone.init(member))
        for name in member:
            np.testing.assert_allclose(clipped["members"][k][name], expected[name], rtol=1e-6)
    np.testing.assert_array_equal(clipped["members"][0]["w"], tree["members"][0]["w"])
    with pytest.raises(ValueError, match="is not a member's"):
        clip.update({"w": np.ones(2)}, optax.EmptyState())


def test_ensemble_steps_train_each_member_as_it_would_train_alone():
    """Each member after four steps (clipped Adam: from the second step on, the clipping
    shows in Adam's updates) equals that member's classifier stepped on its own; the
    totals count the ensemble's mean logit."""
    batches = list(_batches(ENSEMBLE))

    def steps(config, model):
        optimizer = nnx.Optimizer(model, train.create_optimizer(config, 10), wrt=nnx.Param)
        graphdef, state = nnx.split((model, optimizer))
        step, totals = train.make_train_step(graphdef, config), train.zero_totals()
        for index, batch in enumerate(batches):
            state, totals = step(state, totals if index else train.zero_totals(), batch,
                                 jnp.int32(index))
        return nnx.merge(graphdef, state)[0], train.summarize(totals)

    ensemble, metrics = steps(ENSEMBLE, train.create_model(ENSEMBLE))
    single = ENSEMBLE.replace(members=1)
    for k in range(ENSEMBLE.members):
        alone, _ = steps(single, train.create_model(single, seed=train.member_seed(0, k)))
        assert max_error(nnx.state(ensemble.members[k], nnx.Param),
                         nnx.state(alone, nnx.Param)) < 1e-6
    assert np.isfinite(metrics["loss"])


def test_an_ensemble_steps_totals_count_its_mean_logit():
    batch = next(iter(_batches(ENSEMBLE)))
    model = train.create_model(ENSEMBLE)
    logits = np.asarray(model(batch["ids"], batch["lengths"]), np.float64)
    optimizer = nnx.Optimizer(model, train.create_optimizer(ENSEMBLE, 10), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    _, totals = train.make_train_step(graphdef, ENSEMBLE)(state, train.zero_totals(), batch,
                                                          jnp.int32(0))
    metrics = train.summarize(totals)
    labels = np.asarray(batch["labels"])
    expected_loss = np.mean(np.logaddexp(0, logits) - labels * logits)
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert metrics["accuracy"] == pytest.approx(np.mean((logits > 0) == (labels > 0.5)))


def test_an_ensemble_run_keeps_reloads_predicts_and_exports(tmp_path):
    config = TRAIN_CONFIG.replace(members=2)
    run_dir.prepare(tmp_path, config)
    Vocabulary(config.num_words, tuple(f"w{i}" for i in range(17))).save(tmp_path / run_dir.VOCAB)
    history = train.fit(config, synthetic_split(200, 0), synthetic_split(64, 1), tmp_path,
                        progress=False, out=open("/dev/null", "w"))
    assert history["best_val_accuracy"] > 0.8
    run = load_run(tmp_path)
    assert isinstance(run.model, SentimentEnsemble) and len(run.model.members) == 2
    texts = ["w0 w1 w2", "w3 w4"]
    probabilities = predict_proba(run, texts)
    ids, lengths = run.vocab.encode(texts, config.maxlen, config.padding, config.truncating)
    members = run.model.member_logits(jnp.asarray(ids), jnp.asarray(lengths), padding="pre")
    np.testing.assert_allclose(probabilities, jax.nn.sigmoid(members.mean(axis=0)), rtol=1e-5)
    portable = export.portable_probabilities(run)  # what `stackrnn export` serializes
    np.testing.assert_allclose(portable(jnp.asarray(ids), jnp.asarray(lengths)), probabilities,
                               atol=1e-6)


def test_explain_refuses_an_ensemble_in_one_line(tmp_path, capsys):
    workdir = make_run(tmp_path / "run", members=2)
    assert isinstance(load_run(workdir).model, SentimentEnsemble)
    line = fails_with_one_line(capsys, ["predict", "--workdir", str(workdir), "a fine film",
                                        "--explain", str(tmp_path / "page.html")])
    assert "ensemble of 2" in line and not (tmp_path / "page.html").exists()


def _batches(config):
    from stackrnn_jax.data import batches

    return batches(synthetic_split(64, 3), config.batch_size, shuffle=False,
                   drop_remainder=False)


def test_members_must_be_positive():
    with pytest.raises(ValueError, match="members: expected a positive integer"):
        TRAIN_CONFIG.replace(members=0)
    assert isinstance(train.create_model(TRAIN_CONFIG), SentimentClassifier)
