"""Shared by the test modules: error measures, the cell list, tiny training problems, a
tiny aclImdb archive for the CLI and its one-line errors, resumable runs, and a tiny run
directory.

Test modules import from here (``pythonpath`` in pyproject.toml puts the repository root
on ``sys.path``), never from each other.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from stackrnn_jax import run_dir, train
from stackrnn_jax.checkpoints import TrainCheckpoints
from stackrnn_jax.cli import main
from stackrnn_jax.config import TrainConfig
from stackrnn_jax.data import EncodedSplit, Vocabulary

CELLS = ["simple", "lstm", "gru"]

# A training run small enough for a unit test: 20-word vocabulary, 12 steps, 8 units.
TRAIN_CONFIG = TrainConfig(num_words=20, maxlen=12, embed_dim=8, units=8, batch_size=16,
                           epochs=3, learning_rate=1e-2, mask=True, log_every=4)


def max_error(ours, theirs) -> float:
    """Largest absolute difference over matching leaves of two pytrees, in float64."""
    pairs = zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True)
    return max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
               for a, b in pairs)


def synthetic_split(n: int, seed: int, maxlen: int = 12) -> EncodedSplit:
    """``n`` pre-padded reviews of ids 4..19; the positive ones hold the id 3 somewhere."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, maxlen + 1, n).astype(np.int32)
    labels = (np.arange(n) % 2).astype(np.int32)
    ids = np.zeros((n, maxlen), np.int32)
    for row, (length, label) in enumerate(zip(lengths, labels)):
        tokens = rng.integers(4, 20, length)
        if label:
            tokens[rng.integers(length)] = 3
        ids[row, maxlen - length:] = tokens
    return EncodedSplit(ids, lengths, labels)


# --- the stackrnn command on a tiny synthetic archive (tests/test_cli.py, test_faults.py)

PER_CLASS = 101  # per label and split: 202 test reviews, so the last batch of 8 is padded
FILLER = "the a movie film plot actor scene story it was and of this".split()
TINY = ["--num-words", "40", "--maxlen", "16", "--units", "8", "--embed-dim", "8",
        "--batch-size", "8", "--epochs", "3", "--lr", "0.02", "--mask", "--no-progress"]


def write_archive(path, seed=0, empty=0, movies=False):
    """aclImdb/{train,test}/{pos,neg}/*.txt: positives say "great wonderful", negatives
    "awful boring".

    The first ``empty`` reviews of each split and label are empty files. With ``movies``,
    urls_{pos,neg}.txt name a movie per review: reviews 4k to 4k+3 of both labels share one.
    """
    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w:gz") as archive:
        for split in ("train", "test"):
            for label in ("pos", "neg") if movies else ():
                data = "".join(f"http://www.imdb.com/title/tt{1000 + index // 4:07d}/usercomments\n"
                               for index in range(PER_CLASS)).encode()
                member = tarfile.TarInfo(f"aclImdb/{split}/urls_{label}.txt")
                member.size = len(data)
                archive.addfile(member, io.BytesIO(data))
            for label, words in (("pos", "great wonderful"), ("neg", "awful boring")):
                for index in range(PER_CLASS):
                    filler = " ".join(rng.choice(FILLER, rng.integers(3, 10)))
                    data = f"{filler} {words} {filler}.".encode() if index >= empty else b""
                    member = tarfile.TarInfo(f"aclImdb/{split}/{label}/"
                                             f"{index}_{7 if label == 'pos' else 2}.txt")
                    member.size = len(data)
                    archive.addfile(member, io.BytesIO(data))
    return path


