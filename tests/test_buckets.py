"""Length buckets: trimmed batches hold the same examples and give the same loss and
gradients as full masked batches, compile a bounded number of shapes, and resume exactly."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from stackrnn_jax import config as config_lib
from stackrnn_jax import distributed, train
from stackrnn_jax.data import EncodedSplit, Vocabulary, batches, bucket_length, trim_padding
from stackrnn_jax.predict import Run, predict_proba
from tests.helpers import METRICS, RESUMABLE, final_state, inject, run_fit, synthetic_split

MAXLEN = 12
WIDTH = 4  # buckets 4, 8, 12


def padded_split(n: int, padding: str, seed: int = 0) -> EncodedSplit:
    """Reviews of 1..MAXLEN ids >= 3 padded on ``padding``'s side; ids[.., real 0] = 3 + index."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, MAXLEN + 1, n).astype(np.int32)
    ids = np.zeros((n, MAXLEN), np.int32)
    for row, length in enumerate(lengths):
        tokens = rng.integers(3, 20, length)
        tokens[0] = 3 + row  # traces a row back to its example
        ids[row, :length] = tokens
        if padding == "pre":
            ids[row] = np.roll(ids[row], MAXLEN - length)
    return EncodedSplit(ids, lengths, (np.arange(n) % 2).astype(np.int32))


def repad(ids: np.ndarray, padding: str) -> np.ndarray:
    """A trimmed ``(batch, steps)`` block widened back to MAXLEN with zeros on the padding side."""
    missing = MAXLEN - ids.shape[1]
    return np.pad(ids, ((0, 0), (missing, 0) if padding == "pre" else (0, missing)))


def test_bucket_length():
    assert [bucket_length(n, 12, 4) for n in (0, 1, 4, 5, 8, 9, 12)] == [4, 4, 4, 8, 8, 12, 12]
    assert bucket_length(500, 500, 64) == 500 and bucket_length(449, 500, 64) == 500
    assert bucket_length(448, 500, 64) == 448


@pytest.mark.parametrize("padding", ["pre", "post"])
def test_bucketed_epoch_holds_the_same_examples_as_unbucketed(padding):
    split = padded_split(203, padding)
    kwargs = dict(batch_size=8, shuffle=True, seed=3, epoch=2, drop_remainder=False)
    plain = list(batches(split, **kwargs))
    bucketed = list(batches(split, bucket_width=WIDTH, padding=padding, **kwargs))
    assert len(bucketed) == len(plain)

    def examples(produced):
        rows = [row.tobytes() + label.tobytes() + length.tobytes()
                for batch in produced
                for row, label, length, weight in zip(
                    repad(batch["ids"], padding), batch["labels"], batch["lengths"],
                    batch["weights"], strict=True) if weight]
        return sorted(rows)

    assert examples(bucketed) == examples(plain)
    assert len(set(examples(bucketed))) == len(split)  # every example once
    widths = {batch["ids"].shape[1] for batch in bucketed}
    assert widths <= {4, 8, 12} and len(widths) > 1
    for batch in bucketed:  # the smallest bucket that holds the batch's longest review
        assert batch["ids"].shape[1] == bucket_length(batch["lengths"].max(), MAXLEN, WIDTH)


def test_trim_padding_removes_only_padding():
    for padding in ("pre", "post"):
        split = padded_split(40, padding, seed=1)
        short = split.lengths <= 5
        trimmed = trim_padding(split.ids[short], split.lengths[short], WIDTH, padding)
        assert trimmed.shape[1] == 8
        np.testing.assert_array_equal(repad(trimmed, padding), split.ids[short])
    assert trim_padding(split.ids, split.lengths, 0, "pre") is split.ids
    with pytest.raises(ValueError, match="bucket_width must be an int >= 0"):
        batches(split, 4, shuffle=False, drop_remainder=False, bucket_width=-1)
    with pytest.raises(ValueError, match="padding must be one of"):
        batches(split, 4, shuffle=False, drop_remainder=False, bucket_width=4, padding="left")


