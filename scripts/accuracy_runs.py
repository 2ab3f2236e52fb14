"""Train each named preset end to end on the real IMDB and report its test accuracy.

Each preset goes through the library exactly as ``stackrnn train`` + ``stackrnn evaluate``
would: train on the train reviews (validation held out of them), keep the best epoch by
validation accuracy, evaluate it once on all 25,000 test reviews. The summary
(``summary.json`` and ``summary.md`` in ``--out``) is rewritten after every preset.
``--variants`` runs each preset once per named change of its config (``VARIANTS``): an
ablation of the levers (length buckets, pooling, bidirectional layers, longer inputs).

    python scripts/accuracy_runs.py --data ../shared/data/aclImdb.tar.gz --out runs/accuracy
    python scripts/accuracy_runs.py --data ../shared/data/aclImdb.tar.gz --presets simple-best \
        --variants no-buckets preset max mean bidirectional maxlen-800 --epochs 3 \
        --out bench/results/accuracy/ablation-simple
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import jax

from stackrnn_jax import run_dir
from stackrnn_jax.config import PRESETS, resolve
from stackrnn_jax.predict import evaluate_run, load_run
from stackrnn_jax.train import train_and_evaluate

DEFAULT_PRESETS = ("simple-best", "gru-best", "bigru-best", "lstm-best", "tutorial")
# Named changes of a preset's config, for ablations ("preset": the preset as it is).
VARIANTS = {
    "preset": {},
    "no-buckets": {"bucket_width": 0},
    "max": {"pooling": "max"},
    "mean": {"pooling": "mean"},
    "bidirectional": {"bidirectional": True},
    "maxlen-800": {"maxlen": 800},
    "bidirectional-max": {"bidirectional": True, "pooling": "max"},
    "bidirectional-max-800": {"bidirectional": True, "pooling": "max", "maxlen": 800},
    # simple-best's inputs: whole reviews up to 1,000 ids, 20k words, 64-wide embeddings.
    "long-input": {"num_words": 20_000, "embed_dim": 64, "maxlen": 1000, "bucket_width": 128},
}


def machine(note: str = "") -> dict:
    """Where and when the numbers were measured (wall times depend on it and on its load)."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as file:
            cpu = next(line.split(":", 1)[1].strip() for line in file
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "jax": jax.__version__,
            "device": str(jax.devices()[0]),
            "note": note}


def run_preset(name: str, data, runs: Path, overrides: dict, seed: int | None = None,
               variant: str | None = None) -> dict:
    config = resolve(name, None, {**VARIANTS.get(variant, {}), **overrides, "seed": seed})
    label = name if variant is None else f"{name}+{variant}"
    workdir = runs / label if seed is None else runs / f"{label}-seed{seed}"
    start = time.perf_counter()
    history = train_and_evaluate(config, workdir, data, overwrite=True, progress=False)
    train_s = time.perf_counter() - start
    test = evaluate_run(load_run(workdir), data)
    return {"preset": label, "seed": config.seed, "test_accuracy": test["accuracy"],
            "test_loss": test["loss"],
            "test_examples": test["examples"], "best_epoch": history["best_epoch"],
            "best_val_accuracy": history["best_val_accuracy"], "epochs": len(history["epochs"]),
            "train_wall_s": train_s, "seconds_per_epoch": history["seconds_per_epoch"],
            "outside_share": history["outside_share"],
            "load_average": os.getloadavg(), "config": config.to_dict(),
            "workdir": str(workdir)}


def markdown(results: list[dict], info: dict) -> str:
    lines = ["| preset | seed | test accuracy | best val accuracy | best epoch / epochs "
             "| train wall time | s/epoch | outside jit |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['preset']} | {r['seed']} | {r['test_accuracy']:.4f} | "
                     f"{_accuracy(r['best_val_accuracy'])} | "
                     f"{r['best_epoch']} / {r['epochs']} | "
                     f"{r['train_wall_s'] / 60:.1f} min | {r['seconds_per_epoch']:.0f} | "
                     f"{100 * r['outside_share']:.1f}% |")
    lines += seed_table(results)
    lines += ["", f"Started {info.get('date', '(date not recorded)')}. "
                  f"Machine: {info['cpu']}, {info['cores']} cores, {info['platform']}, "
                  f"jax {info['jax']} on {info['device']}"
                  f"{'; ' + info['note'] if info.get('note') else ''}. Wall times include the "
                  "per-epoch validation and the first-step compile; a shared machine makes "
                  "them noisy."]
    return "\n".join(lines) + "\n"