BAD_INPUTS = [  # (argv, exit status, part of the error line)
    (["train", "--workdir", "w", "--cell", "transformer"], 2, "invalid choice"),
    (["train", "--workdir", "w", "--strategy", "nope"], 2, "invalid choice"),
    (["train", "--workdir", "w", "--epochs", "many"], 2, "invalid int value"),
    (["train", "--workdir", "w", "--dropout", "1.5"], 1, "dropout: expected a rate"),
    (["train", "--workdir", "w", "--val-split", "title"], 2, "invalid choice"),
    (["train", "--workdir", "w", "--config", "missing.toml"], 1, "cannot read it"),
    (["frobnicate"], 2, "invalid choice"),
    (["evaluate", "--workdir", "nothing-here"], 1, "no trained run in nothing-here"),
    (["predict", "--workdir", "nothing-here", "good"], 1, "no trained run in nothing-here"),
    (["predict", "--workdir", "nothing-here"], 1, "no review given"),
    (["predict", "--workdir", "nothing-here", "   "], 1, "review 1 is empty"),
]


# --- resumable runs of TRAIN_CONFIG (tests/test_resume.py and others)

# 13 steps per epoch (200 / 16, the last batch padded); dropout exercises the saved RNG state.
RESUMABLE = TRAIN_CONFIG.replace(dropout=0.2, checkpoint_every=3, keep_checkpoints=3,
                                epochs=3)
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "skipped_steps")


def run_fit(workdir, config=RESUMABLE, *, resume=True):
    run_dir.prepare(workdir, config)
    return train.fit(config, synthetic_split(200, 0), synthetic_split(64, 1), workdir,
                     progress=False, out=open(os.devnull, "w"), resume=resume)


def final_state(workdir, config=RESUMABLE):
    """The newest resumable checkpoint's arrays (params, optimizer state, RNG), as NumPy."""
    from flax import nnx

    model = train.create_model(config)
    optimizer = nnx.Optimizer(model, train.create_optimizer(config, 39), wrt=nnx.Param)
    template = nnx.split((model, optimizer))[1]
    checkpoints = TrainCheckpoints(workdir, keep=config.keep_checkpoints,
                                   identity=run_dir.identity(config))
    state, position = checkpoints.restore_latest(template)
    checkpoints.close()
    arrays = jax.tree.map(lambda a: np.asarray(jax.random.key_data(a) if jax.dtypes.issubdtype(
        a.dtype, jax.dtypes.prng_key) else a), nnx.to_pure_dict(state))
    return arrays, position


def inject(monkeypatch, at_epoch, at_batch, action):
    """Call ``action(batch)`` on the training batch ``at_batch`` (1-based) of ``at_epoch``."""
    original = train.batches

    def patched(split, batch_size, **options):
        iterator = original(split, batch_size, **options)
        if not options.get("shuffle") or options.get("epoch") != at_epoch:
            return iterator
        return (action(batch) if index == at_batch else batch
                for index, batch in enumerate(iterator, start=options.get("start_batch", 0) + 1))

    monkeypatch.setattr(train, "batches", patched)


# --- a run directory without training (tests/test_export.py, test_explain.py)

TEXTS = ["a great and wonderful film, I loved it", "an awful boring movie, the plot was bad",
         "the actors were great but the story was boring", "wonderful wonderful wonderful"]


def make_run(workdir: Path, **fields) -> Path:
    """``workdir`` with config.json, vocab.json (built from ``TEXTS``) and a best epoch whose
    weights are the initial ones scaled by 3, so that probabilities differ from 0.5 clearly."""
    config = TrainConfig(**{"num_words": 20, "maxlen": 12, "units": 8, "embed_dim": 6,
                            "mask": True, **fields})
    model = train.create_model(config)
    params = jax.tree.map(lambda a: 3.0 * a, nnx.state(model, nnx.Param))
    run_dir.write_json(workdir / run_dir.CONFIG, config.to_dict())
    Vocabulary.build(TEXTS, config.num_words).save(workdir / run_dir.VOCAB)
    run_dir.save_best(workdir, params, {"epoch": 1, "val_accuracy": 0.5})
    return workdir


def fails_with_one_line(capture, argv, status=1):
    """Run the CLI on ``argv``; assert it ended with ``status`` and one ``error:`` line on
    stderr, no traceback; return that line. ``capture``: pytest's ``capsys``, or ``capfd``
    where native code's output on file descriptor 2 must count too."""
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse usage errors
        code = exit.code
    err = capture.readouterr().err
    assert code == status, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err.strip()
