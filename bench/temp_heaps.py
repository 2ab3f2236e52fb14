"""What ``stackrnn_jax/xla_heaps.py`` buys: steps with XLA's temporaries in one block vs split.

``python -m bench.temp_heaps [--rounds 3] [--workloads ...] [--out DIR] [--note ...]``

For each workload (the peer tables' model, ``Embedding(10k, 32) -> 2 x cell(64) ->
Dense(1)`` with strategy ``auto``; ``train`` is the jitted forward, backward and Adam
step, ``infer`` the forward) and each setting, a fresh process (XLA reads its options
once, at start-up) imports ``stackrnn_jax`` with ``STACKRNN_TEMP_HEAPS=0`` (XLA's one
block) or unset (the library's default: split), under glibc's default malloc settings (a
library user's: ``allocator.keep_freed_memory`` is not applied), compiles the step, times
its steady calls and counts the minor page faults per call. The rounds run both settings
of a workload back to back, so a shared machine's drift falls on both alike.
Writes ``DIR/temp_heaps.json`` and ``DIR/temp_heaps.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SCHEMA = "stackrnn-bench-temp-heaps/1"
ROOT = Path(__file__).resolve().parent.parent  # bench/ runs from the repository root
SETTINGS = {"one block": "0", "split": "1"}  # label -> STACKRNN_TEMP_HEAPS
WORKLOADS = ("train:lstm:32:500", "train:gru:32:500", "train:simple:32:500",
             "infer:lstm:256:500", "infer:gru:256:500", "infer:simple:256:500")


def measure_here(part: str, cell: str, batch: int, steps: int) -> dict:
    """In this process: temp bytes, step timing and minor page faults per call."""
    import resource

    import jax

    import stackrnn_jax  # noqa: F401  (before jax starts its backends: sets XLA_FLAGS)
    from bench.timing import block, summarize
    from bench.workloads import Workload, init_model, make_batch, make_functions

    w = Workload(T=steps, B=batch, cell=cell)
    forward, train_step, optimizer = make_functions(w, strategy="auto")
    params = init_model(w)
    ids, labels = make_batch(w)
    if part == "train":
        call, args = jax.jit(train_step), (params, optimizer.init(params), ids, labels)
    else:
        call, args = jax.jit(forward), (params, ids)
    temp = call.lower(*args).compile().memory_analysis().temp_size_in_bytes
    for _ in range(3):  # compile, then let glibc's adaptive threshold see the blocks freed
        block(call(*args))
    times, faults = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        start = time.perf_counter()
        block(call(*args))
        times.append(time.perf_counter() - start)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {"temp_bytes": int(temp), "faults_per_call": faults / len(times),
            "split": "xla_multiheap_size_constraint_per_heap" in os.environ.get("XLA_FLAGS", ""),
            **summarize(times)}


def measure_in_child(workload: str, setting: str) -> dict:
    """``measure_here`` in a fresh CPU process with the setting's STACKRNN_TEMP_HEAPS."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    env.update(STACKRNN_TEMP_HEAPS=SETTINGS[setting], JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-m", "bench.temp_heaps", "--child", workload],
                         env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(result: dict) -> str:
    """Per workload: temp MB, median ms of each setting (median over rounds, their range),
    the speed-up and the page faults per call."""
    from bench.machine import machine_line

    lines = [f"Machine: {machine_line(result['machine'])}", "",
             f"Command: `{result['command']}`", "",
             "Median ms per call (median over the rounds of each round's median, the rounds' "
             "range); faults: minor page faults per call (median over the rounds).", "",
             "| workload | temp MB | one block ms | split ms | one block ÷ split "
             "| faults, one block | faults, split |", "|---|---|---|---|---|---|---|"]
    for workload, rounds in result["results"].items():
        part, cell, batch, steps = workload.split(":")
        ms = {s: [1e3 * r[s]["median_s"] for r in rounds] for s in SETTINGS}
        faults = {s: statistics.median(r[s]["faults_per_call"] for r in rounds)
                  for s in SETTINGS}
        mid = {s: statistics.median(v) for s, v in ms.items()}
        cells = [f"{mid[s]:.1f} ({min(ms[s]):.1f}-{max(ms[s]):.1f})" for s in SETTINGS]
        lines.append(f"| {cell} {part}, batch {batch}, T {steps} | "
                     f"{rounds[0]['split']['temp_bytes'] / 1e6:.1f} | {cells[0]} | {cells[1]} | "
                     f"{mid['one block'] / mid['split']:.2f}x | {faults['one block']:.0f} | "
                     f"{faults['split']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS),
                        help="PART:CELL:BATCH:T, PART train or infer (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/temp-heaps"))
    parser.add_argument("--note", default="")
    opts = parser.parse_args(argv)
    if opts.child:
        part, cell, batch, steps = opts.child.split(":")
        print(json.dumps(measure_here(part, cell, int(batch), int(steps))))
        return
    from bench.machine import machine_info

    results = {w: [] for w in opts.workloads}
    for round_index in range(opts.rounds):
        for workload in opts.workloads:
            results[workload].append({s: measure_in_child(workload, s) for s in SETTINGS})
            print(f"round {round_index + 1}: {workload} done", flush=True)
    command = "python -m bench.temp_heaps " + " ".join(
        argv if argv is not None else sys.argv[1:])
    result = {"schema": SCHEMA, "machine": machine_info(note=opts.note),
              "command": command.strip(), "results": results}
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "temp_heaps.json").write_text(json.dumps(result, indent=1))
    table = markdown(result)
    (opts.out / "temp_heaps.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