def loss_and_grads(model, batch, config):
    def loss_fn(model):
        logits = train.model_logits(model, batch, config)
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, batch["labels"]))

    return nnx.value_and_grad(loss_fn)(model)


# Two cases by default; the rest (``-m slow``) cover LSTM, bidirectional stacks, max pooling.
@pytest.mark.parametrize("padding,strategy,cell,bidirectional,pooling", [
    ("pre", "scan", "gru", False, "last"), ("post", "auto", "simple", False, "mean"),
    *[pytest.param(*case, marks=pytest.mark.slow) for case in [
        ("post", "scan", "gru", False, "last"), ("pre", "auto", "simple", False, "mean"),
        ("pre", "scan", "lstm", True, "max"), ("post", "scan", "lstm", True, "max"),
        ("pre", "auto", "simple", True, "last")]]])
def test_trimmed_batch_gives_the_full_masked_batch_loss_and_gradients(
        padding, strategy, cell, bidirectional, pooling):
    config = config_lib.TrainConfig(num_words=40, maxlen=MAXLEN, embed_dim=6, units=5, mask=True,
                                    padding=padding, cell=cell, bidirectional=bidirectional,
                                    pooling=pooling, strategy=strategy, bucket_width=WIDTH)
    split = padded_split(16, padding, seed=2)
    short = np.flatnonzero(split.lengths <= 7)[:6]
    full = {"ids": split.ids[short], "lengths": split.lengths[short],
            "labels": split.labels[short].astype(np.float32)}
    trimmed = {**full, "ids": trim_padding(full["ids"], full["lengths"], WIDTH, padding)}
    assert trimmed["ids"].shape[1] == 8
    model = train.create_model(config)
    model.eval()
    loss_full, grads_full = loss_and_grads(model, full, config)
    loss_trimmed, grads_trimmed = loss_and_grads(model, trimmed, config)
    np.testing.assert_allclose(loss_trimmed, loss_full, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 grads_trimmed, grads_full)
    assert any(np.abs(leaf).max() > 0 for leaf in jax.tree.leaves(grads_full))


