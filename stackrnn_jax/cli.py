"""``stackrnn train | evaluate | predict | export``: the command-line face.

Bad input of any kind ends with one ``error: ...`` line on stderr and exit status 2
(usage) or 1 (everything else), never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import sys
import warnings
from pathlib import Path

from stackrnn_jax.config import (
    CELLS,
    DTYPES,
    NONFINITE_POLICIES,
    PADDING_SIDES,
    POOLINGS,
    PRESETS,
    SCHEDULES,
    VAL_SPLITS,
    TrainConfig,
)
from stackrnn_jax.interrupts import TrainingInterrupted, exiting_on_signals

PREVIEW_CHARS = 60
NO_KNOWN_WORD = "[no known word] "  # before the preview of a text the vocabulary cannot read
# The line for a signal outside the training steps (inside them, a checkpoint comes first).
STOPPED = ("stopped: interrupted (signal {signum}) outside the training steps; nothing was lost: "
           "run the same command again (a run resumes from its last checkpoint)")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) on stderr."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from stackrnn_jax.strategies import STRATEGIES  # choices read at runtime: the registry grows

    parser = _Parser(prog="stackrnn", description="Stacked RNN sentiment classifier on IMDB (JAX).")
    commands = parser.add_subparsers(dest="command", required=True,
                                     metavar="{train,evaluate,predict,export}")
    defaults = TrainConfig()

    train = commands.add_parser("train",
                                help="train a model; keep the best epoch by validation accuracy",
                                description="Train on IMDB. Precedence: "
                                            "defaults < --preset < --config file < flags.")
    train.set_defaults(run=_train)
    _add_run_options(train, data=True)
    train.add_argument("--preset", choices=list(PRESETS), help="named recipe (default: tutorial)")
    train.add_argument("--config", type=Path, metavar="FILE",
                       help="JSON or TOML file of config fields")
    train.add_argument("--overwrite", action="store_true",
                       help="start afresh in --workdir (by default a run there with the same "
                            "config resumes from its latest checkpoint)")
    train.add_argument("--no-progress", dest="progress", action="store_false",
                       help="no progress bar")
    group = train.add_argument_group("config fields (defaults: the classic Keras tutorial)")
    flag = _field_adder(group, defaults)
    flag("cell", choices=CELLS)
    flag("layers", type=int, help="stacked RNN layers")
    flag("units", type=int, help="units per layer")
    flag("bidirectional", action=argparse.BooleanOptionalAction)
    flag("pooling", choices=POOLINGS, help="what the head reads: last state, max or mean over time")
    flag("embed_dim", type=int, help="embedding size")
    flag("num_words", type=int, help="vocabulary size (ids 0-2 reserved)")
    flag("maxlen", type=int, help="ids per review (cut or padded)")
    flag("padding", choices=PADDING_SIDES, help="side of the padding")
    flag("truncating", choices=PADDING_SIDES, help="side cut from long reviews")
    flag("mask", action=argparse.BooleanOptionalAction, help="skip padding steps (true lengths)")
    flag("bucket_width", type=int, help="trim batches to multiples of this many steps "
                                        "(needs --mask; 0: every batch runs maxlen steps)")
    flag("val_fraction", type=float,
         help="share of the train reviews held out for validation (0: none; train on all "
              "of them and keep the last epoch)")
    flag("val_split", choices=VAL_SPLITS,
         help="hold out random reviews, or whole movies (none then shares training's movies)")
    flag("batch_size", type=int)
    flag("epochs", type=int)
    flag("learning_rate", "--lr", type=float)
    flag("weight_decay", type=float, help="AdamW's decoupled weight decay (0: plain Adam)")
    flag("schedule", choices=SCHEDULES, help="learning-rate schedule after the warmup")
    flag("warmup_steps", type=int, help="linear warmup steps (0: none)")
    flag("clip_norm", type=float, help="global-norm gradient clipping (0: none)")
    flag("average_decay", type=float,
         help="validate and keep the moving average of the weights, this decay a step (0: off)")
    flag("members", type=int, help="train an ensemble of this many models side by side, "
                                   "predict with the mean of their logits (1: one model)")
    flag("dropout", type=float, help="dropout between RNN layers and before the head")
    flag("embed_dropout", type=float)
    flag("weight_dropout", type=float,
         help="DropConnect rate on the recurrent kernels (one mask per batch; 0: off)")
    flag("word_dropout", type=float, help="share of tokens whose whole embedding is dropped")
    flag("seed", type=int)
    flag("dtype", choices=DTYPES, help="compute dtype of the recurrence")
    flag("strategy", choices=sorted(STRATEGIES), help="how the timesteps execute")
    flag("unroll", type=int, help="timesteps per loop iteration (scan)")
    flag("log_every", type=int, help="steps between host syncs: progress bar, NaN/Inf check")
    flag("checkpoint_every", type=int,
         help="steps between mid-epoch checkpoints (0: epoch ends only)")
    flag("keep_checkpoints", type=int, help="latest resumable checkpoints kept")
    flag("on_nonfinite", choices=NONFINITE_POLICIES, help="on a NaN/Inf loss or gradient")
    flag("tensorboard", metavar="DIR", help="write TensorBoard scalars there (needs tensorboardX)")
    multi = train.add_argument_group("multi-host (jax.distributed; see the README)")
    multi.add_argument("--distributed", action="store_true",
                       help="call jax.distributed.initialize() "
                            "(TPU pods, SLURM, ... detected by JAX; "
                            "also implied by $JAX_COORDINATOR_ADDRESS)")
    multi.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address")
    multi.add_argument("--num-processes", type=int, help="processes in the run")
    multi.add_argument("--process-id", type=int, help="this process's index")

    evaluate = commands.add_parser("evaluate", help="test loss and accuracy of a run's best epoch",
                                   description="Evaluate a run's best epoch "
                                               "on the whole IMDB test split.")
    evaluate.set_defaults(run=_evaluate)
    _add_run_options(evaluate, data=True)

    predict = commands.add_parser("predict", help="P(positive) and label of review texts",
                                  description="Score reviews with a run's best epoch "
                                              "and vocabulary.")
    predict.set_defaults(run=_predict)
    _add_run_options(predict, data=False)
    predict.add_argument("texts", nargs="*", metavar="TEXT", help="review texts; '-' reads stdin")
    predict.add_argument("--file", type=Path, help="a UTF-8 file with one review per line")
    predict.add_argument("--json", action="store_true",
                         help="one JSON list: text, probability, label and unknown_share "
                              "(the share of its words not in the vocabulary) per review")
    predict.add_argument("--explain", type=Path, metavar="OUT.html",
                         help="also write a page of how each prediction forms, token by token "
                              "(and its PNG figure(s) beside it)")

    export = commands.add_parser("export", help="the best epoch as a jax.export folder",
                                 description="Write the best epoch as serialized StableHLO "
                                             "(CPU, CUDA), vocabulary, manifest and a loader "
                                             "that needs only jax and numpy.")
    export.set_defaults(run=_export)
    _add_run_options(export, data=False)
    export.add_argument("--out", type=Path, required=True, help="the folder to write")
    export.add_argument("--format", choices=("jax", "onnx"), default="jax",
                        help="jax.export StableHLO (default) or ONNX (the onnx extra)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; the exit status is 0 on success."""
    with exiting_on_signals(STOPPED):  # first: the parser's imports (JAX) take seconds
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    from stackrnn_jax.allocator import keep_freed_memory
    from stackrnn_jax.compile_cache import use_compile_cache

    args = build_parser().parse_args(argv)
    keep_freed_memory()  # ~25-35% faster CPU train steps (see allocator.py)
    if not isinstance(sys.unraisablehook, _QuietFailedReadAftermath):
        sys.unraisablehook = _QuietFailedReadAftermath(sys.unraisablehook)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_line
            use_compile_cache()  # the next run loads its compiled steps (compile_cache.py)
            args.run(args)
    except (ValueError, OSError) as error:  # DataError and RunError are ValueErrors
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 1
    except RuntimeError as error:  # XLA's out-of-memory (jax.errors.JaxRuntimeError)
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise  # a bug: its traceback is what a report needs
        print(f"error: out of memory ({_one_line(error)[:300]}); lower --batch-size, --units "
              "or --maxlen, or free memory on the device (a run's checkpoints are kept)",
              file=sys.stderr)
        return 1
    except TrainingInterrupted as interrupted:
        print(f"stopped: {interrupted}", file=sys.stderr)
        return 128 + interrupted.signum
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


