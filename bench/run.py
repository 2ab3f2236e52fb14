"""Run the benchmark suite: ``python -m bench.run [--quick] [--sweep T,L,H,B,cell] [--out DIR]``.

For every strategy variant (the registry's strategies read at run time, ``scan`` at
unroll 1/2/4/8/16, and the benchmark-only ``fori``) and every workload of the selected
sweeps it records compile time, steady-state forward and train-step time (median and
spread), memory as the backend reports it, and achieved FLOP/s against a same-size
matmul; the peers (Keras, Flax linen, PyTorch) run on the tutorial workload. Results go
to ``DIR/results.json``, plots to ``DIR/*.png`` and Markdown tables to ``DIR/tables.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench.entries import Entry, failed, ours_entry

SCHEMA = "stackrnn-bench/1"
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
ALL_SWEEPS = ("tutorial", "T", "L", "H", "B", "cell")


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _base_sizes(text: str) -> dict:
    sizes = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key.strip() not in ("T", "L", "H", "B", "E") or not value.strip().isdigit():
            raise argparse.ArgumentTypeError(
                f"expected NAME=INT pairs with NAME in T, L, H, B, E (e.g. T=100,B=256), "
                f"got {item!r}")
        sizes[key.strip()] = int(value)
    return sizes


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", default="tutorial,T",
                   help="comma list of tutorial,T,L,H,B,cell or 'all' (default: tutorial,T)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (smoke test)")
    p.add_argument("--base", type=_base_sizes, default={},
                   help="sizes of the base workload the sweeps vary, e.g. T=100,B=256 "
                        "(default: the tutorial workload)")
    p.add_argument("--forward-only", action="store_true",
                   help="time the forward pass (inference) only, no train step")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default: bench/results)")
    p.add_argument("--device", default=None,
                   help="JAX platform to run on: cpu, gpu (or cuda), tpu; "
                        "default: jax.devices()[0]")
    p.add_argument("--strategies", default=None,
                   help="comma list of variants to run (e.g. scan,scan/u8,loop,fori), or 'none' "
                        "(peers only); default: all")
    p.add_argument("--sweep-strategies", default=None,
                   help="variants for the sweeps other than 'tutorial' "
                        "(default: same as --strategies)")
    p.add_argument("--unrolls", default="1,2,4,8,16",
                   help="scan unroll values (default 1,2,4,8,16)")
    p.add_argument("--peers", default="keras,flax_linen,torch",
                   help="comma list of peers, or 'none' (default: keras,flax_linen,torch; "
                        "keras_tf: Keras on TensorFlow, in a process started with "
                        "KERAS_BACKEND=tensorflow)")
    p.add_argument("--peers-in-sweeps", action="store_true",
                   help="also run the peers on every sweep point (default: tutorial workload only)")
    p.add_argument("--torch-threads", type=int, default=0,
                   help="torch.set_num_threads for the PyTorch peer (default 0: torch's default)")
    p.add_argument("--loop-max-T", type=int, default=200,
                   help="skip the unrolled 'loop' strategy above this T "
                        "(compile time; default 200)")
    p.add_argument("--malloc", choices=("keep", "default"), default="keep",
                   help="'keep' (default): raise glibc's mmap/trim thresholds "
                        "for the whole process "
                        "(ours and the peers alike), as the stackrnn command does "
                        "(stackrnn_jax/allocator.py); 'default': glibc's own behaviour")
    p.add_argument("--parallel-max-T", type=int, default=200,
                   help="skip the parallel-in-time strategies (parallel, parallel_quasi) "
                        "above this T "
                        "(default 200; their T curve is `python -m bench.parallel`)")
    p.add_argument("--T-values", type=_int_list, default=None, help="T sweep values")
    p.add_argument("--L-values", type=_int_list, default=None, help="L sweep values")
    p.add_argument("--H-values", type=_int_list, default=None, help="H sweep values")
    p.add_argument("--B-values", type=_int_list, default=None, help="B sweep values")
    p.add_argument("--cells", default=None, help="cell sweep values (default simple,gru,lstm)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed calls per measurement (default 10; quick 2)")
    p.add_argument("--min-repeats", type=int, default=None,
                   help="at least this many timed calls (default 3; quick 2)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed calls before timing (default 1)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop repeating after this many seconds once min-repeats are done "
                        "(default 2; quick 0.5)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--note", default="", help="free text stored with the machine description")
    args = p.parse_args(argv)
    quick = args.quick
    args.repeats = args.repeats or (2 if quick else 10)
    args.min_repeats = min(args.min_repeats or (2 if quick else 3), args.repeats)
    args.warmup = args.warmup if args.warmup is not None else 1
    args.budget_s = args.budget_s if args.budget_s is not None else (0.5 if quick else 2.0)
    sweeps = [s.strip() for s in args.sweep.split(",") if s.strip()]
    if sweeps == ["all"]:
        sweeps = list(ALL_SWEEPS)
    bad = [s for s in sweeps if s not in ALL_SWEEPS]
    if bad:
        p.error(f"--sweep: unknown {bad}; choose from {list(ALL_SWEEPS)} or 'all'")
    args.sweeps = sweeps
    args.peer_list = ([] if args.peers.strip() in ("", "none")
                      else [s.strip() for s in args.peers.split(",")])
    from bench.peers import PEERS
    bad = [s for s in args.peer_list if s not in PEERS]
    if bad:
        p.error(f"--peers: unknown {bad}; choose from {list(PEERS)} or 'none'")
    args.unroll_list = tuple(_int_list(args.unrolls))
    return args


def pick_device(name: str | None):
    import jax
    if name is None:
        return jax.devices()[0]
    platform = {"cuda": "gpu", "rocm": "gpu"}.get(name.lower(), name.lower())
    try:
        return jax.devices(platform)[0]
    except RuntimeError as exc:
        raise SystemExit(f"--device {name}: no such JAX backend here ({exc})") from None


def plan(args):
    """``[(workload, [sweep names], is_tutorial)]`` in run order, each workload once."""
    import dataclasses

    from bench import workloads as wl

    base = dataclasses.replace(wl.QUICK_BASE if args.quick else wl.TUTORIAL, **args.base)
    values = dict(wl.QUICK_SWEEP_VALUES if args.quick else wl.SWEEP_VALUES)
    for key, given in (("T", args.T_values), ("L", args.L_values), ("H", args.H_values),
                       ("B", args.B_values)):
        if given:
            values[key] = given
    if args.cells:
        values["cell"] = [c.strip() for c in args.cells.split(",") if c.strip()]
    order: dict = {}
    for sweep in args.sweeps:
        points = [base] if sweep == "tutorial" else wl.sweep_workloads(base, sweep, values[sweep])
        for w in points:
            order.setdefault(w, []).append(sweep)
    return [(w, sweeps, w == base) for w, sweeps in order.items()], base


def _summary_line(e: Entry) -> str:
    def ms(part):
        if not e.get(part):
            return "-"
        d = e[part]
        return f"{1e3 * d['median_s']:.2f} ms (compile {d.get('compile_s', float('nan')):.2f} s)"
    head = f"  {e['variant']:<14} {e['status']:<7}"
    if e["status"] != "ok":
        return head + " " + e["note"]
    return (head + f" fwd {ms('forward')}  train {ms('train')}"
            + (f"  {e['note']}" if e["note"] else ""))


def _header(args, argv, device, variants, base, malloc_kept: bool) -> dict:
    """``results.json`` without entries: schema, machine and the run's settings."""
    from bench import strategies as st
    from bench.machine import machine_info

    return {
        "schema": SCHEMA,
        "machine": machine_info(device, args.note),
        "config": {"argv": sys.argv[1:] if argv is None else list(argv), "quick": args.quick,
                   "sweeps": args.sweeps, "repeats": args.repeats,
                   "min_repeats": args.min_repeats, "warmup": args.warmup,
                   "budget_s": args.budget_s, "loop_max_T": args.loop_max_T,
                   "parallel_max_T": args.parallel_max_T, "forward_only": args.forward_only,
                   "malloc_keep_freed_memory": malloc_kept,
                   "registry": st.registry_names(), "variants": [v.name for v in variants],
                   "peers": args.peer_list, "tutorial": base.as_dict(),
                   "flops": "analytic matmul FLOPs: per layer 2*B*T*(in*G*H + H*G*H), + Dense; "
                            "train step = 3x forward; elementwise work not counted",
                   "memory": "CPU: compiled.memory_analysis() (argument/output/temp/peak bytes "
                             "of the executable); GPU: also device.memory_stats() "
                             "peak_bytes_in_use (process-wide high-water mark)"},
        "entries": [],
    }