def test_an_epoch_compiles_one_step_per_bucket_length_and_runs_fewer_steps():
    config = RESUMABLE.replace(bucket_width=WIDTH, checkpoint_every=0)
    split = synthetic_split(200, 4)  # ids below the config's num_words
    model = train.create_model(config)
    optimizer = nnx.Optimizer(model, train.create_optimizer(config, 100), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    layout = distributed.DataParallel(config.batch_size)  # as fit places it: one compile per shape
    state = layout.replicate(state)
    step = train.make_train_step(graphdef, config, layout.replicated)
    widths = []
    original = train.batches

    def recording(*args, **kwargs):
        for batch in original(*args, **kwargs):
            widths.append(batch["ids"].shape[1])
            yield batch

    train.batches = recording
    try:
        state, metrics, _ = train.train_epoch(step, state, split, config, 1, progress=False,
                                              layout=layout)
    finally:
        train.batches = original
    assert np.isfinite(metrics["loss"])
    assert step._cache_size() == len(set(widths)) <= 3  # MAXLEN / WIDTH bucket lengths
    assert sum(widths) < MAXLEN * len(widths)  # padding steps were not run


def test_fit_trains_on_batches_of_every_bucket_width(tmp_path):
    # fit compiles the full-width step ahead (for the memory check); the narrower buckets
    # must still run through it rather than be refused as the wrong shape.
    config = RESUMABLE.replace(bucket_width=WIDTH, epochs=1, checkpoint_every=0)
    history = run_fit(tmp_path / "run", config)
    assert np.isfinite(history["epochs"][0]["loss"])


def test_resumed_bucketed_epoch_is_the_rest_of_the_same_epoch():
    split = padded_split(60, "pre", seed=5)
    kwargs = dict(batch_size=8, shuffle=True, seed=7, epoch=3, drop_remainder=False,
                  bucket_width=WIDTH, padding="pre")
    full = list(batches(split, **kwargs))
    resumed = list(batches(split, start_batch=3, **kwargs))
    assert len(resumed) == len(full) - 3
    for a, b in zip(full[3:], resumed, strict=True):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.slow  # three short runs: about a minute, two on a busy machine
def test_resume_mid_epoch_with_buckets_is_exact(tmp_path, monkeypatch):
    config = RESUMABLE.replace(bucket_width=WIDTH, epochs=2)  # stopped at epoch 2, batch 5
    whole = run_fit(tmp_path / "whole", config)
    inject(monkeypatch, 2, 5, lambda batch: (os.kill(os.getpid(), signal.SIGTERM), batch)[1])
    with pytest.raises(train.TrainingInterrupted):
        run_fit(tmp_path / "stopped", config)
    monkeypatch.undo()
    resumed = run_fit(tmp_path / "stopped", config)
    for row_a, row_b in zip(whole["epochs"], resumed["epochs"], strict=True):
        assert {k: row_a[k] for k in METRICS} == {k: row_b[k] for k in METRICS}
    state_a, position_a = final_state(tmp_path / "whole", config)
    state_b, position_b = final_state(tmp_path / "stopped", config)
    assert position_a["step"] == position_b["step"]
    jax.tree.map(np.testing.assert_array_equal, state_a, state_b)


def test_predict_with_buckets_matches_full_length():
    words = tuple(f"w{i}" for i in range(37))
    vocab = Vocabulary(40, words)
    config = config_lib.TrainConfig(num_words=40, maxlen=MAXLEN, embed_dim=6, units=5, mask=True,
                                    bucket_width=WIDTH)
    model = train.create_model(config)
    model.eval()
    texts = ["w1 w2 w3", "w4 w5", "w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17 w18"]
    bucketed = predict_proba(Run(config, vocab, model, {}), texts)
    full = predict_proba(Run(config.replace(bucket_width=0), vocab, model, {}), texts)
    np.testing.assert_allclose(bucketed, full, rtol=1e-6)
    short = predict_proba(Run(config, vocab, model, {}), texts[:2])  # one 4-step bucket
    np.testing.assert_allclose(short, full[:2], rtol=1e-6)


def test_config_buckets_need_mask_and_presets():
    with pytest.raises(ValueError, match="bucket_width: trimming padding needs mask=true"):
        config_lib.TrainConfig(bucket_width=64)
    with pytest.raises(ValueError, match="bucket_width: expected >= 0|expected >= 0"):
        config_lib.TrainConfig(bucket_width=-1, mask=True)
    assert config_lib.preset("tutorial").bucket_width == 0
    assert not config_lib.preset("tutorial").mask
    for name in config_lib.PRESETS:
        if name.endswith("-best"):
            assert config_lib.preset(name).bucket_width > 0
    # maxlen may reach the longest IMDB review (about 2,500 ids).
    assert config_lib.preset("gru-best").replace(maxlen=2600).maxlen == 2600


def test_two_devices_shard_trimmed_batches():
    """Data parallelism: trimmed batches split over a 2-device mesh (fresh process)."""
    script = textwrap.dedent(
        """
        import jax, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec
        from stackrnn_jax.data import EncodedSplit, batches
        ids = np.zeros((8, 12), np.int32); ids[:, -3:] = 5
        split = EncodedSplit(ids, np.full(8, 3, np.int32), np.zeros(8, np.int32))
        sharding = NamedSharding(jax.make_mesh((2,), ("data",)), PartitionSpec("data"))
        batch = next(batches(split, 4, shuffle=False, drop_remainder=False, bucket_width=4,
                             padding="pre", sharding=sharding))
        assert [s.data.shape for s in batch["ids"].addressable_shards] == [(2, 4), (2, 4)]
        print("ok")
        """
    )
    env = os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=2",
                        "JAX_PLATFORMS": "cpu"}
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=repo, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
