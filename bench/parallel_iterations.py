"""Newton iterations of the parallel-in-time solvers per cell, kernel scale and length.

``python -m bench.parallel_iterations [--quick] [--out DIR]``

Iteration counts and convergence do not depend on the device, so this runs anywhere (a
CPU included) and times nothing. For every cell, recurrent-kernel scale and sequence
length it solves one layer of the benchmark model (``bench/workloads.py``: random token
ids through ``Embedding(E)``, then ``RNN(H)`` with Keras' initialisation — an orthogonal
recurrent kernel — and non-zero biases), batch B, float32, with each solver variant of
``bench.parallel.VARIANTS`` that applies to the cell, from the default first guess and
from ``init="chunks"``. It records the Newton updates (``parallel_solve``), whether they
converged before the cap (else the sequential finish ran), and the max |difference| of
the layer's outputs from the NumPy float64 reference (``reference.py``); and that of
``"scan"`` in float32, the floor any float32 solver meets (on chaotic dynamics float32
rounding alone makes the trajectory depart from the float64 one).

``--scales``: the recurrent kernel is multiplied by each (1: Keras' orthogonal kernel;
for the SimpleRNN the spectral radius is the scale, > 1 expanding dynamics).

Writes ``DIR/iterations.json`` (schema ``stackrnn-bench-parallel-iterations/1``, with the
machine, date and load average) and ``DIR/iterations.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench.parallel import DEFAULT_OUT, VARIANTS, applies, variant_options

SCHEMA = "stackrnn-bench-parallel-iterations/1"
GRIDS = {
    "cpu": {"cells": "simple,lstm,gru", "T": "1024,4096,16384", "scales": "1"},
    "quick": {"cells": "simple,lstm", "T": "32", "scales": "1"},
}
INITS = ("input", "chunks")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.parallel_iterations", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke grid")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder")
    p.add_argument("--device", default=None, help="cpu or gpu (default: jax.devices()[0])")
    p.add_argument("--cells", default=None, help="comma list of simple,gru,lstm")
    p.add_argument("--T-values", default=None, help="comma list of sequence lengths")
    p.add_argument("--scales", default=None, help="comma list of recurrent-kernel scales")
    p.add_argument("--variants", default=",".join(v for v in VARIANTS if v != "scan"),
                   help="comma list of solver variants (default: all of bench.parallel's)")
    p.add_argument("--H", type=int, default=64, help="hidden units (default 64)")
    p.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--embed", type=int, default=32, help="embedding width (default 32)")
    p.add_argument("--deer-max-T", type=int, default=1024,
                   help="run deer (full Jacobians, T*B*D^2 floats) up to this T (default 1024)")
    p.add_argument("--elk-max-T", type=int, default=4096,
                   help="run elk (3 scans per update, and it hits the cap) up to this T "
                        "(default 4096: on a CPU its capped runs at T 16384 take minutes)")
    p.add_argument("--note", default="", help="free text stored with the machine description")
    args = p.parse_args(argv)
    grid = GRIDS["quick" if args.quick else "cpu"]
    args.cell_list = [c for c in (args.cells or grid["cells"]).split(",") if c]
    args.T_list = sorted(int(v) for v in (args.T_values or grid["T"]).split(",") if v)
    args.scale_list = [float(v) for v in (args.scales or grid["scales"]).split(",") if v]
    args.variant_list = [v for v in args.variants.split(",") if v]
    bad = [v for v in args.variant_list if v not in VARIANTS or v == "scan"]
    bad += [c for c in args.cell_list if c not in ("simple", "gru", "lstm")]
    if bad:
        p.error(f"unknown values {bad}")
    return args


def _problem(cell: str, T: int, scale: float, args):
    """``(layer params, xs (T, B, E) float32, reference outputs (B, T, H) float64)``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bench.workloads import Workload, init_model, make_batch
    from stackrnn_jax.reference import reference_rnn

    w = Workload(T=T, L=1, H=args.H, B=args.batch, cell=cell, E=args.embed)
    params = init_model(w)
    layer = {**params["rnn"][0],
             "recurrent_kernel": scale * params["rnn"][0]["recurrent_kernel"]}
    x = jnp.take(params["embedding"], jnp.asarray(make_batch(w)[0]), axis=0)
    ref = reference_rnn([jax.tree.map(lambda a: np.asarray(a, np.float64), layer)],
                        np.asarray(x, np.float64), cell=cell, return_sequences=True)
    return layer, jnp.swapaxes(x, 0, 1), ref


def _scan_error(cell_name, layer, xs, ref) -> dict:
    """The float32 sequential solution's error: ``"scan"``, as an entry of 0 updates."""
    import jax
    import numpy as np

    from stackrnn_jax import stacked_rnn

    y = jax.jit(lambda x: stacked_rnn([layer], x, cell=cell_name, return_sequences=True,
                                      strategy="scan"))(jax.numpy.swapaxes(xs, 0, 1))
    return {"iterations": 0, "converged": True,
            "max_abs_error": float(np.max(np.abs(np.asarray(y, np.float64) - ref)))}