def _measure_ours(variants, w, device, args, scan_logits: dict) -> list[Entry]:
    """Every variant on workload ``w``; a variant that fails becomes an error entry."""
    from bench import strategies as st

    entries = []
    for variant in variants:
        try:
            entry = st.run_variant(variant, w, device, args, scan_logits)
        except Exception as exc:  # noqa: BLE001 - one broken strategy must not stop the suite
            entry = failed(ours_entry(variant, w), exc)
        entries.append(entry)
        print(_summary_line(entry), flush=True)
    return entries


def _measure_peers(w, device, args, scan_logits: dict) -> list[Entry]:
    """Every peer on workload ``w``, checked against our logits (scan's, or computed now)."""
    import jax
    import numpy as np

    from bench.peers import run_peer
    from bench.workloads import init_model, make_batch, make_functions

    ours = scan_logits.get(w.label())
    if ours is None:
        forward = make_functions(w)[0]
        ours = np.asarray(jax.jit(forward)(init_model(w), make_batch(w)[0]))
    entries = []
    for name in args.peer_list:
        entries.append(run_peer(name, w, device, args, ours))
        print(_summary_line(entries[-1]), flush=True)
    return entries


def _write_reports(result: dict, out_dir: Path, *, plots: bool) -> None:
    """``tables.md`` and (unless ``plots`` is False) the PNG plots beside ``results.json``."""
    from bench import report

    (out_dir / "tables.md").write_text(report.markdown(result))
    if plots:
        from bench import plots as plotting
        result["plots"] = plotting.make_plots(result, out_dir)
        (out_dir / "results.json").write_text(json.dumps(result, indent=1))


