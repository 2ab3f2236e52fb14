"""Where a recurrent step's time goes: the loop's own overhead against the step's work.

``python -m bench.loop_overhead [--device gpu] [--T 500] [--out DIR]``

A stacked RNN runs ``T`` dependent steps per layer, so on an accelerator each step's
fixed cost (launching its kernels, the while loop's condition and bookkeeping) can
dominate the tiny ``(B, H) @ (H, H)`` matmul it contains. On the tutorial workload
(``B x T`` ids, ``L x SimpleRNN(H)``) this times, per loop iteration:

* ``empty_scan``: ``lax.scan`` of ``h -> h + x_t`` over ``T`` steps — the while loop and
  one elementwise kernel, the floor of any scan iteration;
* ``step_scan``: ``lax.scan`` of ``h -> tanh(x_t + h @ W_h)`` — one layer's real step;
* ``step_scan_grad``: forward and backward of ``step_scan`` (``2 T`` iterations);
* ``step_scan_half_batch``: ``step_scan`` on ``B / 2`` rows — if the step were overhead,
  it would cost the same; if it is arithmetic, half;
* ``step_scan_two_halves``: the ``B`` rows as two independent half-batch recurrences in one
  loop — near ``step_scan_half_batch`` only if XLA runs them on two cores at once;
* ``rows_matmul``: all ``T`` steps' recurrent products as one ``(T B, H) @ (H, H)``
  matmul outside any loop — the rate of a large matmul (every core);
* our forward and train step per strategy (``--strategies``; default ``scan``, ``fused``,
  ``wavefront``, ``scan_vjp``, ``cpu_native``; also ``pallas``), divided by their
  sequential loop iterations (``scan``: ``L T`` forward, ``2 L T`` forward + backward;
  ``fused``: ``T`` / ``2 T``; ``wavefront``: ``T + L - 1``; ``cpu_native`` and ``pallas``:
  the ``L T`` layer-steps their kernels run, no XLA loop);
* PyTorch ``nn.RNN(num_layers=L)`` (cuDNN on a GPU) forward and train step per ``L T``
  layer-steps, when torch is installed.

``floor_ms`` is the loop iterations times ``empty_scan``'s µs per iteration: what the
loop alone costs, whatever the step computes. When it exceeds the cuDNN time, no
XLA-loop schedule with that many iterations can match cuDNN.

``train_floor``: a lower bound on a SimpleRNN train step built from those rates. The
``2 L T`` recurrent products of the forward and backward loops (``h W_h`` and ``dA
W_h^T``) are sequential, so they run at most at ``step_scan``'s FLOP rate (matmul and
tanh of one step); every other matmul (input projections, ``dW_x``, ``dW_h``, ``dX``)
at best at ``rows_matmul``'s. Elementwise work, the embedding and Adam count as free.

Writes ``DIR/loop_overhead.json`` and ``DIR/loop_overhead.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

STRATEGIES = ("scan", "fused", "wavefront", "scan_vjp", "cpu_native")
# Strategies whose time loop runs inside their own kernels: no XLA loop, floor 0.
KERNEL_LOOPS = ("cpu_native", "pallas")


def _iterations(strategy: str, T: int, L: int) -> tuple[int, int]:
    """Sequential steps of ``(forward, forward + backward)``: XLA loop iterations, or for
    ``KERNEL_LOOPS`` the ``L T`` layer-steps their kernels run."""
    per_pass = {"scan": L * T, "scan_vjp": L * T, "cpu_native": L * T, "pallas": L * T,
                "fused": T, "wavefront": T + L - 1}[strategy]
    return per_pass, 2 * per_pass


def _time(fn, *args, opts) -> float:
    from bench.timing import block, time_steady

    block(fn(*args))
    return time_steady(lambda: fn(*args), block, warmup=1, repeats=opts.repeats,
                       min_repeats=3, budget_s=opts.budget_s)["median_s"]


def _primitive_loops(w, device, opts) -> dict:
    import jax
    import jax.numpy as jnp

    key = jax.random.key(0)
    xs = jax.device_put(jax.random.normal(key, (w.T, w.B, w.H), jnp.float32), device)
    h0 = jax.device_put(jnp.zeros((w.B, w.H), jnp.float32), device)
    w_h = jax.device_put(jax.random.orthogonal(key, w.H).astype(jnp.float32), device)

    @jax.jit
    def empty_scan(h, xs):
        return jax.lax.scan(lambda h, x: (h + x, None), h, xs)[0]

    def step(h, xs, w_h):
        return jax.lax.scan(lambda h, x: (jnp.tanh(x + h @ w_h),) * 2, h, xs)[1]

    def two_halves(h, xs, w_h):
        def body(halves, x):
            a, b = halves
            a, b = jnp.tanh(x[:half] + a @ w_h), jnp.tanh(x[half:] + b @ w_h)
            return (a, b), None
        return jax.lax.scan(body, (h[:half], h[half:]), xs)[0]

    half = w.B // 2
    step_scan = jax.jit(step)
    step_grad = jax.jit(jax.grad(lambda w_h, h, xs: jnp.sum(step(h, xs, w_h) ** 2)))
    rows = xs.reshape(-1, w.H)
    step_flops = 2 * w.B * w.H * w.H  # one step's (B, H) @ (H, H)
    loops = {
        "empty_scan": {"iterations": w.T, "median_s": _time(empty_scan, h0, xs, opts=opts)},
        "step_scan": {"iterations": w.T, "median_s": _time(step_scan, h0, xs, w_h, opts=opts),
                      "matmul_flops": w.T * step_flops},
        "step_scan_grad": {"iterations": 2 * w.T,
                           "median_s": _time(step_grad, w_h, h0, xs, opts=opts)},
        "step_scan_half_batch": {
            "iterations": w.T, "matmul_flops": w.T * step_flops // 2,
            "median_s": _time(step_scan, h0[:half], xs[:, :half], w_h, opts=opts)},
        "step_scan_two_halves": {
            "iterations": w.T, "matmul_flops": w.T * step_flops,
            "median_s": _time(jax.jit(two_halves), h0, xs, w_h, opts=opts)},
        "rows_matmul": {"iterations": 1, "matmul_flops": w.T * step_flops,
                        "median_s": _time(jax.jit(jnp.matmul), rows, w_h, opts=opts)},
    }
    for part in loops.values():
        if "matmul_flops" in part:
            part["gflops_per_s"] = part["matmul_flops"] / part["median_s"] / 1e9
    return loops


def train_floor(w, loops: dict) -> dict:
    """The lower bound on a SimpleRNN train step described in the module docstring."""
    sequential_flops = 2 * w.L * w.T * 2 * w.B * w.H * w.H
    parallel_flops = w.train_flops() - sequential_flops
    in_loop, large = loops["step_scan"]["gflops_per_s"], loops["rows_matmul"]["gflops_per_s"]
    sequential_s = sequential_flops / (1e9 * in_loop)
    parallel_s = parallel_flops / (1e9 * large)
    return {"sequential_flops": sequential_flops, "parallel_flops": parallel_flops,
            "in_loop_gflops_per_s": in_loop, "large_matmul_gflops_per_s": large,
            "sequential_ms": 1e3 * sequential_s, "parallel_ms": 1e3 * parallel_s,
            "floor_ms": 1e3 * (sequential_s + parallel_s)}


def _ours(w, device, opts, strategies=STRATEGIES) -> dict:
    import jax
    import optax  # noqa: F401 - make_functions needs it

    from bench.workloads import init_model, make_batch, make_functions

    params = jax.device_put(init_model(w), device)
    ids, labels = (jax.device_put(a, device) for a in make_batch(w))
    out = {}
    for strategy in strategies:
        forward, train_step, optimizer = make_functions(w, strategy=strategy)
        opt_state = jax.device_put(optimizer.init(params), device)
        fwd_iters, train_iters = _iterations(strategy, w.T, w.L)
        out[strategy] = {
            "forward": {"iterations": fwd_iters,
                        "median_s": _time(jax.jit(forward), params, ids, opts=opts)},
            "train": {"iterations": train_iters,
                      "median_s": _time(jax.jit(train_step), params, opt_state, ids, labels,
                                        opts=opts)},
        }
    return out


def _torch(w, device, opts) -> dict | None:
    from bench import peers
    from bench.timing import time_steady
    from bench.workloads import init_model, make_batch

    if "torch" not in opts.peers or not peers.available("torch")[0]:
        return None
    peer = peers.TorchPeer(w, init_model(w), device, opts)
    ids, labels = make_batch(w)
    out = {"device": peer.dev}
    for which, call in (("forward", lambda: peer.forward(ids)),
                        ("train", lambda: peer.train_step(ids, labels))):
        peer.sync(call())
        stats = time_steady(call, peer.sync, warmup=1, repeats=opts.repeats, min_repeats=3,
                            budget_s=opts.budget_s)
        out[which] = {"layer_steps": w.L * w.T, "median_s": stats["median_s"]}
    return out


def _peer_train_steps(w, device, opts) -> dict:
    """Median train step (s) of the JAX peers, Keras 3 and Flax linen, where installed."""
    from bench import peers
    from bench.timing import time_steady
    from bench.workloads import init_model, make_batch

    out = {}
    ids, labels = make_batch(w)
    for name, make in (("keras", peers.KerasPeer), ("flax_linen", peers.FlaxPeer)):
        if name not in opts.peers or not peers.available(name)[0]:
            continue
        peer = make(w, init_model(w), device, opts)
        stats = time_steady(lambda peer=peer: peer.train_step(ids, labels), peer.sync, warmup=2,
                            repeats=opts.repeats, min_repeats=3, budget_s=opts.budget_s)
        out[name] = stats["median_s"]
    return out


def measure(w, device, opts, strategies=STRATEGIES) -> dict:
    """All figures for workload ``w`` on ``device`` (see the module docstring)."""
    loops = _primitive_loops(w, device, opts)
    per_iter = loops["empty_scan"]["median_s"] / loops["empty_scan"]["iterations"]
    ours = _ours(w, device, opts, strategies)
    for strategy, parts in ours.items():
        for part in parts.values():
            part["us_per_iteration"] = 1e6 * part["median_s"] / part["iterations"]
            looped = strategy not in KERNEL_LOOPS
            part["floor_ms"] = 1e3 * per_iter * part["iterations"] * looped
    for part in loops.values():
        part["us_per_iteration"] = 1e6 * part["median_s"] / part["iterations"]
    floor = train_floor(w, loops) if w.cell == "simple" else None
    return {"workload": w.as_dict(), "loops": loops, "ours": ours,
            "torch": _torch(w, device, opts), "peers_train": _peer_train_steps(w, device, opts),
            "train_floor": floor}


def markdown(result: dict) -> str:
    """The tables of ``loop_overhead.json``: loops, our strategies, torch, peers, the floor."""
    from bench.machine import machine_line

    w = result["workload"]
    loops, ours, torch = result["loops"], result["ours"], result["torch"]
    lines = [f"Machine: {machine_line(result['machine'])}", "",
             f"Workload: {w['cell']} T={w['T']} L={w['L']} H={w['H']} B={w['B']} E={w['E']}.",
             "", "| loop | iterations | ms | µs / iteration | matmul GFLOP/s |",
             "|---|---|---|---|---|"]
    for name, part in loops.items():
        rate = f"{part['gflops_per_s']:.1f}" if "gflops_per_s" in part else ""
        lines.append(f"| {name} | {part['iterations']} | {1e3 * part['median_s']:.3f} | "
                     f"{part['us_per_iteration']:.2f} | {rate} |")
    lines += ["", "| strategy | part | loop iterations | ms | µs / iteration | "
                  "loop floor ms (iterations x empty_scan) |", "|---|---|---|---|---|---|"]
    for strategy, parts in ours.items():
        for which, part in parts.items():
            lines.append(f"| {strategy} | {which} | {part['iterations']} | "
                         f"{1e3 * part['median_s']:.3f} | {part['us_per_iteration']:.2f} | "
                         f"{part['floor_ms']:.3f} |")
    if torch:
        for which in ("forward", "train"):
            part = torch[which]
            lines.append(f"| torch ({torch['device']}) | {which} | "
                         f"{part['layer_steps']} layer-steps | "
                         f"{1e3 * part['median_s']:.3f} | "
                         f"{1e6 * part['median_s'] / part['layer_steps']:.2f} | |")
    floor, peers_train = result.get("train_floor"), result.get("peers_train") or {}
    if peers_train:
        lines += ["", "| peer | train ms |", "|---|---|"]
        lines += [f"| {name} | {1e3 * s:.3f} |" for name, s in peers_train.items()]
    if floor:
        best = min(parts["train"]["median_s"] for parts in ours.values())
        lines += ["", f"Train-step floor: {floor['sequential_flops'] / 1e6:.0f} MFLOP of "
                      f"recurrent products at the in-loop {floor['in_loop_gflops_per_s']:.1f} "
                      f"GFLOP/s = {floor['sequential_ms']:.2f} ms, plus "
                      f"{floor['parallel_flops'] / 1e6:.0f} MFLOP of large matmuls at "
                      f"{floor['large_matmul_gflops_per_s']:.1f} GFLOP/s = "
                      f"{floor['parallel_ms']:.2f} ms: **{floor['floor_ms']:.2f} ms**; "
                      f"our best train step {1e3 * best:.3f} ms."]
        if peers_train:
            name, fastest = min(peers_train.items(), key=lambda item: item[1])
            lines.append(f"Half the fastest peer's train step ({name}): "
                         f"{0.5e3 * fastest:.3f} ms.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    from bench.machine import machine_info
    from bench.workloads import TUTORIAL

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", help="cpu or gpu (default: jax.devices()[0])")
    parser.add_argument("--T", type=int, default=TUTORIAL.T)
    parser.add_argument("--L", type=int, default=TUTORIAL.L)
    parser.add_argument("--B", type=int, default=TUTORIAL.B)
    parser.add_argument("--H", type=int, default=TUTORIAL.H)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--budget-s", type=float, default=2.0)
    parser.add_argument("--torch-threads", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/loop_overhead"))
    parser.add_argument("--note", default="")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help=f"comma list of our strategies to time, from "
                             f"{', '.join(STRATEGIES + ('pallas',))} "
                             f"(default: {','.join(STRATEGIES)})")
    parser.add_argument("--peers", default="torch,keras,flax_linen",
                        help="comma list of the peers timed where installed, from torch, keras, "
                             "flax_linen, or 'none' (default: all three)")
    parser.add_argument("--malloc", choices=("keep", "default"), default="keep",
                        help="'keep' (default): glibc keeps freed memory, as in bench.run and "
                             "the stackrnn command (stackrnn_jax/allocator.py)")
    opts = parser.parse_args(argv)
    strategies = tuple(s.strip() for s in opts.strategies.split(",") if s.strip())
    known = STRATEGIES + ("pallas",)
    if not strategies or set(strategies) - set(known):
        parser.error(f"--strategies: expected names from {', '.join(known)}, "
                     f"got {opts.strategies!r}")
    opts.peers = () if opts.peers == "none" else tuple(p.strip() for p in opts.peers.split(","))
    if set(opts.peers) - {"torch", "keras", "flax_linen"}:
        parser.error(f"--peers: expected names from torch, keras, flax_linen or 'none', "
                     f"got {','.join(opts.peers)!r}")
    from stackrnn_jax.allocator import keep_freed_memory
    malloc_kept = opts.malloc == "keep" and keep_freed_memory()
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import jax

    device = jax.devices(opts.device)[0] if opts.device else jax.devices()[0]
    w = dataclasses.replace(TUTORIAL, T=opts.T, L=opts.L, B=opts.B, H=opts.H)
    result = {"schema": "stackrnn-bench-loop-overhead/1",
              "machine": machine_info(device, opts.note),
              "malloc_keep_freed_memory": malloc_kept,
              "xla_flags": os.environ.get("XLA_FLAGS", ""),
              **measure(w, device, opts, strategies)}
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "loop_overhead.json").write_text(json.dumps(result, indent=1, default=float))
    table = markdown(result)
    (opts.out / "loop_overhead.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
