"""Batching, shuffling, bucketing, resuming, device placement, validation split (at random
or by movie)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from stackrnn_jax.config import VAL_SPLITS
from stackrnn_jax.data import (
    EncodedSplit,
    batches,
    describe_validation,
    num_batches,
    pipeline,
    split_validation,
)

MAXLEN = 8


def make_split(n: int, seed: int = 0) -> EncodedSplit:
    """``n`` reviews whose last id is their index, so every batch row can be traced back."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, MAXLEN + 1, size=n).astype(np.int32)
    ids = np.zeros((n, MAXLEN), dtype=np.int32)
    ids[:, -1] = np.arange(n)
    return EncodedSplit(ids=ids, lengths=lengths, labels=(np.arange(n) % 2).astype(np.int32))


def indices(batch) -> np.ndarray:
    return np.asarray(batch["ids"])[:, -1]


def epoch_order(split, **kwargs) -> list[int]:
    """Indices of the real (weight 1) rows over one epoch, in order."""
    return [int(index) for batch in batches(split, **kwargs)
            for index, weight in zip(indices(batch), batch["weights"], strict=True) if weight]


def test_num_batches():
    assert num_batches(10, 4, drop_remainder=True) == 2
    assert num_batches(10, 4, drop_remainder=False) == 3
    assert num_batches(8, 4, drop_remainder=False) == 2
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        num_batches(8, 0, drop_remainder=False)


def test_batch_contents_and_dtypes():
    split = make_split(10)
    batch = next(batches(split, 4, shuffle=False, drop_remainder=False))
    assert batch["ids"].shape == (4, MAXLEN) and batch["ids"].dtype == np.int32
    assert batch["lengths"].dtype == np.int32 and batch["labels"].dtype == np.float32
    assert batch["weights"].dtype == np.float32
    assert np.array_equal(batch["ids"], split.ids[:4])
    assert np.array_equal(batch["lengths"], split.lengths[:4])
    assert batch["labels"].tolist() == [0.0, 1.0, 0.0, 1.0]


def test_shuffle_is_deterministic_per_seed_and_epoch():
    split = make_split(64)
    order = epoch_order(split, batch_size=8, shuffle=True, seed=3, epoch=1, drop_remainder=True)
    kw = dict(batch_size=8, shuffle=True, drop_remainder=True)
    assert order == epoch_order(split, seed=3, epoch=1, **kw)
    assert order != epoch_order(split, seed=3, epoch=2, **kw)
    assert order != epoch_order(split, seed=4, epoch=1, **kw)
    assert sorted(order) == list(range(64))
    assert epoch_order(split, batch_size=8, shuffle=False, drop_remainder=True) == list(range(64))


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("bucket", [False, True])
def test_padded_last_batch_counts_every_example_once(shuffle, bucket):
    split = make_split(23)
    seen = []
    produced = list(batches(split, 5, shuffle=shuffle, seed=1, drop_remainder=False, bucket=bucket))
    assert len(produced) == num_batches(23, 5, drop_remainder=False) == 5
    for batch in produced:
        assert batch["ids"].shape == (5, MAXLEN)
        seen.extend(indices(batch)[batch["weights"] == 1].tolist())
        assert set(batch["weights"].tolist()) <= {0.0, 1.0}
    assert sorted(seen) == list(range(23))  # each example exactly once with weight 1
    assert sum(float(batch["weights"].sum()) for batch in produced) == 23
    filler = [batch for batch in produced if batch["weights"].min() == 0]
    assert len(filler) == 1 and filler[0]["weights"].tolist() == [1, 1, 1, 0, 0]
    assert filler[0]["lengths"].min() >= 1  # filler rows are real reviews, never empty


def test_drop_remainder_yields_only_full_batches():
    split = make_split(23)
    produced = list(batches(split, 5, shuffle=True, seed=0, drop_remainder=True))
    assert len(produced) == 4 and all(batch["weights"].tolist() == [1.0] * 5 for batch in produced)
    seen = np.concatenate([indices(batch) for batch in produced])
    assert len(set(seen.tolist())) == 20