def _train(args) -> None:
    from stackrnn_jax import config as config_lib
    from stackrnn_jax import distributed
    from stackrnn_jax.train import train_and_evaluate

    distributed.initialize(args.distributed, coordinator=args.coordinator,
                           num_processes=args.num_processes, process_id=args.process_id)
    file_values = config_lib.read_config_file(args.config) if args.config else None
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    config = config_lib.resolve(args.preset, file_values, overrides)
    out = sys.stdout
    if not args.progress:
        import tensorflow_datasets as tfds
        tfds.disable_progress_bar()
    with _quiet_data_layer():
        train_and_evaluate(config, args.workdir, args.data, overwrite=args.overwrite,
                           progress=args.progress, out=out)


def _evaluate(args) -> None:
    from stackrnn_jax.predict import evaluate_run, load_run

    run = load_run(args.workdir)
    with _quiet_data_layer():
        metrics = evaluate_run(run, args.data)
    print(f"Test Loss: {metrics['loss']:.4f}")
    print(f"Test Accuracy: {metrics['accuracy']:.4f}")


def _predict(args) -> None:
    from stackrnn_jax.predict import check_texts, label, load_run, predict_proba, unknown_shares

    texts: list[str] = []
    for text in args.texts:
        texts += _lines(sys.stdin.buffer.read(), "stdin") if text == "-" else [text]
    if args.file:
        texts += _lines(args.file.read_bytes(), str(args.file))
    texts = check_texts(texts)  # before loading the run: bad input fails fast
    run = load_run(args.workdir)
    shares = unknown_shares(run, texts)
    for number in [n for n, share in enumerate(shares, start=1) if share == 1.0]:
        print(f"warning: review {number} has no word in the run's vocabulary: its score says "
              "nothing about it", file=sys.stderr)
    scored = list(zip(texts, predict_proba(run, texts), shares))
    if args.json:
        print(json.dumps([{"text": text, "probability": float(probability),
                           "label": label(probability), "unknown_share": float(share)}
                          for text, probability, share in scored], indent=2))
        return
    for text, probability, share in scored:
        preview = " ".join(text.split())
        preview = preview if len(preview) <= PREVIEW_CHARS else preview[: PREVIEW_CHARS - 3] + "..."
        print(f"{probability:.4f}\t{label(probability)}\t"
              f"{NO_KNOWN_WORD if share == 1.0 else ''}{preview}")
    if args.explain:
        from stackrnn_jax.explain import explain, write_page

        written = write_page([explain(run, text) for text in texts], args.explain,
                             title=f"How the prediction forms ({args.workdir.name})")
        print(f"explanation: {', '.join(map(str, written))}", file=sys.stderr)


