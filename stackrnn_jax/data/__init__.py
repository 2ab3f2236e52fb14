"""IMDB data: raw reviews (tfds), word vocabulary, encoded cached splits, and batches."""

from stackrnn_jax.data.batches import batches, bucket_length, num_batches, trim_padding
from stackrnn_jax.data.imdb import DataError, load_imdb_texts
from stackrnn_jax.data.pipeline import (
                                        EncodedIMDB,
                                        EncodedSplit,
                                        check_reviews,
                                        describe_validation,
                                        load_encoded,
                                        split_validation,
)
from stackrnn_jax.data.tokenizer import Vocabulary, tokenize

__all__ = [
    "DataError",
    "EncodedIMDB",
    "EncodedSplit",
    "Vocabulary",
    "batches",
    "bucket_length",
    "check_reviews",
    "describe_validation",
    "load_encoded",
    "load_imdb_texts",
    "num_batches",
    "split_validation",
    "tokenize",
    "trim_padding",
]
