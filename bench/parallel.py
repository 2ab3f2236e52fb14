"""Parallel-in-time (DEER / quasi-DEER) against "scan" over sequence length and width.

``python -m bench.parallel [--quick | --grid gpu] [--device gpu] [--out DIR]``

For every cell, hidden size H and sequence length T of the grid it times, on the model of
``bench/workloads.py`` (``Embedding -> L x RNN(H) -> Dense(1)``, random full-length
token ids, batch B): the forward pass and the train step (forward + backward + Adam) of
``"scan"`` and of ``"parallel"`` with each solver variant of ``VARIANT_OPTIONS`` that
applies to the cell (default: deer, quasi, block for the LSTM, gain for the SimpleRNN;
``elk`` on request); for each parallel variant also the Newton iteration count of every
layer's forward solve (from ``parallel_solve``, on the same inputs) and whether it
converged before the iteration cap, and its output's max |difference| from scan's.

Each configuration is bounded (and the whole run, with ``--deadline-s``): T runs in
increasing order per (cell, H, variant) and a
point whose time, extrapolated linearly in T from the previous point, would exceed
``--max-call-s`` per call is skipped, as is a deer point whose Jacobians
(``T·B·D^2`` numbers, D = H or 2H for an LSTM, held ~``JACOBIAN_COPIES`` times) would
exceed ``--memory-gb``. Skips are recorded with their reason.

Writes ``DIR/results.json`` (schema ``stackrnn-bench-parallel/1``) and ``DIR/tables.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

SCHEMA = "stackrnn-bench-parallel/1"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "parallel"
# The "parallel" strategy's options of each variant; "block" differs from "quasi" only
# where the carry has two parts (LSTM), "gain" is for the SimpleRNN only.
VARIANT_OPTIONS = {"deer": {"method": "deer"}, "quasi": {"method": "quasi"},
                   "elk": {"method": "quasi", "elk": 0.1}, "block": {"method": "block"},
                   "gain": {"method": "gain"}}
VARIANT_CELLS = {"block": ("lstm",), "gain": ("simple",)}
VARIANTS = ("scan", *VARIANT_OPTIONS)
DEFAULT_VARIANTS = ("scan", "deer", "quasi", "block", "gain")
# Jacobian-sized arrays alive at once in a deer iteration (the loop's J, the new J, the
# associative scan's partial products): an estimate for the memory guard.
JACOBIAN_COPIES = 6

GRIDS = {  # the default is a modest CPU run (a few minutes on 2 cores)
    "cpu": {"cells": "simple", "T": "1024,4096,16384", "H": "8,64"},
    "gpu": {"cells": "simple,gru,lstm", "T": "1024,4096,16384,65536,100000",
            "H": "8,16,32,64,128,256"},
    "quick": {"cells": "simple", "T": "16", "H": "4"},
}


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.parallel", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", choices=sorted(GRIDS), default="cpu",
                   help="preset of cells/T/H (default cpu: simple, T 1k/4k/16k, H 8/64; "
                        "gpu: simple,gru,lstm, T 1k..100k, H 8..256)")
    p.add_argument("--quick", action="store_true", help="same as --grid quick (seconds)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder")
    p.add_argument("--device", default=None, help="cpu or gpu (default: jax.devices()[0])")
    p.add_argument("--cells", default=None,
                   help="comma list of simple,gru,lstm (overrides the grid)")
    p.add_argument("--T-values", default=None, help="comma list of sequence lengths (overrides)")
    p.add_argument("--H-values", default=None, help="comma list of hidden sizes (overrides)")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma list of {','.join(VARIANTS)} (default: "
                        f"{','.join(DEFAULT_VARIANTS)}; each where it applies: block for "
                        f"the LSTM, gain for the SimpleRNN)")
    p.add_argument("--modes", default="forward,train", help="comma list of forward,train")
    p.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--layers", type=int, default=1, help="stacked layers (default 1)")
    p.add_argument("--embed", type=int, default=32, help="embedding width (default 32)")
    p.add_argument("--max-iters", type=int, default=None,
                   help="Newton iteration cap (default: the strategy's, 32 deer / 128 quasi)")
    p.add_argument("--max-call-s", type=float, default=None,
                   help="skip points predicted slower than this per call (default 5 cpu, 30 gpu)")
    p.add_argument("--memory-gb", type=float, default=None,
                   help="skip deer points whose Jacobians need more (default 4 on cpu; "
                        "half the device memory on a GPU)")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="start no new point after this many seconds (recorded as skipped)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (default 5)")
    p.add_argument("--min-repeats", type=int, default=2, help="at least this many (default 2)")
    p.add_argument("--budget-s", type=float, default=2.0,
                   help="stop repeating after this many seconds once min-repeats are done")
    p.add_argument("--note", default="", help="free text stored with the machine description")
    args = p.parse_args(argv)
    grid = GRIDS["quick" if args.quick else args.grid]
    args.cell_list = [c.strip() for c in (args.cells or grid["cells"]).split(",") if c.strip()]
    args.T_list = sorted(_ints(args.T_values or grid["T"]))
    args.H_list = sorted(_ints(args.H_values or grid["H"]))
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [v for v in args.variant_list if v not in VARIANTS]
    bad += [m for m in args.mode_list if m not in ("forward", "train")]
    bad += [c for c in args.cell_list if c not in ("simple", "gru", "lstm")]
    if bad:
        p.error(f"unknown values {bad}")
    return args


def applies(variant: str, cell: str) -> bool:
    """Whether ``variant`` is run for ``cell`` (see ``VARIANT_CELLS``)."""
    return cell in VARIANT_CELLS.get(variant, (cell,))


def variant_options(variant: str) -> dict:
    """The ``"parallel"`` strategy options of a solver variant."""
    return dict(VARIANT_OPTIONS[variant])


def _strategy(variant: str, max_iters):
    """``(strategy name, strategy_options)`` of a variant."""
    if variant == "scan":
        return "scan", None
    options = variant_options(variant)
    if max_iters is not None:
        options["max_iters"] = max_iters
    return "parallel", options


def make_functions(w, variant: str, max_iters=None):
    """``(forward, train_step, optimizer)`` like ``workloads.make_functions``, with the
    variant's strategy options."""
    import jax
    import jax.numpy as jnp
    import optax

    from stackrnn_jax import stacked_rnn

    strategy, options = _strategy(variant, max_iters)

    def forward(params, ids):
        x = jnp.take(params["embedding"], ids, axis=0)
        h = stacked_rnn(params["rnn"], x, cell=w.cell, strategy=strategy,
                        strategy_options=options)
        return (h @ params["dense_kernel"] + params["dense_bias"])[:, 0]

    def loss_fn(params, ids, labels):
        return optax.sigmoid_binary_cross_entropy(forward(params, ids), labels).mean()

    optimizer = optax.adam(1e-3)

    def train_step(params, opt_state, ids, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, ids, labels)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return forward, train_step, optimizer


