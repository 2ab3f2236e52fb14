"""Using a trained run: load its best epoch, evaluate it on the test split, score new reviews."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx

from stackrnn_jax import run_dir
from stackrnn_jax.config import TrainConfig
from stackrnn_jax.data import (
    EncodedSplit,
    Vocabulary,
    check_reviews,
    load_encoded,
    load_imdb_texts,
    tokenize,
    trim_padding,
)
from stackrnn_jax.nn import SentimentClassifier, SentimentEnsemble
from stackrnn_jax.train import bucketing, create_model, evaluate, make_eval_step, model_logits

# Reviews per forward pass; every pass has this many rows, so one compile per time length
# (maxlen, or each bucket length with the config's bucket_width).
PREDICT_CHUNK = 256


@dataclasses.dataclass
class Run:
    """A trained run, loaded: its config, vocabulary, best-epoch model (eval mode) and best.json."""

    config: TrainConfig
    vocab: Vocabulary
    model: SentimentClassifier | SentimentEnsemble
    best: dict[str, Any]


def load_run(workdir: str | Path) -> Run:
    """The best epoch of the run in ``workdir``; ``run_dir.RunError`` if it is missing or broken."""
    config = run_dir.read_config(workdir)
    vocab = run_dir.read_vocab(workdir)
    if vocab.num_words != config.num_words:
        raise run_dir.RunError(f"{workdir}: vocabulary of {vocab.num_words} words does not match "
                               f"the config's num_words {config.num_words}")
    model = create_model(config)
    params, best = run_dir.restore_best(workdir, nnx.state(model, nnx.Param))
    nnx.update(model, params)
    model.eval()
    return Run(config, vocab, model, best)


def evaluate_run(run: Run, data=None, *, cache_dir=None, data_dir=None) -> dict[str, float]:
    """``{"loss", "accuracy", "examples"}`` on the whole IMDB test split (25,000 reviews).

    The reviews are encoded with the run's saved vocabulary (the cached encoding is used
    when it was built with the same one).
    """
    config = run.config
    encoded = load_encoded(data, num_words=config.num_words, maxlen=config.maxlen,
                           padding=config.padding, truncating=config.truncating,
                           cache_dir=cache_dir, data_dir=data_dir)
    test = encoded.test
    if encoded.vocab != run.vocab:  # trained on another copy of the data: re-encode
        texts, labels = load_imdb_texts(data, data_dir=data_dir)["test"]
        test = EncodedSplit(*run.vocab.encode(texts, config.maxlen, config.padding,
                                              config.truncating), labels)
    check_reviews(test, "test")
    graphdef, state = nnx.split(run.model)
    metrics = evaluate(make_eval_step(graphdef, config), state, test, config.batch_size,
                       **bucketing(config))
    return {**metrics, "examples": len(test)}


def check_texts(texts: Sequence[str]) -> list[str]:
    """The reviews to score, or ValueError if there are none or one is blank or not text."""
    if not texts:
        raise ValueError("no review given: pass review texts as arguments, --file PATH, "
                         "or - for stdin")
    for number, text in enumerate(texts, start=1):
        if not isinstance(text, str) or "\x00" in text:
            raise ValueError(f"review {number} is not text")
        if not text.strip():
            raise ValueError(f"review {number} is empty")
    return list(texts)


def predict_proba(run: Run, texts: Sequence[str]) -> np.ndarray:
    """P(positive) ``(len(texts),)`` float32 for each review text."""
    texts = check_texts(texts)
    config = run.config
    ids, lengths = run.vocab.encode(texts, config.maxlen, config.padding, config.truncating)
    graphdef, state = nnx.split(run.model)

    @jax.jit
    def probabilities(state, ids, lengths):
        model = nnx.merge(graphdef, state)
        return jax.nn.sigmoid(model_logits(model, {"ids": ids, "lengths": lengths}, config))

    chunk = min(PREDICT_CHUNK, len(texts))
    out = []
    for start in range(0, len(texts), chunk):
        # Pad the last chunk by repeating rows: same shape, so no recompile.
        rows = np.resize(np.arange(start, min(start + chunk, len(texts))), chunk)
        chunk_ids = trim_padding(ids[rows], lengths[rows], config.bucket_width, config.padding)
        out.append(np.asarray(probabilities(state, chunk_ids, lengths[rows]))[: len(texts) - start])
    return np.concatenate(out).astype(np.float32)


def unknown_shares(run: Run, texts: Sequence[str]) -> np.ndarray:
    """The share ``(len(texts),)`` of each text's words that the run's vocabulary lacks;
    1.0 for a text with no word at all: its score is the model's answer to no input."""
    shares = []
    for text in texts:
        words = tokenize(text)
        shares.append(sum(word not in run.vocab for word in words) / len(words) if words else 1.0)
    return np.asarray(shares, np.float64)


def label(probability: float) -> str:
    return "positive" if probability >= 0.5 else "negative"
