"""Encoded IMDB splits, cached on disk: raw texts -> vocabulary -> padded id arrays."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from stackrnn_jax.data.imdb import (
    SPLITS,
    UNKNOWN_MOVIE,
    DataError,
    Source,
    load_texts,
    resolve_source,
)
from stackrnn_jax.data.tokenizer import TOKENIZER_VERSION, Vocabulary, check_padding_side, tokenize

DEFAULT_CACHE_DIR = Path("~/.cache/stackrnn_jax/encoded")
MIN_REVIEWS = 100  # fewer reviews with words than this: the data source is broken, not small
_CACHE_FORMAT = 2  # bump when the .npz layout changes (2: the movies arrays)
VAL_SPLITS = ("random", "movie")  # how split_validation holds reviews out

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)  # eq would compare arrays elementwise
class EncodedSplit:
    """One split as int32 arrays.

    ``ids`` ``(num_reviews, maxlen)``, ``lengths`` ``(num_reviews,)`` (non-padding ids
    per review), ``labels`` ``(num_reviews,)`` (1 = positive) and ``movies``
    ``(num_reviews,)`` (IMDb title numbers; -1 where unknown, and everywhere when not given).
    """

    ids: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray
    movies: np.ndarray = None  # type: ignore[assignment]  # None: filled with -1 below

    def __post_init__(self):
        if self.movies is None:  # frozen: the one place the field is set after __init__
            object.__setattr__(self, "movies", np.full(len(self.labels), UNKNOWN_MOVIE, np.int32))

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> EncodedSplit:
        """The reviews at ``indices`` (in that order)."""
        return EncodedSplit(self.ids[indices], self.lengths[indices], self.labels[indices],
                            self.movies[indices])


@dataclasses.dataclass(frozen=True, eq=False)
class EncodedIMDB:
    """Both splits encoded with the train split's vocabulary; ``padding``: side of the zeros."""

    train: EncodedSplit
    test: EncodedSplit
    vocab: Vocabulary
    padding: str
    maxlen: int


def _cache_path(cache_dir: Path, source: Source, settings: dict) -> Path:
    key = {"source": source.identity, "format": _CACHE_FORMAT, "tokenizer": TOKENIZER_VERSION,
           **settings}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return cache_dir / f"imdb-{digest[:16]}.npz"


def _save(path: Path, encoded: EncodedIMDB) -> None:
    """Writes ``encoded`` as one uncompressed ``.npz`` (fast to load), atomically."""
    # uint16 ids halve the file (10k words fit); they are widened back on load.
    id_dtype = np.uint16 if encoded.vocab.num_words <= np.iinfo(np.uint16).max + 1 else np.int32
    arrays = {"num_words": np.int64(encoded.vocab.num_words),
              "words": np.array(encoded.vocab.words, dtype=str)}
    for name in SPLITS:
        split = getattr(encoded, name)
        arrays |= {f"{name}_ids": split.ids.astype(id_dtype), f"{name}_lengths": split.lengths,
                   f"{name}_labels": split.labels, f"{name}_movies": split.movies}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(partial, "wb") as file:  # a file object: np.savez would append ".npz" to a name
        np.savez(file, **arrays)
    os.replace(partial, path)


def _load(path: Path, padding: str, maxlen: int) -> EncodedIMDB:
    with np.load(path, allow_pickle=False) as arrays:
        splits = {name: EncodedSplit(arrays[f"{name}_ids"].astype(np.int32),
                                     arrays[f"{name}_lengths"], arrays[f"{name}_labels"],
                                     arrays[f"{name}_movies"])
                  for name in SPLITS}
        vocab = Vocabulary(int(arrays["num_words"]), tuple(arrays["words"].tolist()))
    return EncodedIMDB(**splits, vocab=vocab, padding=padding, maxlen=maxlen)


def load_encoded(data: str | os.PathLike | None = None, *, num_words: int = 10_000,
                 maxlen: int = 500, padding: str = "pre", truncating: str | None = None,
                 cache_dir: str | os.PathLike | None = None,
                 data_dir: str | os.PathLike | None = None) -> EncodedIMDB:
    """IMDB train and test encoded with a ``num_words`` vocabulary built on train.

    Args:
      data: local copy of the reviews, as for :func:`~stackrnn_jax.data.load_imdb_texts`.
      num_words: ids stay below this (3 reserved ids included).
      maxlen: time steps per review; longer reviews are cut, shorter padded with 0.
      padding: ``"pre"`` (Keras' default) or ``"post"``: side of the padding zeros.
      truncating: side cut from long reviews; defaults to ``padding``.
      cache_dir: where the encoded ``.npz`` lives; default ``~/.cache/stackrnn_jax/encoded``.
        The file name hashes the source identity and all settings above.
      data_dir: tfds data_dir, as for :func:`~stackrnn_jax.data.load_imdb_texts`.

    Returns:
      An :class:`EncodedIMDB` whose splits hold ``ids`` ``(num_reviews, maxlen)``.
    """
    truncating = truncating or padding
    check_padding_side("padding", padding)  # before minutes of work, not after
    check_padding_side("truncating", truncating)
    source = resolve_source(data)
    settings = {"num_words": num_words, "maxlen": maxlen, "padding": padding,
                "truncating": truncating}
    path = _cache_path(Path(cache_dir or DEFAULT_CACHE_DIR).expanduser(), source, settings)
    if path.exists():
        return _load(path, padding, maxlen)

    log.info("Encoding IMDB into %s", path)
    reviews = load_texts(source, data_dir)
    train_tokens = [tokenize(text) for text in reviews["train"].texts]  # once: vocab and ids
    vocab = Vocabulary.from_tokens(train_tokens, num_words)
    train = EncodedSplit(*vocab.encode_tokens(train_tokens, maxlen, padding, truncating),
                         reviews["train"].labels, reviews["train"].movies)
    test = EncodedSplit(*vocab.encode(reviews["test"].texts, maxlen, padding, truncating),
                        reviews["test"].labels, reviews["test"].movies)
    encoded = EncodedIMDB(train=train, test=test, vocab=vocab, padding=padding, maxlen=maxlen)
    _save(path, encoded)
    return encoded