def newton_report(w, variant: str, params, ids, max_iters=None) -> dict:
    """Forward Newton iterations and convergence of every layer (``parallel_solve``)."""
    import jax
    import jax.numpy as jnp

    from stackrnn_jax import make_cell
    from stackrnn_jax.strategies.parallel import parallel_solve

    cell = make_cell(w.cell)
    options = _strategy(variant, max_iters)[1]

    def solve(params, ids):
        xs = jnp.swapaxes(jnp.take(params["embedding"], ids, axis=0), 0, 1)
        report = []
        for layer in params["rnn"]:
            states, iterations, converged = parallel_solve(cell, layer, xs, **options)
            report.append((iterations, converged))
            xs = states[..., :w.H]
        return report

    report = jax.jit(solve)(params, ids)
    return {"iterations": [int(k) for k, _ in report],
            "converged": [bool(c) for _, c in report]}


def jacobian_gb(w) -> float:
    """Estimated memory of deer's Jacobian arrays for one layer, float32, in GB."""
    d = w.H * (2 if w.cell == "lstm" else 1)
    return JACOBIAN_COPIES * w.T * w.B * d * d * 4 / 1e9


def measure(w, variant, device, args, scan_logits) -> dict:
    """Compile and time forward and/or train step of one variant at one point."""
    import jax
    import numpy as np

    from bench.timing import block, lower_and_compile, time_steady
    from bench.workloads import init_model, make_batch

    forward, train_step, optimizer = make_functions(w, variant, args.max_iters)
    params = jax.device_put(init_model(w), device)
    ids_np, labels_np = make_batch(w)
    ids, labels = jax.device_put(ids_np, device), jax.device_put(labels_np, device)
    timing = dict(warmup=1, repeats=args.repeats, min_repeats=args.min_repeats,
                  budget_s=args.budget_s)
    entry = {"variant": variant, "workload": w.as_dict(), "status": "ok", "note": ""}
    if "forward" in args.mode_list:
        compiled, comp = lower_and_compile(jax.jit(forward), params, ids)
        logits = np.asarray(block(compiled(params, ids)))
        entry["forward"] = {**comp, **time_steady(lambda: compiled(params, ids), block, **timing)}
        if variant == "scan":
            scan_logits[w.label()] = logits
        elif w.label() in scan_logits:
            entry["max_abs_diff_vs_scan"] = float(np.max(np.abs(logits - scan_logits[w.label()])))
    if "train" in args.mode_list:
        opt_state = jax.device_put(optimizer.init(params), device)
        compiled, comp = lower_and_compile(jax.jit(train_step), params, opt_state, ids, labels)
        state = {"p": params, "o": opt_state}

        def step():
            state["p"], state["o"], loss = compiled(state["p"], state["o"], ids, labels)
            return loss

        block(step())
        entry["train"] = {**comp, **time_steady(step, block, **timing)}
    if variant != "scan":
        entry["newton"] = newton_report(w, variant, params, ids, args.max_iters)
    return entry


