"""Gradient memory on long sequences: autodiff of ``scan`` against the custom VJPs.

``python -m bench.grad_memory [--device gpu] [--T 4096] [--out DIR]``

For the tutorial model at sequence length ``T`` (default 4,096) it compiles
``jax.value_and_grad`` of the loss for ``scan`` (reverse-mode autodiff of ``lax.scan``),
``scan_vjp`` (custom VJP storing the carries and the recurrent products) and
``scan_vjp_remat`` (custom VJP storing only the carries) and reports the compiled
executable's temporary buffer bytes (``memory_analysis()``: what XLA allocates for the
call beyond its arguments and outputs — the stored activations live there) and the
median time of the call. Writes ``DIR/grad_memory.json`` and ``DIR/grad_memory.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

STRATEGIES = ("scan", "scan_vjp", "scan_vjp_remat", "cpu_native")


def measure(w, device, strategies=STRATEGIES, *, repeats: int = 5,
            budget_s: float = 2.0) -> list[dict]:
    """One entry per strategy: temp bytes of the compiled gradient and its median seconds."""
    import jax
    import optax

    from bench.timing import block, lower_and_compile, memory_info, time_steady
    from bench.workloads import init_model, make_batch, make_functions

    params = jax.device_put(init_model(w), device)
    ids, labels = (jax.device_put(a, device) for a in make_batch(w))
    rows = []
    for strategy in strategies:
        forward = make_functions(w, strategy=strategy)[0]

        def loss(p, forward=forward):
            return optax.sigmoid_binary_cross_entropy(forward(p, ids), labels).mean()

        compiled, compile_info = lower_and_compile(jax.jit(jax.value_and_grad(loss)), params)
        stats = time_steady(lambda compiled=compiled: compiled(params), block, warmup=1,
                            repeats=repeats, min_repeats=2, budget_s=budget_s)
        rows.append({"strategy": strategy, "compile_s": compile_info["compile_s"],
                     "median_s": stats["median_s"], "memory": memory_info(compiled)})
    return rows


def markdown(result: dict) -> str:
    """The table of ``grad_memory.json``: temp MB, ratio to ``scan`` and median ms per strategy."""
    from bench.machine import machine_line

    w, rows = result["workload"], result["results"]
    base = rows[0]["memory"].get("temp_bytes")
    lines = [f"Machine: {machine_line(result['machine'])}", "",
             f"Gradient of the loss, {w['cell']} T={w['T']} L={w['L']} H={w['H']} B={w['B']} "
             f"E={w['E']}:", "",
             "| strategy | temp MB | ÷ scan | grad ms (median) |", "|---|---|---|---|"]
    for row in rows:
        temp = row["memory"].get("temp_bytes")
        ratio = f"{temp / base:.2f}x" if temp is not None and base else "n/a"
        temp_mb = f"{temp / 2**20:.1f}" if temp is not None else "n/a"
        lines.append(f"| {row['strategy']} | {temp_mb} | {ratio} | {1e3 * row['median_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    import jax

    from bench.machine import machine_info
    from bench.workloads import TUTORIAL

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", help="cpu or gpu (default: jax.devices()[0])")
    parser.add_argument("--T", type=int, default=4096)
    parser.add_argument("--L", type=int, default=TUTORIAL.L)
    parser.add_argument("--H", type=int, default=TUTORIAL.H)
    parser.add_argument("--B", type=int, default=TUTORIAL.B)
    parser.add_argument("--cell", default=TUTORIAL.cell, choices=("simple", "gru", "lstm"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/grad_memory"))
    parser.add_argument("--note", default="")
    opts = parser.parse_args(argv)
    device = jax.devices(opts.device)[0] if opts.device else jax.devices()[0]
    w = dataclasses.replace(TUTORIAL, T=opts.T, L=opts.L, H=opts.H, B=opts.B, cell=opts.cell)
    rows = measure(w, device)
    opts.out.mkdir(parents=True, exist_ok=True)
    result = {"schema": "stackrnn-bench-grad-memory/1", "machine": machine_info(device, opts.note),
              "workload": w.as_dict(), "results": rows}
    (opts.out / "grad_memory.json").write_text(json.dumps(result, indent=1))
    table = markdown(result)
    (opts.out / "grad_memory.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
