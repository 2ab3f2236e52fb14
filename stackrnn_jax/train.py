"""Training: model and optimizer from a config, one jitted train step, the epoch loop.

The model and optimizer are split once into a static graphdef and a state pytree;
the train step is one ``jax.jit`` over ``(state, totals, batch)`` that merges,
steps and splits again, so the host does no per-step graph traversal. Metrics are
summed on the device (``totals``) and read back only every ``log_every`` steps.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, TypedDict, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from stackrnn_jax import averaging, clipping, distributed, memory, run_dir
from stackrnn_jax.checkpoints import TrainCheckpoints
from stackrnn_jax.config import TrainConfig
from stackrnn_jax.data import (
    EncodedSplit,
    Vocabulary,
    batches,
    check_reviews,
    describe_validation,
    load_encoded,
    num_batches,
    split_validation,
)
from stackrnn_jax.interrupts import StopRequests, TrainingInterrupted
from stackrnn_jax.nn import SentimentClassifier, SentimentEnsemble
from stackrnn_jax.plots import plot_history
from stackrnn_jax.scalars import open_log


class Totals(TypedDict):
    """Sums over an epoch's counted examples, kept on the device between host syncs (a
    pytree: a plain dict at run time). Each is a scalar array."""

    loss: jax.Array             # weighted losses
    correct: jax.Array          # weighted hits
    count: jax.Array            # weights
    nonfinite: jax.Array        # steps whose loss or gradients were NaN/Inf (update skipped)
    first_nonfinite: jax.Array  # the first such step, NO_STEP if none
    grad_norm: jax.Array        # global gradient norms of the finite steps, before clipping


NO_STEP = np.iinfo(np.int32).max


class NonFiniteError(ValueError):
    """The loss or the gradients became NaN/Inf (``on_nonfinite="stop"``); one line for the user."""


def create_model(config: TrainConfig, *, seed: int | None = None
                 ) -> SentimentClassifier | SentimentEnsemble:
    """The classifier a config describes (an ensemble with ``members > 1``, its first
    member the single model of the same seed); ids must stay below ``config.num_words``."""
    seed = config.seed if seed is None else seed
    if config.members == 1:
        return _classifier(config, seed)
    return SentimentEnsemble([_classifier(config, member_seed(seed, k))
                              for k in range(config.members)])


def member_seed(seed: int, member: int) -> int:
    """Member ``member``'s seed in an ensemble of seed ``seed`` (member 0: ``seed`` itself)."""
    if member == 0:
        return seed
    return int(np.random.SeedSequence([seed, member]).generate_state(1)[0])


def _classifier(config: TrainConfig, seed: int) -> SentimentClassifier:
    return SentimentClassifier(
        config.num_words, config.embed_dim, (config.units,) * config.layers, cell=config.cell,
        bidirectional=config.bidirectional, pooling=config.pooling, dropout=config.dropout,
        embed_dropout=config.embed_dropout, word_dropout=config.word_dropout,
        weight_dropout=config.weight_dropout, strategy=config.strategy, unroll=config.unroll,
        compute_dtype=jnp.bfloat16 if config.dtype == "bfloat16" else None,
        rngs=nnx.Rngs(seed))