def main(argv=None) -> dict:
    args = parse_args(argv)
    from stackrnn_jax.allocator import keep_freed_memory
    malloc_kept = args.malloc == "keep" and keep_freed_memory()
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import jax

    from bench import strategies as st
    from bench.machine import machine_line

    device = pick_device(args.device)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    variants = st.select_variants(st.all_variants(args.unroll_list), args.strategies)
    sweep_variants = st.select_variants(st.all_variants(args.unroll_list),
                                        args.sweep_strategies or args.strategies)
    points, base = plan(args)
    result = _header(args, argv, device, variants, base, malloc_kept)
    print(machine_line(result["machine"]), flush=True)
    out_json = out_dir / "results.json"
    t_start = time.perf_counter()
    with jax.default_device(device), st.bench_strategies_registered():
        for w, sweeps, is_tutorial in points:
            print(f"[{time.perf_counter() - t_start:6.0f}s] {w.label()}  "
                  f"(sweeps: {', '.join(sweeps)})", flush=True)
            scan_logits: dict = {}
            entries = _measure_ours(variants if is_tutorial else sweep_variants, w, device,
                                    args, scan_logits)
            if args.peer_list and (is_tutorial or args.peers_in_sweeps):
                entries += _measure_peers(w, device, args, scan_logits)
            for entry in entries:
                entry["sweeps"] = sweeps
            result["entries"] += entries
            # Written after every workload, so an interrupted suite keeps what it measured.
            result["elapsed_s"] = time.perf_counter() - t_start
            out_json.write_text(json.dumps(result, indent=1))
    result["elapsed_s"] = time.perf_counter() - t_start
    out_json.write_text(json.dumps(result, indent=1))
    _write_reports(result, out_dir, plots=not args.no_plots)
    print(f"wrote {out_json} ({len(result['entries'])} entries, {result['elapsed_s']:.0f} s)",
          flush=True)
    return result


if __name__ == "__main__":
    main()
