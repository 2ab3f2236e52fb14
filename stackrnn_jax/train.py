"""Training: model and optimizer from a config, one jitted train step, the epoch loop.

The model and optimizer are split once into a static graphdef and a state pytree;
the train step is one ``jax.jit`` over ``(state, totals, batch)`` that merges,
steps and splits again, so the host does no per-step graph traversal. Metrics are
summed on the device (``totals``) and read back only every ``log_every`` steps.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from tqdm.auto import tqdm

from stackrnn_jax import run_dir
from stackrnn_jax.config import TrainConfig
from stackrnn_jax.data import EncodedSplit, batches, load_encoded, num_batches, split_validation
from stackrnn_jax.nn import SentimentClassifier
from stackrnn_jax.plots import plot_history

Totals = dict  # {"loss": sum of weighted losses, "correct": weighted hits, "count": sum of weights}


def create_model(config: TrainConfig, *, seed: int | None = None) -> SentimentClassifier:
    """The classifier a config describes; ids must stay below ``config.num_words``."""
    return SentimentClassifier(
        config.num_words, config.embed_dim, (config.units,) * config.layers, cell=config.cell,
        bidirectional=config.bidirectional, dropout=config.dropout,
        embed_dropout=config.embed_dropout, strategy=config.strategy, unroll=config.unroll,
        compute_dtype=jnp.bfloat16 if config.dtype == "bfloat16" else None,
        rngs=nnx.Rngs(config.seed if seed is None else seed))


def learning_rate(config: TrainConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup over ``warmup_steps``, then constant or cosine decay to 0 at ``total_steps``."""
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup,
                                                  max(total_steps, warmup + 1))
    if warmup == 0:
        return optax.constant_schedule(config.learning_rate)
    return optax.join_schedules([optax.linear_schedule(0.0, config.learning_rate, warmup),
                                 optax.constant_schedule(config.learning_rate)], [warmup])


def create_optimizer(config: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """Adam on the schedule, after global-norm clipping when ``clip_norm > 0``."""
    adam = optax.adam(learning_rate(config, total_steps))
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), adam) if config.clip_norm else adam


def zero_totals() -> Totals:
    return {"loss": jnp.zeros((), jnp.float32), "correct": jnp.zeros((), jnp.float32),
            "count": jnp.zeros((), jnp.float32)}


def summarize(totals: Totals) -> dict[str, float]:
    """Host-side ``{"loss", "accuracy"}`` means over the counted examples."""
    totals = jax.device_get(totals)
    count = max(float(totals["count"]), 1.0)
    return {"loss": float(totals["loss"]) / count, "accuracy": float(totals["correct"]) / count}


def model_logits(model, batch, config: TrainConfig):
    """Logits ``(B,)`` of ``batch["ids"] (B, T)``; true lengths are passed only with ``config.mask``."""
    lengths = batch["lengths"] if config.mask else None
    return model(batch["ids"], lengths, padding=config.padding)


def _batch_totals(logits, batch, loss) -> Totals:
    """Sums over the real rows of a batch (``weights`` is 0 on rows that only pad it)."""
    weights = batch["weights"]
    hits = (logits > 0) == (batch["labels"] > 0.5)
    return {"loss": jnp.sum(loss * weights), "correct": jnp.sum(hits * weights),
            "count": jnp.sum(weights)}


