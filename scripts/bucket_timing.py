"""Epoch time of a preset on the real IMDB with and without length buckets (or under two
execution strategies: ``--strategies A B``), side by side.

Both variants train the same preset from the same initial state on the first batches of
the same shuffled epoch (``--batches`` of each), in alternating blocks so that a busy
machine slows both alike. Every bucket length is compiled first (timed apart), so the
blocks time only steps. The epoch estimate is the mean step time times the steps per
epoch; the recurrent steps an epoch runs (the sum of its batches' lengths) are counted
exactly, over the whole epoch. Results go to ``--out`` as JSON and Markdown:

    python scripts/bucket_timing.py --data ../shared/data/aclImdb.tar.gz --preset gru-best \
        --out bench/results/accuracy/bucket_timing
    python scripts/bucket_timing.py --data ../shared/data/aclImdb.tar.gz --preset gru-best \
        --strategies fused auto --out bench/results/accuracy/strategy_timing
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_runs import machine  # noqa: E402  (a sibling script)

from stackrnn_jax import distributed, run_dir  # noqa: E402
from stackrnn_jax.allocator import keep_freed_memory  # noqa: E402
from stackrnn_jax.config import PRESETS, resolve  # noqa: E402
from stackrnn_jax.data import batches, load_encoded, num_batches, split_validation  # noqa: E402
from stackrnn_jax.train import (  # noqa: E402
    bucketing,
    create_model,
    create_optimizer,
    make_train_step,
    zero_totals,
)


class Variant:
    """One config's train step, state and epoch batches; ``run(n)`` times its next ``n`` steps."""

    def __init__(self, config, train):
        self.config = config
        layout = distributed.DataParallel(config.batch_size)
        steps = num_batches(len(train), config.batch_size, drop_remainder=False)
        model = create_model(config)
        optimizer = nnx.Optimizer(model, create_optimizer(config, steps), wrt=nnx.Param)
        graphdef, state = nnx.split((model, optimizer))
        self.state, self.totals = layout.replicate(state), layout.replicate(zero_totals())
        self.step = make_train_step(graphdef, config, layout.replicated)
        self.layout = layout
        self.epoch = list(batches(train, config.batch_size, shuffle=True, seed=config.seed,
                                  epoch=1, drop_remainder=False, **bucketing(config)))
        self.next, self.times = 0, []

    def _call(self, batch) -> None:
        self.state, self.totals = self.step(self.state, self.totals,
                                            self.layout.global_batch(batch), np.int32(0))

    def compile_all(self) -> float:
        """Runs one step per distinct batch length (compiles them); returns the seconds."""
        start = time.perf_counter()
        seen = set()
        for batch in self.epoch:
            if batch["ids"].shape[1] not in seen:
                seen.add(batch["ids"].shape[1])
                self._call(batch)
        jax.block_until_ready(self.totals)
        self.lengths = sorted(seen)
        return time.perf_counter() - start

    def run(self, count: int) -> None:
        start = time.perf_counter()
        for batch in self.epoch[self.next:self.next + count]:
            self._call(batch)
        jax.block_until_ready(self.totals)
        self.times.append((time.perf_counter() - start) / count)
        self.next += count

    def summary(self, compile_s: float) -> dict:
        steps = len(self.epoch)
        mean = statistics.fmean(self.times)
        widths = [batch["ids"].shape[1] for batch in self.epoch]
        return {"bucket_width": self.config.bucket_width, "compiled_lengths": self.lengths,
                "compile_s": compile_s, "timed_steps": self.next,
                "step_ms_mean": 1e3 * mean, "step_ms_median_of_blocks": 1e3 * statistics.median(
                    self.times), "step_ms_block_min": 1e3 * min(self.times),
                "step_ms_block_max": 1e3 * max(self.times), "steps_per_epoch": steps,
                "epoch_s_estimate": mean * steps,
                "recurrent_steps_per_epoch": int(np.sum(widths)),
                "padding_free_share": float(np.sum([b["lengths"].max() for b in self.epoch])
                                            / np.sum(widths))}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="aclImdb tar.gz or folder")
    parser.add_argument("--preset", choices=list(PRESETS), default="gru-best")
    parser.add_argument("--maxlen", type=int, default=500)
    parser.add_argument("--bucket-width", type=int, default=64)
    parser.add_argument("--batches", type=int, default=60, help="timed steps per variant")
    parser.add_argument("--block", type=int, default=10, help="steps per alternating block")
    parser.add_argument("--strategies", nargs=2, metavar=("BASELINE", "OTHER"),
                        help="compare two strategies (both with --bucket-width) instead")
    parser.add_argument("--out", type=Path, default=Path("bench/results/accuracy/bucket_timing"))
    args = parser.parse_args(argv)
    keep_freed_memory()  # as the stackrnn command does

    base = resolve(args.preset, None, {"maxlen": args.maxlen})
    encoded = load_encoded(args.data, num_words=base.num_words, maxlen=base.maxlen,
                           padding=base.padding, truncating=base.truncating)
    train, _ = split_validation(encoded.train, base.val_fraction, base.seed, by=base.val_split)
    if args.strategies:
        configs = {f"strategy {name}": base.replace(bucket_width=args.bucket_width,
                                                    strategy=name) for name in args.strategies}
    else:
        configs = {"no buckets": base.replace(bucket_width=0),
                   "buckets": base.replace(bucket_width=args.bucket_width)}
    variants = {name: Variant(config, train) for name, config in configs.items()}
    compile_s = {name: variant.compile_all() for name, variant in variants.items()}
    for _ in range(args.batches // args.block):
        for variant in variants.values():
            variant.run(args.block)
    rows = {name: variant.summary(compile_s[name]) for name, variant in variants.items()}
    baseline, other = rows  # the speedup is the second variant's over the first
    result = {"preset": args.preset, "maxlen": args.maxlen, "machine": machine(),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "load_average": list(__import__("os").getloadavg()), "variants": rows,
              "baseline": baseline, "other": other,
              "epoch_speedup": rows[baseline]["epoch_s_estimate"]
              / rows[other]["epoch_s_estimate"],
              "step_ratio": rows[baseline]["recurrent_steps_per_epoch"]
              / rows[other]["recurrent_steps_per_epoch"]}
    run_dir.write_json(args.out.with_suffix(".json"), result)
    run_dir.write_text(args.out.with_suffix(".md"), markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    info = result["machine"]
    lines = [f"`{result['preset']}`, maxlen {result['maxlen']}, one shuffled epoch's first "
             "batches, alternating blocks:", "",
             "| variant | step ms (mean; block min-max) | est. s/epoch | recurrent steps/epoch "
             "| compile s (lengths) |", "|---|---|---|---|---|"]
    for name, row in result["variants"].items():
        lines.append(f"| {name} | {row['step_ms_mean']:.1f} ({row['step_ms_block_min']:.1f}-"
                     f"{row['step_ms_block_max']:.1f}) | {row['epoch_s_estimate']:.0f} | "
                     f"{row['recurrent_steps_per_epoch']:,} | {row['compile_s']:.1f} "
                     f"({len(row['compiled_lengths'])}) |")
    lines += ["", f"Epoch speedup of {result['other']} over {result['baseline']} "
                  f"{result['epoch_speedup']:.2f}x; recurrent steps "
                  f"{result['step_ratio']:.2f}x fewer. {info['cpu']}, {info['cores']} cores, jax "
                  f"{info['jax']}, {result['date']}, load average "
                  f"{', '.join(f'{x:.1f}' for x in result['load_average'])} (shared machine)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