def test_bucketing_groups_similar_lengths_deterministically():
    split = make_split(400, seed=2)
    kwargs = {"batch_size": 10, "shuffle": True, "seed": 5, "epoch": 0, "drop_remainder": True}
    def spread(bucket):  # mean length range within a batch
        return np.mean([np.ptp(batch["lengths"])
                        for batch in batches(split, bucket=bucket, **kwargs)])

    assert spread(True) < spread(False) / 2
    assert epoch_order(split, bucket=True, **kwargs) == epoch_order(split, bucket=True, **kwargs)
    next_epoch = kwargs | {"epoch": 1}
    assert (epoch_order(split, bucket=True, **kwargs)
            != epoch_order(split, bucket=True, **next_epoch))
    assert sorted(epoch_order(split, bucket=True, **kwargs)) == list(range(400))


def test_start_batch_resumes_the_same_epoch():
    split = make_split(50)
    kwargs = {"batch_size": 8, "shuffle": True, "seed": 7, "epoch": 3, "drop_remainder": False,
              "bucket": True}
    full = [indices(batch).tolist() for batch in batches(split, **kwargs)]
    resumed = [indices(batch).tolist() for batch in batches(split, start_batch=4, **kwargs)]
    assert resumed == full[4:] and len(resumed) == 3
    assert list(batches(split, start_batch=len(full), **kwargs)) == []
    with pytest.raises(ValueError, match="start_batch must be in"):
        batches(split, start_batch=len(full) + 1, **kwargs)


def test_single_device_named_sharding():
    mesh = jax.make_mesh((1,), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    split = make_split(10)
    on_device = list(batches(split, 4, shuffle=True, drop_remainder=False, sharding=sharding))
    on_host = list(batches(split, 4, shuffle=True, drop_remainder=False))
    for device_batch, host_batch in zip(on_device, on_host, strict=True):
        for name, value in device_batch.items():
            assert isinstance(value, jax.Array) and value.sharding.mesh.shape == {"data": 1}
            assert value.sharding.spec[0] == "data" and value.dtype == host_batch[name].dtype
            assert np.array_equal(np.asarray(value), host_batch[name])


def test_sharding_must_split_the_batch_over_data():
    sharding = NamedSharding(jax.make_mesh((1,), ("batch",)), PartitionSpec("batch"))
    with pytest.raises(ValueError, match="mesh axis 'data'"):
        batches(make_split(4), 2, shuffle=False, drop_remainder=True, sharding=sharding)


def test_two_devices_split_the_batch_and_require_divisibility():
    """Runs in a fresh process: the host device count is fixed when jax starts."""
    script = textwrap.dedent(
        """
        import jax, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec
        from stackrnn_jax.data import EncodedSplit, batches
        split = EncodedSplit(np.arange(24, dtype=np.int32).reshape(6, 4), np.full(6, 4, np.int32),
                             np.zeros(6, np.int32))
        sharding = NamedSharding(jax.make_mesh((2,), ("data",)), PartitionSpec("data"))
        batch = next(batches(split, 4, shuffle=False, drop_remainder=False, sharding=sharding))
        assert [shard.data.shape for shard in batch["ids"].addressable_shards] == [(2, 4), (2, 4)]
        assert len({shard.device for shard in batch["weights"].addressable_shards}) == 2
        try:
            batches(split, 3, shuffle=False, drop_remainder=False, sharding=sharding)
        except ValueError as error:
            assert "not divisible by the 2 devices" in str(error), error
        else:
            raise AssertionError("odd batch accepted")
        print("ok")
        """
    )
    env = os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=2",
                        "JAX_PLATFORMS": "cpu"}
    repo = Path(__file__).resolve().parents[1]  # `python -c` imports from its working directory
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=repo, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_split_validation_is_stratified_disjoint_and_deterministic():
    split = make_split(101)
    train, validation = split_validation(split, 0.2, seed=0)
    train_ids, validation_ids = train.ids[:, -1], validation.ids[:, -1]
    assert sorted(np.concatenate([train_ids, validation_ids]).tolist()) == list(range(101))
    assert np.bincount(validation.labels).tolist() == [10, 10]  # round(0.2 * 51), round(0.2 * 50)
    again = split_validation(split, 0.2, seed=0)[1]
    assert np.array_equal(again.ids, validation.ids)
    assert not np.array_equal(split_validation(split, 0.2, seed=1)[1].ids, validation.ids)
    assert np.array_equal(validation.lengths, split.lengths[validation_ids])  # rows stay aligned
    assert np.array_equal(validation.labels, split.labels[validation_ids])
    with pytest.raises(ValueError, match="fraction must be in"):
        split_validation(split, 1.0, seed=0)