def _slowest_median(entry) -> float:
    return max(entry[m]["median_s"] for m in ("forward", "train") if m in entry)


def _memory_budget_gb(args, device) -> float:
    if args.memory_gb is not None:
        return args.memory_gb
    if device.platform == "cpu":
        return 4.0
    stats = device.memory_stats() or {}
    return 0.5 * stats.get("bytes_limit", 16e9) / 1e9


def run(args) -> dict:
    import jax

    from bench.machine import machine_info, machine_line
    from bench.run import pick_device
    from bench.workloads import Workload

    device = pick_device(args.device)
    max_call_s = args.max_call_s or (5.0 if device.platform == "cpu" else 30.0)
    memory_gb = _memory_budget_gb(args, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"schema": SCHEMA, "machine": machine_info(device, args.note),
              "config": {"argv": list(sys.argv[1:]), "cells": args.cell_list, "T": args.T_list,
                         "H": args.H_list, "variants": args.variant_list,
                         "modes": args.mode_list, "batch": args.batch, "layers": args.layers,
                         "embed": args.embed, "max_iters": args.max_iters,
                         "max_call_s": max_call_s, "memory_gb": memory_gb,
                         "deadline_s": args.deadline_s,
                         "repeats": args.repeats, "min_repeats": args.min_repeats,
                         "budget_s": args.budget_s},
              "entries": []}
    print(machine_line(result["machine"]), flush=True)
    start = time.perf_counter()
    with jax.default_device(device):
        for cell in args.cell_list:
            for h in args.H_list:
                last: dict = {}  # variant -> (T, slowest median) of its previous point
                scan_logits: dict = {}
                for t in args.T_list:
                    w = Workload(T=t, L=args.layers, H=h, B=args.batch, cell=cell,
                                 E=args.embed)
                    for variant in args.variant_list:
                        if not applies(variant, cell):
                            continue
                        if args.deadline_s and time.perf_counter() - start > args.deadline_s:
                            entry = {"variant": variant, "workload": w.as_dict(),
                                     "status": "skipped",
                                     "note": f"--deadline-s {args.deadline_s:g} passed"}
                        else:
                            entry = _bounded(w, variant, device, args, scan_logits, last,
                                             max_call_s, memory_gb)
                        result["entries"].append(entry)
                        print(f"[{time.perf_counter() - start:6.0f}s] {w.label()} "
                              f"{_summary(entry)}", flush=True)
                        (out / "results.json").write_text(json.dumps(result, indent=1))
    result["elapsed_s"] = time.perf_counter() - start
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "tables.md").write_text(markdown(result))
    print(f"wrote {out / 'results.json'} and tables.md ({result['elapsed_s']:.0f} s)", flush=True)
    return result