def _solve(cell_name, layer, xs, ref, options) -> dict:
    import jax
    import numpy as np

    from stackrnn_jax import make_cell
    from stackrnn_jax.strategies.parallel import parallel_solve

    cell = make_cell(cell_name)
    states, iterations, converged = jax.jit(
        lambda xs: parallel_solve(cell, layer, xs, **options))(xs)
    h = np.asarray(states[..., :ref.shape[-1]], np.float64).swapaxes(0, 1)
    return {"iterations": int(iterations), "converged": bool(converged),
            "max_abs_error": float(np.max(np.abs(h - ref)))}


def run(args) -> dict:
    import jax

    from bench.machine import machine_info, machine_line
    from bench.run import pick_device

    device = pick_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"schema": SCHEMA, "machine": machine_info(device, args.note),
              "load_average_start": list(os.getloadavg()),
              "config": {"argv": list(sys.argv[1:]), "cells": args.cell_list, "T": args.T_list,
                         "scales": args.scale_list, "variants": args.variant_list,
                         "variant_options": {v: variant_options(v) for v in args.variant_list},
                         "inits": list(INITS), "H": args.H, "batch": args.batch,
                         "embed": args.embed, "deer_max_T": args.deer_max_T,
                         "elk_max_T": args.elk_max_T,
                         "dtype": "float32"},
              "entries": []}
    print(machine_line(result["machine"]), flush=True)
    start = time.perf_counter()
    with jax.default_device(device):
        for cell in args.cell_list:
            for scale in args.scale_list:
                for t in args.T_list:
                    layer, xs, ref = _problem(cell, t, scale, args)
                    result["entries"].append({"cell": cell, "scale": scale, "T": t,
                                              "variant": "scan", "init": "-",
                                              **_scan_error(cell, layer, xs, ref)})
                    for variant in args.variant_list:
                        limit = {"deer": args.deer_max_T, "elk": args.elk_max_T}.get(variant, t)
                        if not applies(variant, cell) or t > limit:
                            continue
                        for init in INITS:
                            options = {**variant_options(variant), "init": init}
                            entry = {"cell": cell, "scale": scale, "T": t, "variant": variant,
                                     "init": init, **_solve(cell, layer, xs, ref, options)}
                            result["entries"].append(entry)
                            print(f"[{time.perf_counter() - start:6.0f}s] {cell} x{scale:g} "
                                  f"T {t} {variant}/{init}: {entry['iterations']} it "
                                  f"converged {entry['converged']} "
                                  f"error {entry['max_abs_error']:.1e}", flush=True)
                            _write(out / "iterations.json", json.dumps(result, indent=1))
    result["elapsed_s"] = time.perf_counter() - start
    result["load_average_end"] = list(os.getloadavg())
    _write(out / "iterations.json", json.dumps(result, indent=1))
    _write(out / "iterations.md", markdown(result))
    print(f"wrote {out / 'iterations.json'} and iterations.md", flush=True)
    return result


def _write(path: Path, text: str) -> None:
    """Atomically: a partial file never replaces a whole one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def markdown(result) -> str:
    """One table per (cell, scale): rows T; per variant and first guess the iterations."""
    from bench.machine import machine_line

    cfg = result["config"]
    load = ", ".join(f"{v:.1f}" for v in result["load_average_start"])
    lines = [f"Machine: {machine_line(result['machine'])}; load average at start {load}", "",
             f"One layer of `Embedding(E={cfg['embed']}) -> RNN(H={cfg['H']})`, batch "
             f"{cfg['batch']}, {cfg['dtype']}, Keras initialisation (orthogonal recurrent "
             "kernel) times the scale, random ids. Each cell: forward Newton updates "
             "(`parallel_solve`), `*` = cap reached, the sequential finish ran; in "
             "brackets the max |error| of the outputs against the NumPy float64 reference. "
             "Columns: variant / first guess (`input`: f(0, x_t); `chunks`: exact within "
             "chunks of 32 steps)" + ("; `scan`: the float32 sequential loop's own error"
                                     if any(e["variant"] == "scan" for e in result["entries"])
                                     else "") + ".", ""]
    entries = result["entries"]
    for cell in cfg["cells"]:
        for scale in cfg["scales"]:
            rows = [e for e in entries if e["cell"] == cell and e["scale"] == scale]
            columns = list(dict.fromkeys((e["variant"], e["init"]) for e in rows))
            if not rows:
                continue
            head = ["T"] + ["scan" if v == "scan" else f"{v} / {i}" for v, i in columns]
            lines += [f"#### {cell}, recurrent kernel x {scale:g}", "",
                      "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for t in cfg["T"]:
                by = {(e["variant"], e["init"]): e for e in rows if e["T"] == t}
                cells = [str(t)] + [_cell_text(by.get(c)) for c in columns]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def _cell_text(e) -> str:
    if e is None:
        return ""
    if e["variant"] == "scan":
        return f"({e['max_abs_error']:.0e})"
    return (f"{e['iterations']}{'' if e['converged'] else '*'} "
            f"({e['max_abs_error']:.0e})")


def main(argv=None) -> dict:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