def learning_rate(config: TrainConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup over ``warmup_steps``, then constant or cosine decay to 0 at
    ``total_steps``."""
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup,
                                                  max(total_steps, warmup + 1))
    if warmup == 0:
        return optax.constant_schedule(config.learning_rate)
    return optax.join_schedules([optax.linear_schedule(0.0, config.learning_rate, warmup),
                                 optax.constant_schedule(config.learning_rate)], [warmup])


def create_optimizer(config: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """Adam on the schedule (AdamW when ``weight_decay > 0``), after global-norm clipping
    when ``clip_norm > 0`` (of each ensemble member's gradients on their own); then the
    weights' moving average when ``average_decay > 0``."""
    schedule = learning_rate(config, total_steps)
    adam = (optax.adamw(schedule, weight_decay=config.weight_decay) if config.weight_decay
            else optax.adam(schedule))
    clip = (optax.clip_by_global_norm if config.members == 1 else clipping.clip_each_member)
    chain = [clip(config.clip_norm)] if config.clip_norm else []
    chain.append(adam)
    if config.average_decay:
        chain.append(averaging.track_average(config.average_decay))
    return chain[0] if len(chain) == 1 else optax.chain(*chain)


def evaluated_weights(state, config: TrainConfig):
    """The model state that validation scores and the run keeps: the moving average of the
    weights with ``average_decay``, else the last step's (``state[0]``)."""
    if not config.average_decay:
        return state[0]
    return averaging.averaged_model_state(state, config.average_decay)


def zero_totals() -> Totals:
    return {"loss": jnp.zeros((), jnp.float32), "correct": jnp.zeros((), jnp.float32),
            "count": jnp.zeros((), jnp.float32), "nonfinite": jnp.zeros((), jnp.int32),
            "first_nonfinite": jnp.full((), NO_STEP, jnp.int32),
            "grad_norm": jnp.zeros((), jnp.float32)}


def summarize(totals: Totals) -> dict[str, float]:
    """Host-side ``{"loss", "accuracy"}`` means over the counted examples."""
    totals = jax.device_get(totals)
    count = max(float(totals["count"]), 1.0)
    return {"loss": float(totals["loss"]) / count, "accuracy": float(totals["correct"]) / count}


def model_logits(model, batch, config: TrainConfig):
    """Logits ``(B,)`` of ``batch["ids"] (B, T)`` (an ensemble's: the mean of its
    members'); true lengths are passed only with ``config.mask``."""
    lengths = batch["lengths"] if config.mask else None
    return model(batch["ids"], lengths, padding=config.padding)


def member_logits(model, batch, config: TrainConfig):
    """Each member's logits ``(members, B)`` (a single classifier: ``(1, B)``)."""
    if isinstance(model, SentimentEnsemble):
        lengths = batch["lengths"] if config.mask else None
        return model.member_logits(batch["ids"], lengths, padding=config.padding)
    return model_logits(model, batch, config)[None]


def _batch_totals(logits, batch, loss) -> dict[str, jax.Array]:
    """The loss, correct and count sums over the real rows of a batch (``weights`` is 0 on
    rows that only pad it)."""
    weights = batch["weights"]
    hits = (logits > 0) == (batch["labels"] > 0.5)
    return {"loss": jnp.sum(loss * weights), "correct": jnp.sum(hits * weights),
            "count": jnp.sum(weights)}


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def make_train_step(graphdef, config: TrainConfig, replicated=None) -> jax.stages.Wrapped:
    """``step(state, totals, batch, step_index) -> (state, totals)``, jitted, inputs donated.

    ``state`` is ``nnx.split((model, optimizer))[1]``; ``batch`` holds ``ids (B, T)``,
    ``lengths (B,)``, ``labels (B,)`` and ``weights (B,)``. Every batch has the same
    ``B`` (the last one is padded) and ``T`` is ``maxlen`` or, with ``bucket_width``, one
    of a few bucket lengths, so the step is traced once per length. A step whose loss or
    gradients are not finite leaves ``state`` unchanged and is counted in
    ``totals["nonfinite"]`` (its index in ``"first_nonfinite"``) instead of its metrics.
    ``replicated``: the sharding of state and totals (data parallelism), or None.
    """

    def step(state, totals, batch, step_index):
        before = jax.tree.leaves(state)  # the arrays: merge's Variables are updated in place
        model, optimizer = nnx.merge(graphdef, state)

        def loss_fn(model):
            # The sum of the members' mean losses: each member's gradient is that of its
            # own loss, as if it trained alone. The totals count the ensemble's prediction
            # (the mean logit), as validation does.
            members = member_logits(model, batch, config)
            weights = batch["weights"]
            member_losses = optax.sigmoid_binary_cross_entropy(members, batch["labels"])
            objective = jnp.sum(member_losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)
            logits = jnp.mean(members, axis=0)
            losses = (member_losses[0] if len(members) == 1 else
                      optax.sigmoid_binary_cross_entropy(logits, batch["labels"]))
            return objective, (logits, losses)

        (loss, (logits, losses)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        finite = jnp.isfinite(loss) & _all_finite(grads)
        optimizer.update(model, grads)
        after, treedef = jax.tree.flatten(nnx.split((model, optimizer))[1])
        # A bad step must not reach the weights or Adam's moments: keep the old values
        # (counters and RNG keys advance either way, so the next step draws new dropout masks).
        new_state = jax.tree.unflatten(treedef, [
            jnp.where(finite, new, old) if jnp.issubdtype(new.dtype, jnp.inexact) else new
            for new, old in zip(after, before, strict=True)])
        counted = jax.tree.map(lambda t: jnp.where(finite, t, jnp.zeros_like(t)),
                               _batch_totals(logits, batch, losses))
        totals = {**jax.tree.map(jnp.add, {k: totals[k] for k in counted}, counted),
                  "nonfinite": totals["nonfinite"] + (~finite).astype(jnp.int32),
                  "grad_norm": totals["grad_norm"] + jnp.where(finite, optax.tree.norm(grads),
                                                               0.0),
                  "first_nonfinite": jnp.where(finite, totals["first_nonfinite"],
                                               jnp.minimum(totals["first_nonfinite"], step_index))}
        return new_state, totals

    shardings: dict[str, Any] = ({} if replicated is None
                                 else {"out_shardings": (replicated, replicated)})
    return jax.jit(step, donate_argnums=(0, 1), **shardings)


def make_eval_step(graphdef, config: TrainConfig) -> Callable:
    """``step(model_state, totals, batch) -> totals`` in eval mode (no dropout), jitted."""

    def step(model_state, totals, batch):
        model = nnx.merge(graphdef, model_state)
        model.eval()
        logits = model_logits(model, batch, config)
        losses = optax.sigmoid_binary_cross_entropy(logits, batch["labels"])
        counted = _batch_totals(logits, batch, losses)
        return {**totals, **jax.tree.map(jnp.add, {k: totals[k] for k in counted}, counted)}

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


class Position:
    """Where the loop stands: the next ``epoch`` (1-based) and ``batch`` of it, ``step``
    (global)."""

    def __init__(self, epoch: int = 1, batch: int = 0, step: int = 0):
        self.epoch, self.batch, self.step = epoch, batch, step


def train_epoch(step: Callable, state, split: EncodedSplit, config: TrainConfig, epoch: int,
                *, progress: bool = True, layout: distributed.DataParallel | None = None,
                start: Position | None = None, totals: Totals | None = None,
                stop: StopRequests | None = None, on_checkpoint: Callable | None = None,
                on_sync: Callable | None = None):
    """One pass over ``split`` from ``start.batch``: ``(state, metrics, Timer)``.

    ``start`` (epoch ``epoch``) is advanced in place, batch by batch.

    The progress bar and its device->host sync happen every ``log_every`` steps (and
    before every checkpoint): that is where a NaN/Inf is noticed. ``on_checkpoint(state,
    totals, position)`` saves a mid-epoch checkpoint every ``config.checkpoint_every``
    global steps, and when ``stop`` reports a signal, after which ``TrainingInterrupted``
    is raised. ``on_sync(step, totals)`` sees each sync's totals (on the host).
    ``metrics`` adds ``"skipped_steps"`` (non-finite steps skipped).
    """
    layout = layout or distributed.DataParallel(config.batch_size)
    position = start or Position(epoch)
    total = num_batches(len(split), config.batch_size, drop_remainder=False)
    bar = tqdm(total=total, initial=position.batch, desc=f"Epoch {epoch}/{config.epochs}",
               unit="step", leave=False, disable=None if progress else True, dynamic_ncols=True)
    totals, timer = layout.replicate(totals or zero_totals()), Timer()
    data = batches(split, config.batch_size, shuffle=True, seed=config.seed, epoch=epoch,
                   drop_remainder=False, start_batch=position.batch, **bucketing(config))
    done = position.batch
    for index, batch in enumerate(_timed(data, timer), start=position.batch + 1):
        state, totals = step(state, totals, layout.global_batch(batch), np.int32(position.step))
        position.step, position.batch = position.step + 1, index
        timer.lap("step")
        save = on_checkpoint is not None and index < total and (
            (config.checkpoint_every and position.step % config.checkpoint_every == 0)
            or (stop is not None and stop.requested))
        if index % config.log_every == 0 or index == total or save:
            host = jax.device_get(totals)  # one transfer per sync: metrics and NaN check
            timer.lap("step")
            _check_finite(host, config, epoch)
            running = summarize(host)
            if on_sync is not None:
                on_sync(position.step, host)
            bar.set_postfix(loss=f"{running['loss']:.4f}", accuracy=f"{running['accuracy']:.4f}",
                            refresh=False)
            bar.update(index - done)
            done = index
            timer.lap("log")
        if save and on_checkpoint is not None:
            on_checkpoint(state, totals, position)
            timer.lap("log")
            if stop is not None and stop.signum is not None:  # a signal was requested
                bar.close()
                raise TrainingInterrupted(
                    f"interrupted (signal {stop.signum}) at epoch {epoch}, step {position.step}; "
                    "checkpoint saved: run the same command to resume", stop.signum)
    bar.close()
    timer.lap("log")
    metrics = {**summarize(totals), "skipped_steps": int(jax.device_get(totals["nonfinite"]))}
    return state, metrics, timer


def _check_finite(totals: Totals, config: TrainConfig, epoch: int) -> None:
    """(``totals`` on the host.) Raise ``NonFiniteError`` if a step this epoch was not finite
    and the policy is "stop"."""
    if config.on_nonfinite == "stop" and int(totals["nonfinite"]):
        first = int(totals["first_nonfinite"])
        raise NonFiniteError(
            f"the loss or gradients became NaN/Inf at step {first + 1} (epoch {epoch}); stopped "
            "without saving that state: the last good checkpoint is kept. Lower the learning "
            "rate, set clip_norm, or pass --on-nonfinite skip to skip such steps")


def bucketing(config: TrainConfig) -> dict[str, Any]:
    """The ``batches`` options that trim batches to the config's bucket lengths (or not)."""
    return {"bucket_width": config.bucket_width, "padding": config.padding}


def evaluate(step: Callable, model_state, split: EncodedSplit, batch_size: int,
             timer: Timer | None = None, layout: distributed.DataParallel | None = None,
             *, bucket_width: int = 0, padding: str = "post") -> dict[str, float]:
    """``{"loss", "accuracy"}`` of ``split``, every example counted once (padded last batch).

    ``bucket_width`` and ``padding``: as for ``batches`` (see ``bucketing``).
    """
    timer = timer or Timer()
    layout = layout or distributed.DataParallel(batch_size)
    model_state, totals = layout.replicate((model_state, zero_totals()))
    data = batches(split, batch_size, shuffle=False, drop_remainder=False,
                   bucket_width=bucket_width, padding=padding)
    for batch in _timed(data, timer):
        totals = step(model_state, totals, layout.global_batch(batch))
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


def fit(config: TrainConfig, train: EncodedSplit, val: EncodedSplit | None,
        workdir: str | Path, *, progress: bool = True, out=None, resume: bool = True
        ) -> dict[str, Any]:
    """Train for ``config.epochs`` epochs, keep the best epoch by validation accuracy.

    Without a validation split (``val`` None) every epoch is kept in turn: the last one is.

    Writes into ``workdir`` (already ``run_dir.prepare``d): the best epoch's parameters,
    resumable checkpoints (``checkpoints.TrainCheckpoints``), ``history.json``/``.csv``
    after every epoch and ``history.png`` at the end. With ``resume`` it continues from
    the newest loadable checkpoint there. Prints one Keras-style line per epoch to
    ``out`` (default stdout; process 0 only).

    Returns:
      the history: ``{"config", "epochs": [per-epoch metrics and timings], "best_epoch",
      "best_val_accuracy", "outside_share", ...}``.

    Raises:
      TrainingInterrupted: after a SIGINT/SIGTERM, once its checkpoint is saved.
      NonFiniteError: a NaN/Inf with ``on_nonfinite="stop"``.
      run_dir.RunError: the work directory cannot be written (full disk, permissions).
      memory.OutOfMemory: the run would not fit in the device's free memory (checked
        before the model is created, and again once its train step is compiled).
    """
    out = out or sys.stdout
    writer = distributed.is_writer()
    workdir = Path(workdir)
    _check_fits(config, train)
    layout = distributed.DataParallel(config.batch_size)
    steps = num_batches(len(train), config.batch_size, drop_remainder=False)
    model = create_model(config)
    optimizer = nnx.Optimizer(model, create_optimizer(config, steps * config.epochs), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    state = layout.replicate(state)
    eval_step = make_eval_step(nnx.graphdef(model), config)
    checkpoints = TrainCheckpoints(workdir, keep=config.keep_checkpoints,
                                   identity=run_dir.identity(config))
    history: dict[str, Any] = {"config": config.to_dict(), "train_examples": len(train),
                               "val_examples": 0 if val is None else len(val),
                               "steps_per_epoch": steps,
                               "devices": layout.devices, "processes": jax.process_count(),
                               "epochs": [], "best_epoch": None, "best_val_accuracy": None}
    position, totals = Position(), None
    restored = checkpoints.restore_latest(state) if resume else None
    if restored is not None:
        state, saved = restored
        if saved["epoch"] > config.epochs:  # finished: its files are not ours to rewrite
            checkpoints.close()
            if writer:
                print(f"The run in {workdir} has already trained its {config.epochs} epochs; "
                      "pass --overwrite to train it again", file=out, flush=True)
            return _with_totals(saved["history"])
        position, totals, history = _resumed(saved, config, layout)
        if writer:  # the execution fields may have changed (run_dir.prepare left it alone)
            _write(workdir, run_dir.write_json, workdir / run_dir.CONFIG, config.to_dict())
            print(f"Resuming from step {position.step} (epoch {position.epoch}, batch "
                  f"{position.batch} of {steps})", file=out, flush=True)
    train_step = _compiled_train_step(graphdef, config, layout, state, train, totals)

    def save_checkpoint(state, totals: Totals | None, position: Position) -> None:
        """``position`` is where a resume starts; ``totals`` the epoch's sums so far, if any."""
        _write(workdir, checkpoints.save, position.step, state, {
            "epoch": position.epoch, "batch": position.batch, "step": position.step,
            "totals": None if totals is None else _totals_to_json(totals), "history": history})

    scalars = open_log(config.tensorboard if writer else None,
                       learning_rate(config, steps * config.epochs), position.step)
    with StopRequests() as stop, contextlib.closing(checkpoints), contextlib.closing(scalars):
        for epoch in range(position.epoch, config.epochs + 1):
            start = time.perf_counter()
            scalars.epoch_started(position.step, totals)
            state, metrics, timer = train_epoch(  # advances ``position`` in place
                train_step, state, train, config, epoch, progress=progress and writer,
                layout=layout, start=position, totals=totals, stop=stop,
                on_checkpoint=save_checkpoint, on_sync=scalars.sync)
            position, totals = Position(epoch + 1, 0, position.step), None
            train_s = time.perf_counter() - start
            weights = evaluated_weights(state, config)
            val_metrics = None
            if val is not None:
                val_metrics = evaluate(eval_step, weights, val, config.batch_size, timer,
                                       layout, **bucketing(config))
                scalars.validation(position.step, val_metrics)
            row = _epoch_row(epoch, metrics, val_metrics, timer, train_s,
                             time.perf_counter() - start, steps)
            history["epochs"].append(row)
            if writer:
                print(_epoch_line(row, config.epochs), file=out, flush=True)
            if _is_best(row, history):
                _keep_best(workdir, history, row, weights)
            if writer:
                _write(workdir, run_dir.write_history, workdir, _with_totals(history))
            save_checkpoint(state, None, position)  # the epoch is done: resume at the next
    history = _with_totals(history)
    if writer:
        _write(workdir, run_dir.write_history, workdir, history)
        plot_history(history["epochs"], workdir / run_dir.PLOT)
        print(_summary_line(history, workdir), file=out, flush=True)
    return history


def _check_fits(config: TrainConfig, train: EncodedSplit) -> None:
    """Refuse a batch larger than the training set, or a run that cannot fit in memory."""
    if config.batch_size > len(train):
        raise ValueError(f"batch_size {config.batch_size} is larger than the {len(train)} "
                         f"training reviews; choose --batch-size {len(train)} or less")
    memory.check_config(config)


def _resumed(saved: dict, config: TrainConfig, layout: distributed.DataParallel
             ) -> tuple[Position, Totals | None, dict[str, Any]]:
    """Where a restored checkpoint resumes: position, the epoch's sums so far, history."""
    position = Position(saved["epoch"], saved["batch"], saved["step"])
    totals = _totals_from_json(saved["totals"]) if saved["totals"] else None
    history = {**saved["history"], "config": config.to_dict(), "devices": layout.devices,
               "processes": jax.process_count()}
    return position, totals, history


def _is_best(row: dict, history: dict[str, Any]) -> bool:
    """Whether ``row``'s epoch is better than the best so far (without validation: later)."""
    return (history["best_epoch"] is None or row["val_accuracy"] is None
            or row["val_accuracy"] > history["best_val_accuracy"])


def _keep_best(workdir: Path, history: dict[str, Any], row: dict, model_state) -> None:
    """Record ``row``'s epoch as the best so far and save its parameters."""
    history["best_epoch"], history["best_val_accuracy"] = row["epoch"], row["val_accuracy"]
    best = {k: row[k] for k in ("epoch", "val_loss", "val_accuracy")}
    _write(workdir, run_dir.save_best, workdir, nnx.filter_state(model_state, nnx.Param), best)


def _epoch_line(row: dict, epochs: int) -> str:
    """The Keras-style line printed after each epoch."""
    skipped = (f" - skipped {row['skipped_steps']} non-finite steps"
               if row["skipped_steps"] else "")
    validation = ("" if row["val_accuracy"] is None else
                  f" - val_loss: {row['val_loss']:.4f} - val_accuracy: {row['val_accuracy']:.4f}")
    return (f"Epoch {row['epoch']}/{epochs} - {row['time_s']:.0f}s - loss: {row['loss']:.4f} - "
            f"accuracy: {row['accuracy']:.4f}{validation}{skipped}")


def _summary_line(history: dict[str, Any], workdir: Path) -> str:
    """The line printed when training ends: best epoch and where the time went."""
    kept = (f"Last epoch kept: {history['best_epoch']} (no validation)"
            if history["best_val_accuracy"] is None else
            f"Best epoch: {history['best_epoch']} "
            f"(val_accuracy {history['best_val_accuracy']:.4f})")
    return (f"{kept}; "
            f"{100 * history['outside_share']:.1f}% of the time outside the jitted steps "
            f"(data {history['data_s']:.1f}s, logging {history['log_s']:.1f}s of "
            f"{history['time_s']:.0f}s); run saved in {workdir}")


def _compiled_train_step(graphdef, config: TrainConfig, layout: distributed.DataParallel,
                         state, train: EncodedSplit, totals: Totals | None) -> Callable:
    """``make_train_step``, compiled ahead of the first step for the shapes of ``train``'s
    full-length batches, once ``memory.check_compiled`` has found that it fits in the free
    memory (with ``bucket_width``, narrower batches go through the jitted step)."""
    jitted = make_train_step(graphdef, config, layout.replicated)
    example = layout.global_batch(next(batches(train, config.batch_size, shuffle=False,
                                               drop_remainder=False)))
    totals = layout.replicate(totals or zero_totals())
    compiled = jitted.lower(state, totals, example, np.int32(0)).compile()
    memory.check_compiled(compiled, config)
    if not config.bucket_width:
        return compiled
    widest = example["ids"].shape[1]

    def step(state, totals, batch, step_index):
        # Bucketed batches come in several widths. The checked compile is the widest (maxlen:
        # the most memory) and serves it; the jitted step compiles each narrower width once.
        run = compiled if batch["ids"].shape[1] == widest else jitted
        return run(state, totals, batch, step_index)

    return step


def _write(workdir: Path, save: Callable, *args) -> None:
    """``save(*args)``; an OSError (full disk, permissions) becomes one RunError line."""
    try:
        save(*args)
    except OSError as error:
        raise run_dir.unwritable(workdir, error) from error


def _totals_to_json(totals: Totals) -> dict[str, float | int]:
    """Exact: float32 -> Python float -> float32 round-trips bit for bit."""
    return {k: v.item() for k, v in jax.device_get(totals).items()}


def _totals_from_json(values: dict[str, float | int]) -> Totals:
    template = cast(dict[str, jax.Array], zero_totals())
    # .get: checkpoints from before "grad_norm" was summed resume with it at zero.
    return cast(Totals, {k: jnp.asarray(values.get(k, zero), zero.dtype)
                         for k, zero in template.items()})


def train_and_evaluate(config: TrainConfig, workdir: str | Path, data=None, *,
                       overwrite: bool = False, cache_dir=None, data_dir=None,
                       progress: bool = True, out=None) -> dict[str, Any]:
    """The whole ``stackrnn train``: lock and prepare ``workdir``, load and split IMDB, ``fit``.

    A work directory holding a run of the same config with checkpoints is resumed
    (``overwrite`` starts afresh). The validation split is held out of the TRAIN
    reviews (``config.val_fraction``, ``config.val_split``; a function of the config and
    its seed, so a resumed run holds out the same reviews); the test split is never
    looked at here.
    """
    with run_dir.lock(workdir) as workdir:
        resume = run_dir.prepare_on_all_hosts(workdir, config, overwrite=overwrite)
        encoded = load_encoded(data, num_words=config.num_words, maxlen=config.maxlen,
                               padding=config.padding, truncating=config.truncating,
                               cache_dir=cache_dir, data_dir=data_dir)
        check_reviews(encoded.train, "train")
        if distributed.is_writer():
            _keep_vocab(Path(workdir), encoded.vocab, resume)
        train, val = encoded.train, None
        if config.val_fraction:
            train, val = split_validation(train, config.val_fraction, config.seed,
                                          by=config.val_split)
        if distributed.is_writer():
            print(_validation_line(train, val), file=out or sys.stdout, flush=True)
        return fit(config, train, val, workdir, progress=progress, out=out, resume=resume)


def _validation_line(train: EncodedSplit, val: EncodedSplit | None) -> str:
    if val is None:
        return (f"Validation: none (val_fraction 0); training on all {len(train)} train "
                "reviews, the last epoch is kept")
    return describe_validation(train, val)


def _keep_vocab(workdir: Path, vocab: Vocabulary, resume: bool) -> None:
    """Save the run's vocabulary; a resumed run must have been encoded with the same one."""
    path = workdir / run_dir.VOCAB
    if resume and path.exists():
        if run_dir.read_vocab(workdir) != vocab:
            raise run_dir.RunError(
                f"the data gives another vocabulary than the run in {workdir} was trained on "
                f"({path}); resume with the same --data, or pass --overwrite to start afresh")
        return
    _write(workdir, vocab.save, path)


def _epoch_row(epoch, metrics, val_metrics, timer: Timer, train_s, time_s, steps) -> dict:
    """One epoch's ``history.json`` row; its val_* are None without a validation split."""
    seconds = timer.seconds
    val_metrics = val_metrics or {"loss": None, "accuracy": None}
    return {"epoch": epoch, "loss": metrics["loss"], "accuracy": metrics["accuracy"],
            "val_loss": val_metrics["loss"], "val_accuracy": val_metrics["accuracy"],
            "skipped_steps": metrics["skipped_steps"],
            "time_s": time_s, "train_s": train_s, "steps_per_s": steps / train_s,
            "step_s": seconds["step"], "data_s": seconds["data"], "log_s": seconds["log"],
            "outside_share": (seconds["data"] + seconds["log"]) / time_s}


def _with_totals(history: dict) -> dict:
    """Whole-run timings: seconds per phase and the share spent outside the jitted steps."""
    rows = history["epochs"]
    sums = {k: math.fsum(row[k] for row in rows) for k in ("time_s", "step_s", "data_s", "log_s")}
    return {**history, **sums, "seconds_per_epoch": sums["time_s"] / max(len(rows), 1),
            "outside_share": (sums["data_s"] + sums["log_s"]) / max(sums["time_s"], 1e-9)}