def make_train_step(graphdef, config: TrainConfig) -> Callable:
    """``step(state, totals, batch) -> (state, totals)``, jitted, inputs donated.

    ``state`` is ``nnx.split((model, optimizer))[1]``; ``batch`` holds ``ids (B, T)``,
    ``lengths (B,)``, ``labels (B,)`` and ``weights (B,)``. Every batch has the same
    shapes (the last one is padded), so the step is traced once.
    """

    def step(state, totals, batch):
        model, optimizer = nnx.merge(graphdef, state)

        def loss_fn(model):
            logits = model_logits(model, batch, config)
            losses = optax.sigmoid_binary_cross_entropy(logits, batch["labels"])
            mean = jnp.sum(losses * batch["weights"]) / jnp.maximum(jnp.sum(batch["weights"]), 1.0)
            return mean, (logits, losses)

        (_, (logits, losses)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        totals = jax.tree.map(jnp.add, totals, _batch_totals(logits, batch, losses))
        return nnx.split((model, optimizer))[1], totals

    return jax.jit(step, donate_argnums=(0, 1))


def make_eval_step(graphdef, config: TrainConfig) -> Callable:
    """``step(model_state, totals, batch) -> totals`` in eval mode (no dropout), jitted."""

    def step(model_state, totals, batch):
        model = nnx.merge(graphdef, model_state)
        model.eval()
        logits = model_logits(model, batch, config)
        losses = optax.sigmoid_binary_cross_entropy(logits, batch["labels"])
        return jax.tree.map(jnp.add, totals, _batch_totals(logits, batch, losses))

    return jax.jit(step, donate_argnums=1)


class Timer:
    """Seconds spent per phase of a loop: inside the jitted step vs data vs logging.

    Dispatch is asynchronous, so data and logging time may overlap the device's work:
    their share of the epoch is an upper bound on the host overhead. "step" includes the
    first call's compile and the waits for the device at each sync.
    """

    def __init__(self):
        self.seconds = {"step": 0.0, "data": 0.0, "log": 0.0}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] += now - self._last
        self._last = now


def train_epoch(step: Callable, state, split: EncodedSplit, config: TrainConfig, epoch: int,
                *, progress: bool = True):
    """One pass over ``split``: ``(state, metrics, Timer)``.

    The progress bar and its device->host sync happen every ``log_every`` steps; the
    wait for the device at a sync is counted as step time, the rest as logging.
    """
    total = num_batches(len(split), config.batch_size, drop_remainder=False)
    bar = tqdm(total=total, desc=f"Epoch {epoch}/{config.epochs}", unit="step", leave=False,
               disable=None if progress else True, dynamic_ncols=True)
    totals, timer = zero_totals(), Timer()
    data = batches(split, config.batch_size, shuffle=True, seed=config.seed, epoch=epoch,
                   drop_remainder=False)
    done = 0
    for index, batch in enumerate(_timed(data, timer), start=1):
        state, totals = step(state, totals, batch)
        timer.lap("step")
        if index % config.log_every == 0 or index == total:
            jax.block_until_ready(totals)
            timer.lap("step")
            running = summarize(totals)
            bar.set_postfix(loss=f"{running['loss']:.4f}", accuracy=f"{running['accuracy']:.4f}",
                            refresh=False)
            bar.update(index - done)
            done = index
            timer.lap("log")
    bar.close()
    timer.lap("log")
    return state, summarize(totals), timer


def evaluate(step: Callable, model_state, split: EncodedSplit, batch_size: int,
             timer: Timer | None = None) -> dict[str, float]:
    """``{"loss", "accuracy"}`` of ``split``, every example counted once (padded last batch)."""
    timer = timer or Timer()
    totals = zero_totals()
    data = batches(split, batch_size, shuffle=False, drop_remainder=False)
    for batch in _timed(data, timer):
        totals = step(model_state, totals, batch)
        timer.lap("step")
    jax.block_until_ready(totals)
    timer.lap("step")
    metrics = summarize(totals)
    timer.lap("log")
    return metrics


def _timed(iterable: Iterable, timer: Timer):
    """Yields from ``iterable``, charging the time spent fetching to ``timer``'s "data"."""
    iterator = iter(iterable)
    while True:
        timer.lap("log")  # whatever ran since the last lap and was not the step
        try:
            item = next(iterator)
        except StopIteration:
            return
        timer.lap("data")
        yield item