def _accuracy(value: float | None) -> str:
    """An accuracy to 4 decimals; a dash where none was measured (no validation split)."""
    return "–" if value is None else f"{value:.4f}"


def readme_cells(runs: list[dict]) -> dict[str, str]:
    """The README accuracy table's cells for one preset's runs (one seed, or several: means,
    and the test accuracy as mean ± sample std). tests/test_docs.py holds the README to it."""
    accuracies = [r["test_accuracy"] for r in runs]
    accuracy = f"{accuracies[0]:.4f}"
    if len(runs) > 1:
        accuracy = f"{statistics.fmean(accuracies):.4f} ± {statistics.stdev(accuracies):.4f}"
    return {"seeds": ", ".join(str(r["seed"]) for r in runs),
            "epochs (best)": f"{runs[0]['epochs']} (best "
                             f"{', '.join(str(r['best_epoch']) for r in runs)})",
            "train time": f"{statistics.fmean(r['train_wall_s'] for r in runs) / 60:.1f} min",
            "s/epoch": f"{statistics.fmean(r['seconds_per_epoch'] for r in runs):.0f}",
            "test accuracy": accuracy}


def seed_table(results: list[dict]) -> list[str]:
    """Mean ± sample std over the seeds of each preset that ran with more than one seed."""
    by_preset: dict[str, list[dict]] = {}
    for r in results:
        by_preset.setdefault(r["preset"], []).append(r)
    lines = ["", "| preset | seeds | test accuracy (mean ± std) | train wall time (mean) "
             "| s/epoch (mean) |", "|---|---|---|---|---|"]
    rows = [f"| {name} | {len(runs)} | {cells['test accuracy']} | {cells['train time']} | "
            f"{cells['s/epoch']} |"
            for name, runs in by_preset.items() if len(runs) > 1
            for cells in [readme_cells(runs)]]
    return lines + rows if rows else []


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="aclImdb tar.gz or folder "
                        "(default: $STACKRNN_IMDB_PATH, else download)")
    parser.add_argument("--out", type=Path, default=Path("runs/accuracy"),
                        help="where summary.json and summary.md go")
    parser.add_argument("--runs", type=Path,
                        help="where the runs' work directories go (default: --out)")
    parser.add_argument("--presets", nargs="+", choices=list(PRESETS),
                        default=list(DEFAULT_PRESETS))
    parser.add_argument("--epochs", type=int, help="override every preset's epochs (smoke runs)")
    parser.add_argument("--strategy", help="override the execution strategy (same function, "
                        "float32 rounding differs)")
    parser.add_argument("--note", default="", help="free text stored with the machine")
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="run each preset once per seed (default: the preset's own seed)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        help="run each preset once per named config change (an ablation)")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite --out's summary.md from its summary.json")
    args = parser.parse_args(argv)
    if args.render:
        summary = json.loads((args.out / "summary.json").read_text())
        run_dir.write_text(args.out / "summary.md", markdown(summary["results"],
                                                             summary["machine"]))
        return
    overrides = {"epochs": args.epochs, "strategy": args.strategy}
    info, results = machine(args.note), []
    for name in args.presets:
        for variant in args.variants or [None]:
            for seed in args.seeds or [None]:
                label = name if variant is None else f"{name}+{variant}"
                print(f"== {label}" + ("" if seed is None else f" seed {seed}"), flush=True)
                results.append(run_preset(name, args.data, args.runs or args.out, overrides,
                                          seed, variant))
                print(f"== {label}: test accuracy {results[-1]['test_accuracy']:.4f}",
                      flush=True)
                run_dir.write_json(args.out / "summary.json",
                                   {"machine": info, "results": results})
                run_dir.write_text(args.out / "summary.md", markdown(results, info))
    print(markdown(results, info))


if __name__ == "__main__":
    main()