def split_validation(split: EncodedSplit, fraction: float, seed: int,
                     by: str = "random") -> tuple[EncodedSplit, EncodedSplit]:
    """Holds out about ``fraction`` of ``split`` (the train split) for validation, per label.

    ``by="random"``: each label gives ``round(fraction * count)`` reviews at random.
    ``by="movie"``: whole movies are held out, so that no movie has reviews on both sides
    (IMDB's test split is made of other movies than its train split; a validation split
    that shares movies with training rewards learning their names, not the sentiment).
    Without the movie of every review (``movies`` -1) it warns and holds out at random.
    Either way deterministic for a ``seed``, and both parts keep the original order.

    Returns:
      ``(train_part, validation_part)``.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    if by not in VAL_SPLITS:
        raise ValueError(f"validation split: expected one of {', '.join(VAL_SPLITS)}; got {by!r}")
    unknown = int(np.count_nonzero(split.movies == UNKNOWN_MOVIE))
    if by == "movie" and unknown:
        warnings.warn(f"val_split=movie: {unknown} of the {len(split)} train reviews have no "
                      "movie (aclImdb/train/urls_pos.txt and urls_neg.txt missing or short in "
                      "this copy of IMDB); validation reviews are held out at random instead, "
                      "so they may share movies with training", stacklevel=2)
        by = "random"
    rng = np.random.default_rng(seed)
    is_validation = (_movies_held_out(split, fraction, rng) if by == "movie"
                     else _reviews_held_out(split.labels, fraction, rng))
    if is_validation.all() or not is_validation.any():
        raise ValueError(f"validation fraction {fraction} leaves one part empty "
                         f"for {len(split)} reviews")
    return split.take(np.flatnonzero(~is_validation)), split.take(np.flatnonzero(is_validation))


def _reviews_held_out(labels: np.ndarray, fraction: float, rng: np.random.Generator
                      ) -> np.ndarray:
    """Per review, whether it is held out: ``round(fraction * count)`` of each label."""
    is_validation = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        is_validation[rng.permutation(members)[:round(fraction * len(members))]] = True
    return is_validation


def _movies_held_out(split: EncodedSplit, fraction: float, rng: np.random.Generator
                     ) -> np.ndarray:
    """Per review, whether it is held out: whole movies, in a random order, each taken if
    no label then exceeds ``round(fraction * count)`` of its reviews.

    A movie has reviews of both labels, so the labels cannot be split one by one; taking
    a movie only while every label stays within its share keeps validation balanced, and
    with thousands of movies of at most 30 reviews each the shares are met to within a
    few reviews.
    """
    movies, movie_of = np.unique(split.movies, return_inverse=True)
    labels, label_of = np.unique(split.labels, return_inverse=True)
    counts = np.zeros((len(movies), len(labels)), np.int64)  # reviews per movie and label
    np.add.at(counts, (movie_of, label_of), 1)
    room = np.array([round(fraction * total) for total in counts.sum(axis=0)])
    held = np.zeros(len(movies), dtype=bool)
    for movie in rng.permutation(len(movies)):
        if (counts[movie] <= room).all():
            held[movie] = True
            room -= counts[movie]
    return held[movie_of]


def describe_validation(train: EncodedSplit, val: EncodedSplit) -> str:
    """One line: the reviews validation holds (share of each label) and their movies."""
    labels, totals = np.unique(np.concatenate([train.labels, val.labels]), return_counts=True)
    shares = ", ".join(f"label {label}: {np.count_nonzero(val.labels == label) / total:.1%}"
                       for label, total in zip(labels.tolist(), totals.tolist()))
    line = f"Validation: {len(val)} of {len(train) + len(val)} train reviews ({shares})"
    if (val.movies == UNKNOWN_MOVIE).any():
        return f"{line}; movies unknown"
    movies = set(val.movies.tolist())
    shared = len(movies & set(train.movies.tolist()))
    return f"{line}; {len(movies)} movies, {shared} of them also in training"


def check_reviews(split: EncodedSplit, name: str, minimum: int = MIN_REVIEWS) -> None:
    """Refuse a split with fewer than ``minimum`` reviews that hold a word; warn (with
    their count) about the reviews that hold none (only the start id: length 1)."""
    empty = int(np.count_nonzero(split.lengths <= 1))
    if len(split) - empty < minimum:
        raise DataError(f"the {name} split has {len(split) - empty} reviews with words "
                        f"({empty} of {len(split)} are empty); at least {minimum} are needed: "
                        "check the data source (--data)")
    if empty:
        warnings.warn(f"{empty} of the {len(split)} {name} reviews have no words; they are kept "
                      "as empty reviews", stacklevel=2)
