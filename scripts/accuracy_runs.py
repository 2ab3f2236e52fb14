"""Train each named preset end to end on the real IMDB and report its test accuracy.

Each preset goes through the library exactly as ``stackrnn train`` + ``stackrnn evaluate``
would: train on the train reviews (validation held out of them), keep the best epoch by
validation accuracy, evaluate it once on all 25,000 test reviews. The summary
(``summary.json`` and ``summary.md`` in ``--out``) is rewritten after every preset.

    python scripts/accuracy_runs.py --data ../shared/data/aclImdb.tar.gz --out runs/accuracy
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import jax

from stackrnn_jax import run_dir
from stackrnn_jax.config import PRESETS, resolve
from stackrnn_jax.predict import evaluate_run, load_run
from stackrnn_jax.train import train_and_evaluate

DEFAULT_PRESETS = ("simple-best", "gru-best", "lstm-best", "tutorial")


def machine(note: str = "") -> dict:
    """Where and when the numbers were measured (wall times depend on it and on its load)."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as file:
            cpu = next(line.split(":", 1)[1].strip() for line in file if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "jax": jax.__version__,
            "device": str(jax.devices()[0]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "note": note}


def run_preset(name: str, data, out: Path, overrides: dict, seed: int | None = None) -> dict:
    config = resolve(name, None, {**overrides, "seed": seed})
    workdir = out / name if seed is None else out / f"{name}-seed{seed}"
    start = time.perf_counter()
    history = train_and_evaluate(config, workdir, data, overwrite=True, progress=False)
    train_s = time.perf_counter() - start
    test = evaluate_run(load_run(workdir), data)
    return {"preset": name, "seed": config.seed, "test_accuracy": test["accuracy"], "test_loss": test["loss"],
            "test_examples": test["examples"], "best_epoch": history["best_epoch"],
            "best_val_accuracy": history["best_val_accuracy"], "epochs": len(history["epochs"]),
            "train_wall_s": train_s, "seconds_per_epoch": history["seconds_per_epoch"],
            "outside_share": history["outside_share"],
            "load_average": os.getloadavg(), "config": config.to_dict(),
            "workdir": str(workdir)}


def markdown(results: list[dict], info: dict) -> str:
    lines = ["| preset | seed | test accuracy | best epoch / epochs | train wall time | s/epoch "
             "| outside jit |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['preset']} | {r['seed']} | {r['test_accuracy']:.4f} | {r['best_epoch']} / {r['epochs']} | "
                     f"{r['train_wall_s'] / 60:.1f} min | {r['seconds_per_epoch']:.0f} | "
                     f"{100 * r['outside_share']:.1f}% |")
    lines += ["", f"Machine: {info['cpu']}, {info['cores']} cores, {info['platform']}, "
                  f"jax {info['jax']} on {info['device']}; {info.get('date', 'date not recorded')}"
                  f"{'; ' + info['note'] if info.get('note') else ''}. Wall times include the "
                  "per-epoch validation and the first-step compile; a shared machine makes "
                  "them noisy."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="aclImdb tar.gz or folder (default: $STACKRNN_IMDB_PATH, else download)")
    parser.add_argument("--out", type=Path, default=Path("runs/accuracy"))
    parser.add_argument("--presets", nargs="+", choices=list(PRESETS), default=list(DEFAULT_PRESETS))
    parser.add_argument("--epochs", type=int, help="override every preset's epochs (smoke runs)")
    parser.add_argument("--strategy", help="override the execution strategy (same function, "
                        "float32 rounding differs)")
    parser.add_argument("--note", default="", help="free text stored with the machine")
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="run each preset once per seed (default: the preset's own seed)")
    args = parser.parse_args(argv)
    overrides = {"epochs": args.epochs, "strategy": args.strategy}
    info, results = machine(args.note), []
    for name in args.presets:
        for seed in args.seeds or [None]:
            print(f"== {name}" + ("" if seed is None else f" seed {seed}"), flush=True)
            results.append(run_preset(name, args.data, args.out, overrides, seed))
            print(f"== {name}: test accuracy {results[-1]['test_accuracy']:.4f}", flush=True)
            run_dir.write_json(args.out / "summary.json", {"machine": info, "results": results})
            run_dir.write_text(args.out / "summary.md", markdown(results, info))
    print(markdown(results, info))


if __name__ == "__main__":
    main()
