"""Batches of an encoded split: per-epoch shuffling, length buckets, device placement.

Length buckets cut compute: batches drawn from length-sorted chunks are trimmed to the
smallest multiple of ``bucket_width`` (capped at the split's time axis) that holds their
longest review, so a jitted step compiles once per bucket length (at most
``ceil(maxlen / bucket_width)`` shapes) and runs only those steps. Trimming drops
padding only: with masking by true length the numbers are those of the full batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from stackrnn_jax.data.pipeline import EncodedSplit
from stackrnn_jax.data.tokenizer import check_padding_side

DATA_AXIS = "data"
# Batches per length-sorted chunk: enough to group similar lengths, few enough to stay random.
BUCKET_CHUNK_BATCHES = 50


def num_batches(n: int, batch_size: int, drop_remainder: bool) -> int:
    """Batches per epoch for ``n`` examples: the partial last one is dropped or padded."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return n // batch_size if drop_remainder else math.ceil(n / batch_size)


def bucket_length(longest: int, time: int, width: int) -> int:
    """Steps a batch whose longest review has ``longest`` ids runs: the smallest multiple
    of ``width`` that holds it, capped at ``time`` (the untrimmed length)."""
    return min(time, max(width, -(-longest // width) * width))


def trim_padding(ids: np.ndarray, lengths: np.ndarray, width: int, padding: str) -> np.ndarray:
    """``ids (batch, time)`` cut to ``(batch, bucket_length)``: only padding is removed.

    ``padding`` is the side of the padding zeros: ``"post"`` keeps the first steps,
    ``"pre"`` the last ones. ``width`` 0 returns ``ids`` unchanged.
    """
    if width == 0:
        return ids
    time = ids.shape[1]
    steps = bucket_length(int(lengths.max(initial=0)), time, width)
    return ids[:, :steps] if padding == "post" else ids[:, time - steps:]


def _batch_indices(lengths: np.ndarray, batch_size: int, shuffle: bool, seed: int, epoch: int,
                   drop_remainder: bool, bucket: bool) -> list[np.ndarray]:
    """Example indices of each batch of the epoch; one batch may be short."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)) if shuffle else np.arange(len(lengths))
    if drop_remainder:
        order = order[:num_batches(len(order), batch_size, True) * batch_size]
    if bucket and order.size:
        # Sort by length inside chunks of the (shuffled) order: similar lengths
        # share a batch while which reviews meet still changes with the epoch.
        chunk = batch_size * BUCKET_CHUNK_BATCHES
        order = np.concatenate([part[np.argsort(lengths[part], kind="stable")]
                                for part in (order[start:start + chunk]
                                             for start in range(0, len(order), chunk))])
    groups = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    if bucket and shuffle:
        # Otherwise every chunk would run from short to long reviews.
        groups = [groups[index] for index in rng.permutation(len(groups))]
    return groups


def _check_sharding(sharding, batch_size: int) -> None:
    if (not isinstance(sharding, NamedSharding) or not len(sharding.spec)
            or sharding.spec[0] != DATA_AXIS):
        raise ValueError(f"sharding must be a NamedSharding that splits the batch axis "
                         f"over mesh axis "
                         f"{DATA_AXIS!r}, e.g. NamedSharding(mesh, PartitionSpec({DATA_AXIS!r})); "
                         f"got {sharding!r}")
    devices = sharding.mesh.shape[DATA_AXIS]
    if batch_size % devices:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {devices} devices "
                         f"of mesh axis {DATA_AXIS!r}")


def _batch_shardings(sharding: NamedSharding) -> dict[str, NamedSharding]:
    """``sharding`` per batch entry, its spec cut to the entry's rank (1-D: batch axis only)."""
    spec = tuple(sharding.spec)
    by_rank = {rank: NamedSharding(sharding.mesh, PartitionSpec(*spec[:rank])) for rank in (1, 2)}
    return {"ids": by_rank[2], "lengths": by_rank[1], "labels": by_rank[1], "weights": by_rank[1]}


def batches(split: EncodedSplit, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
            drop_remainder: bool, bucket: bool = False, bucket_width: int = 0,
            padding: str = "post", sharding=None, start_batch: int = 0) -> Iterator[dict]:
    """Iterates over one epoch of ``split`` in batches of ``batch_size``.

    Each batch is a dict of ``"ids"`` ``(batch, time)`` int32, ``"lengths"``
    ``(batch,)`` int32, ``"labels"`` ``(batch,)`` float32 and ``"weights"``
    ``(batch,)`` float32: 1 for a real example, 0 for a row that only fills the
    short batch (when not ``drop_remainder``), so weighted sums count every
    example exactly once. Filler rows repeat real rows of their batch rather than
    zeros, so no model sees an all-padding (length 0) review.

    Args:
      shuffle: order drawn from ``(seed, epoch)``: the same run after run, new every epoch.
      drop_remainder: drop the partial last batch instead of padding it.
      bucket: sort by length within chunks of ``BUCKET_CHUNK_BATCHES`` batches
        (with ``shuffle``, the batches are then shuffled, so the short one may come early).
      bucket_width: > 0 buckets (as ``bucket``) and trims each batch's ``ids`` to
        ``(batch, bucket_length(longest, time, bucket_width))`` (module docstring); the
        examples and their order are those of ``bucket=True``.
      padding: the side of the padding zeros in ``split.ids`` (``"pre"`` or ``"post"``),
        where trimming cuts; used only with ``bucket_width``.
      sharding: a ``jax.sharding.NamedSharding`` over a mesh whose axis ``"data"``
        splits the batch (``batch_size`` must divide by its size); the arrays are
        then ``jax.Array``s laid out over the mesh's devices (single process).
        None yields numpy arrays.
      start_batch: skip this many batches of the epoch (resuming mid-epoch).

    Raises:
      ValueError: at the call (not at the first batch) for a bad ``start_batch``,
        ``bucket_width``, ``padding`` or ``sharding``.
    """
    total = num_batches(len(split), batch_size, drop_remainder)
    if not 0 <= start_batch <= total:
        raise ValueError(f"start_batch must be in [0, {total}], got {start_batch}")
    if (not isinstance(bucket_width, (int, np.integer)) or isinstance(bucket_width, bool)
            or bucket_width < 0):
        raise ValueError(f"bucket_width must be an int >= 0 (0: no trimming), got {bucket_width!r}")
    check_padding_side("padding", padding)
    if sharding is not None:
        _check_sharding(sharding, batch_size)
    groups = _batch_indices(split.lengths, batch_size, shuffle, seed, epoch, drop_remainder,
                            bucket or bucket_width > 0)
    shardings = _batch_shardings(sharding) if sharding is not None else None
    return _iterate(split, groups[start_batch:], batch_size, bucket_width, padding, shardings)


def _iterate(split: EncodedSplit, groups: list[np.ndarray], batch_size: int, bucket_width: int,
             padding: str, shardings: dict[str, NamedSharding] | None) -> Iterator[dict]:
    for indices in groups:
        weights = np.zeros(batch_size, dtype=np.float32)
        weights[:len(indices)] = 1.0
        rows = np.resize(indices, batch_size)  # cycles the real rows to fill a short batch
        lengths = split.lengths[rows]
        batch = {"ids": trim_padding(split.ids[rows], lengths, bucket_width, padding),
                 "lengths": lengths,
                 "labels": split.labels[rows].astype(np.float32), "weights": weights}
        yield jax.device_put(batch, shardings) if shardings else batch