def with_movies(n: int, seed: int = 0) -> EncodedSplit:
    """``make_split(n)`` whose reviews belong to movies of 1 to 30 reviews of either label
    (as IMDB's), in a random order."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 31, size=n)  # more than enough movies; cut at n reviews
    movies = rng.permutation(np.repeat(np.arange(len(sizes)) + 1000, sizes)[:n]).astype(np.int32)
    split = make_split(n, seed)
    return EncodedSplit(split.ids, split.lengths, split.labels, movies)


def test_random_split_holds_out_the_reviews_it_always_did():
    """The tutorial's numbers depend on it: by="random" is the one rng draw per label."""
    split = with_movies(101)
    rng, expected = np.random.default_rng(3), np.zeros(101, dtype=bool)
    for label in (0, 1):
        members = np.flatnonzero(split.labels == label)
        expected[rng.permutation(members)[:round(0.2 * len(members))]] = True
    for validation in (split_validation(split, 0.2, seed=3)[1],
                       split_validation(split, 0.2, seed=3, by="random")[1]):
        assert np.array_equal(validation.ids[:, -1], np.flatnonzero(expected))


@pytest.mark.parametrize("fraction", [0.1, 0.2])
def test_movie_split_holds_out_whole_movies_near_the_fraction_per_label(fraction):
    split = with_movies(2000)
    train, validation = split_validation(split, fraction, seed=0, by="movie")
    assert not set(train.movies.tolist()) & set(validation.movies.tolist())
    assert sorted(np.concatenate([train.ids[:, -1], validation.ids[:, -1]]).tolist()) == list(
        range(2000))
    assert np.array_equal(validation.movies, split.movies[validation.ids[:, -1]])  # aligned
    line = describe_validation(train, validation)
    for label in (0, 1):
        total = np.count_nonzero(split.labels == label)
        held = np.count_nonzero(validation.labels == label)
        # never above the share; with many small movies, a few reviews short of it at most
        assert round(fraction * total) - 5 <= held <= round(fraction * total)
        assert f"label {label}: {held / total:.1%}" in line
    assert line.endswith(f"; {len(set(validation.movies.tolist()))} movies, "
                         "0 of them also in training")


def test_movie_split_is_deterministic_per_seed():
    split = with_movies(600)
    first = split_validation(split, 0.2, seed=0, by="movie")[1]
    assert np.array_equal(split_validation(split, 0.2, seed=0, by="movie")[1].ids, first.ids)
    other = split_validation(split, 0.2, seed=1, by="movie")[1]
    assert set(other.movies.tolist()) != set(first.movies.tolist())


def test_movie_split_without_movies_warns_and_holds_out_at_random():
    split = make_split(101)  # movies not given: all unknown
    assert (split.movies == -1).all()
    with pytest.warns(UserWarning, match="101 of the 101 train reviews have no movie.*"
                                         "urls_pos.txt.*held out at random"):
        train, validation = split_validation(split, 0.2, seed=0, by="movie")
    assert np.array_equal(validation.ids, split_validation(split, 0.2, seed=0)[1].ids)
    assert describe_validation(train, validation).endswith("; movies unknown")


def test_unknown_validation_split_is_refused():
    assert VAL_SPLITS == pipeline.VAL_SPLITS  # config cannot import the data layer: kept equal
    with pytest.raises(ValueError, match="validation split: expected one of random, movie"):
        split_validation(make_split(20), 0.2, seed=0, by="title")
