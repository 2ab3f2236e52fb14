"""A run directory holding a tiny untrained classifier, written without training (fast)."""

from __future__ import annotations

from pathlib import Path

import jax
from flax import nnx

from stackrnn_jax import run_dir
from stackrnn_jax.config import TrainConfig
from stackrnn_jax.data import Vocabulary
from stackrnn_jax.train import create_model

TEXTS = ["a great and wonderful film, I loved it", "an awful boring movie, the plot was bad",
         "the actors were great but the story was boring", "wonderful wonderful wonderful"]


def make_run(workdir: Path, **fields) -> Path:
    """``workdir`` with config.json, vocab.json (built from ``TEXTS``) and a best epoch whose
    weights are the initial ones scaled by 3, so that probabilities differ from 0.5 clearly."""
    config = TrainConfig(**{"num_words": 20, "maxlen": 12, "units": 8, "embed_dim": 6,
                            "mask": True, **fields})
    model = create_model(config)
    params = jax.tree.map(lambda a: 3.0 * a, nnx.state(model, nnx.Param))
    run_dir.write_json(workdir / run_dir.CONFIG, config.to_dict())
    Vocabulary.build(TEXTS, config.num_words).save(workdir / run_dir.VOCAB)
    run_dir.save_best(workdir, params, {"epoch": 1, "val_accuracy": 0.5})
    return workdir