def fit(config: TrainConfig, train: EncodedSplit, val: EncodedSplit, workdir: str | Path,
        *, progress: bool = True, out=None) -> dict[str, Any]:
    """Train for ``config.epochs`` epochs, keep the best epoch by validation accuracy.

    Writes into ``workdir`` (already ``run_dir.prepare``d): the best epoch's parameters,
    ``history.json``/``.csv`` after every epoch and ``history.png`` at the end.
    Prints one Keras-style line per epoch to ``out`` (default stdout).

    Returns:
      the history: ``{"config", "epochs": [per-epoch metrics and timings], "best_epoch",
      "best_val_accuracy", "outside_share", ...}``.
    """
    out = out or sys.stdout
    workdir = Path(workdir)
    steps = num_batches(len(train), config.batch_size, drop_remainder=False)
    model = create_model(config)
    optimizer = nnx.Optimizer(model, create_optimizer(config, steps * config.epochs), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    train_step = make_train_step(graphdef, config)
    eval_step = make_eval_step(nnx.graphdef(model), config)
    history: dict[str, Any] = {"config": config.to_dict(), "train_examples": len(train),
                               "val_examples": len(val), "steps_per_epoch": steps,
                               "epochs": [], "best_epoch": None, "best_val_accuracy": None}
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        state, metrics, timer = train_epoch(train_step, state, train, config, epoch, progress=progress)
        train_s = time.perf_counter() - start
        val_metrics = evaluate(eval_step, state[0], val, config.batch_size, timer)
        row = _epoch_row(epoch, metrics, val_metrics, timer, train_s, time.perf_counter() - start, steps)
        history["epochs"].append(row)
        print(f"Epoch {epoch}/{config.epochs} - {row['time_s']:.0f}s - loss: {row['loss']:.4f} - "
              f"accuracy: {row['accuracy']:.4f} - val_loss: {row['val_loss']:.4f} - "
              f"val_accuracy: {row['val_accuracy']:.4f}", file=out, flush=True)
        if history["best_epoch"] is None or row["val_accuracy"] > history["best_val_accuracy"]:
            history["best_epoch"], history["best_val_accuracy"] = epoch, row["val_accuracy"]
            run_dir.save_best(workdir, state[0].filter(nnx.Param),
                              {k: row[k] for k in ("epoch", "val_loss", "val_accuracy")})
        run_dir.write_history(workdir, _with_totals(history))
    history = _with_totals(history)
    run_dir.write_history(workdir, history)
    plot_history(history["epochs"], workdir / run_dir.PLOT)
    print(f"Best epoch: {history['best_epoch']} (val_accuracy {history['best_val_accuracy']:.4f}); "
          f"{100 * history['outside_share']:.1f}% of the time outside the jitted steps "
          f"(data {history['data_s']:.1f}s, logging {history['log_s']:.1f}s of "
          f"{history['time_s']:.0f}s); run saved in {workdir}", file=out, flush=True)
    return history


def train_and_evaluate(config: TrainConfig, workdir: str | Path, data=None, *,
                       overwrite: bool = False, cache_dir=None, data_dir=None,
                       progress: bool = True, out=None) -> dict[str, Any]:
    """The whole ``stackrnn train``: prepare ``workdir``, load and split IMDB, ``fit``.

    The validation split is held out of the TRAIN reviews (``config.val_fraction``);
    the test split is never looked at here.
    """
    workdir = run_dir.prepare(workdir, config, overwrite=overwrite)
    encoded = load_encoded(data, num_words=config.num_words, maxlen=config.maxlen,
                           padding=config.padding, truncating=config.truncating,
                           cache_dir=cache_dir, data_dir=data_dir)
    encoded.vocab.save(workdir / run_dir.VOCAB)
    train, val = split_validation(encoded.train, config.val_fraction, config.seed)
    return fit(config, train, val, workdir, progress=progress, out=out)


def _epoch_row(epoch, metrics, val_metrics, timer: Timer, train_s, time_s, steps) -> dict:
    seconds = timer.seconds
    return {"epoch": epoch, "loss": metrics["loss"], "accuracy": metrics["accuracy"],
            "val_loss": val_metrics["loss"], "val_accuracy": val_metrics["accuracy"],
            "time_s": time_s, "train_s": train_s, "steps_per_s": steps / train_s,
            "step_s": seconds["step"], "data_s": seconds["data"], "log_s": seconds["log"],
            "outside_share": (seconds["data"] + seconds["log"]) / time_s}


def _with_totals(history: dict) -> dict:
    """Whole-run timings: seconds per phase and the share spent outside the jitted steps."""
    rows = history["epochs"]
    sums = {k: math.fsum(row[k] for row in rows) for k in ("time_s", "step_s", "data_s", "log_s")}
    return {**history, **sums, "seconds_per_epoch": sums["time_s"] / max(len(rows), 1),
            "outside_share": (sums["data_s"] + sums["log_s"]) / max(sums["time_s"], 1e-9)}