def _export(args) -> None:
    from stackrnn_jax.export import LOADER_FILE, export_run

    out = export_run(args.workdir, args.out, args.format)
    print(f"exported to {out}; try: python {out / LOADER_FILE} {out} \"a great film\"")


def _quiet_data_layer():
    """tfds prints and logs chatter while preparing a dataset; stdout is for results and
    stderr for one error line, so drop it (its progress bars show unless --no-progress)."""
    logging.getLogger("absl").setLevel(logging.ERROR)
    return contextlib.redirect_stdout(io.StringIO())


class _QuietFailedReadAftermath:
    """``sys.unraisablehook`` ``hook``, except for a failed checkpoint read's aftermath.

    orbax reads every array of a checkpoint in an asyncio loop and stops at the first
    failure (a damaged checkpoint: one ``error:`` line). The other reads fail too, but
    nobody retrieves their errors, and their callbacks then find the loop closed; Python
    would print each as an "Exception ignored" traceback, after that line or at exit.
    """

    def __init__(self, hook):
        self.hook = hook

    def __call__(self, unraisable) -> None:
        value, text = unraisable.exc_value, str(unraisable.exc_value)
        if not (isinstance(value, RuntimeError) and text == "Event loop is closed"
                or text.startswith("Encountered error while reading array index")):
            self.hook(unraisable)


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the CLI: one ``warning:`` line, no source excerpt."""
    print(f"warning: {' '.join(str(message).split())}", file=file or sys.stderr)


def _lines(raw: bytes, where: str) -> list[str]:
    """The non-blank lines of UTF-8 text ``raw``; ValueError if it is not text."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{where}: not UTF-8 text (byte {error.start})") from error
    if "\x00" in text:
        raise ValueError(f"{where}: not text (holds NUL bytes)")
    return [line for line in text.splitlines() if line.strip()]


def _add_run_options(parser, *, data: bool) -> None:
    parser.add_argument("--workdir", type=Path, required=True, help="the run's directory")
    if data:
        parser.add_argument("--data", metavar="PATH",
                            help="aclImdb tar.gz or folder "
                                 "(default: $STACKRNN_IMDB_PATH, else download)")


def _field_adder(group, defaults: TrainConfig):
    """``flag(field, *aliases, **kw)`` adds ``--field-name`` (default None: unset flags do not
    override)."""

    def flag(name, *aliases, help=None, **kwargs):
        shown = f"default: {getattr(defaults, name)}"
        group.add_argument(f"--{name.replace('_', '-')}", *aliases, dest=name, default=None,
                           help=f"{help} ({shown})" if help else shown, **kwargs)

    return flag


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    if isinstance(error, OSError) and error.filename and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    return " ".join(text.split()) or type(error).__name__