def _bounded(w, variant, device, args, scan_logits, last, max_call_s, memory_gb) -> dict:
    """``measure`` unless the time or memory guard says skip; errors become entries."""
    entry = {"variant": variant, "workload": w.as_dict(), "status": "skipped", "note": ""}
    if variant in last:
        t_prev, s_prev = last[variant]
        predicted = s_prev * w.T / t_prev
        if predicted > max_call_s:
            entry["note"] = (f"predicted {predicted:.1f} s per call > --max-call-s "
                             f"{max_call_s:g} (from T={t_prev})")
            last[variant] = (w.T, predicted)
            return entry
    if variant == "deer" and jacobian_gb(w) > memory_gb:
        entry["note"] = f"Jacobians ~{jacobian_gb(w):.1f} GB > --memory-gb {memory_gb:g}"
        return entry
    try:
        entry = measure(w, variant, device, args, scan_logits)
    except Exception as exc:  # noqa: BLE001 - one failing point must not stop the sweep
        entry.update(status="error", note=f"{type(exc).__name__}: {exc}"[:500])
        return entry
    last[variant] = (w.T, _slowest_median(entry))
    return entry


def _summary(e) -> str:
    if e["status"] != "ok":
        return f"{e['variant']:<6} {e['status']}: {e['note']}"
    parts = [f"{e['variant']:<6}"]
    for mode in ("forward", "train"):
        if mode in e:
            parts.append(f"{mode} {1e3 * e[mode]['median_s']:.1f} ms")
    if "newton" in e:
        parts.append(f"iterations {e['newton']['iterations']} converged {e['newton']['converged']}")
    return "  ".join(parts)


# ----------------------------------------------------------------------------- tables


def markdown(result) -> str:
    """One table per (cell, mode): rows (H, T); per variant median ms, x scan, iterations."""
    from bench.machine import machine_line

    cfg = result["config"]
    lines = [f"Machine: {machine_line(result['machine'])}", "",
             f"Model: Embedding(E={cfg['embed']}) -> {cfg['layers']} x RNN(H) -> Dense(1), "
             f"batch {cfg['batch']}, float32, random full-length ids. Median ms; "
             "(x) = scan's time / this one (> 1: faster than scan); it = forward Newton "
             "iterations per layer, * = cap reached, sequential finish ran.", ""]
    entries = result["entries"]
    variants = cfg["variants"]
    for cell in cfg["cells"]:
        for mode in cfg["modes"]:
            head = ["H", "T"] + [v if v == "scan" else f"{v} (x scan) [it]" for v in variants]
            lines += [f"#### {cell}, {mode}", "", "| " + " | ".join(head) + " |",
                      "|" + "---|" * len(head)]
            for h in cfg["H"]:
                for t in cfg["T"]:
                    row = {e["variant"]: e for e in entries if e["workload"]["cell"] == cell
                           and e["workload"]["H"] == h and e["workload"]["T"] == t}
                    if not row:
                        continue
                    scan = row.get("scan")
                    scan_s = scan[mode]["median_s"] if scan and mode in scan else None
                    cells = [str(h), str(t)] + [_cell_text(row.get(v), mode, scan_s)
                                                for v in variants]
                    lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def _cell_text(e, mode, scan_s) -> str:
    if e is None:
        return ""
    if e["status"] != "ok" or mode not in e:
        return e["status"]
    s = e[mode]["median_s"]
    text = f"{1e3 * s:.1f}"
    if e["variant"] != "scan":
        if scan_s:
            text += f" ({scan_s / s:.2f}x)"
        newton = e["newton"]
        text += " [" + ",".join(f"{k}{'' if ok else '*'}" for k, ok in
                                zip(newton["iterations"], newton["converged"])) + "]"
    return text


def main(argv=None) -> dict:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
