"""Our side of the benchmark: the strategy variants, their check and their timing.

Variants are read from ``stackrnn_jax.strategies.STRATEGIES`` when the suite runs, so
a strategy added to the registry is benchmarked without touching this file. Besides
the registry, one benchmark-only strategy lives here: ``fori``, the same layer-by-layer
recurrence written with ``jax.lax.fori_loop`` (reading ``xw[t]`` with a dynamic slice and
writing ``h_t`` into a preallocated output with a dynamic update). With static bounds
JAX lowers a ``fori_loop`` to a ``scan`` so that it is reverse-differentiable; the
program still differs (the outputs ride in the carry).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import numpy as np

from bench.entries import Entry, ours_entry

BENCH_ONLY = ("fori",)
SCAN_UNROLLS = (1, 2, 4, 8, 16)


def _fori_run_layer(cell, params, xw, mask, carry, *, unroll=1):
    import jax
    import jax.numpy as jnp

    from stackrnn_jax.strategies.common import masked_step

    steps = xw.shape[0]
    ys = jnp.zeros((steps,) + carry[0].shape, carry[0].dtype)

    def body(t, state):
        carry, ys = state
        xw_t = jax.lax.dynamic_index_in_dim(xw, t, keepdims=False)
        m_t = None if mask is None else jax.lax.dynamic_index_in_dim(mask, t, keepdims=False)
        carry, h = masked_step(cell, params, carry, xw_t, m_t)
        return carry, jax.lax.dynamic_update_index_in_dim(ys, h.astype(ys.dtype), t, 0)

    carry, ys = jax.lax.fori_loop(0, steps, body, (carry, ys), unroll=unroll)
    return ys, carry


def fori_run_stack(cell, layers, xs, mask, carries, between, *, unroll=1):
    """Benchmark-only strategy ``fori`` (same contract as the registry's ``run_stack``)."""
    from stackrnn_jax.strategies.common import layer_by_layer
    return layer_by_layer(_fori_run_layer)(cell, layers, xs, mask, carries, between,
                                           unroll=unroll)


@contextlib.contextmanager
def bench_strategies_registered():
    """Make the benchmark-only strategies callable through ``stacked_rnn(strategy=...)``.

    They are added to the registry for the duration of the block and removed after, so
    nothing outside the benchmark ever sees them.
    """
    from stackrnn_jax.strategies import STRATEGIES, register, unregister

    added = [name for name in ("fori",) if name not in STRATEGIES]
    for name in added:
        register(name, fori_run_stack)
    try:
        yield
    finally:
        for name in added:
            unregister(name)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One strategy setting: registry name + unroll."""

    strategy: str
    unroll: int = 1
    bench_only: bool = False

    @property
    def name(self) -> str:
        return self.strategy if self.unroll == 1 else f"{self.strategy}/u{self.unroll}"


def registry_names() -> list[str]:
    """The registry's strategies at run time (before the benchmark adds its own)."""
    from stackrnn_jax.strategies import STRATEGIES
    return [name for name in STRATEGIES if name not in BENCH_ONLY]


def all_variants(unrolls=SCAN_UNROLLS) -> list[Variant]:
    """``scan`` at each unroll, every other registry strategy at unroll 1, then ``fori``."""
    names = registry_names()
    variants: list[Variant] = []
    if "scan" in names:
        variants += [Variant("scan", u) for u in unrolls]
    variants += [Variant(n) for n in names if n != "scan"]
    variants += [Variant(n, bench_only=True) for n in BENCH_ONLY if n not in names]
    return variants


def select_variants(variants: list[Variant], wanted: str | None) -> list[Variant]:
    """Keep the variants named in the comma list ``wanted`` (names like ``scan/u4`` or
    ``loop``); ``none``: no variant (a run of peers only, each in a process of its own)."""
    if not wanted:
        return variants
    if wanted.strip() == "none":
        return []
    names = [s.strip() for s in wanted.split(",") if s.strip()]
    known = {v.name: v for v in variants}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"--strategies: unknown {unknown}; known: {list(known)}")
    return [known[n] for n in names]


# ----------------------------------------------------------------------------- checking

_CHECK_CACHE: dict = {}


def check_variant(variant: Variant, w, device) -> dict:
    """Forward output and gradients of ``variant`` against ``scan`` on a small batch.

    Uses the workload's cell, layers and width with a short sequence (T <= 12, B = 3), so
    even the unrolled ``loop`` compiles in moments. Cached per (variant, cell, L, H, E).
    """
    import jax

    from bench.workloads import init_model, make_batch, make_functions

    key = (variant.name, w.cell, w.L, w.H, w.E, device.platform)
    if key in _CHECK_CACHE:
        return _CHECK_CACHE[key]
    small = dataclasses.replace(w, T=min(w.T, 12), B=3, vocab=min(w.vocab, 200))
    params = jax.device_put(init_model(small, seed=1), device)
    ids, labels = make_batch(small, seed=1)

    def loss_and_grads(v: Variant):
        forward, _, _ = make_functions(small, strategy=v.strategy, unroll=v.unroll)

        def loss(p):
            return (forward(p, ids) * (2.0 * labels - 1.0)).sum()

        out = jax.jit(lambda p: (forward(p, ids), jax.grad(loss)(p)))(params)
        return jax.tree.map(np.asarray, out)

    ref_key = ("scan outputs",) + key[1:]
    if ref_key not in _CHECK_CACHE:
        _CHECK_CACHE[ref_key] = loss_and_grads(Variant("scan"))
    (y_ref, g_ref) = _CHECK_CACHE[ref_key]
    (y, g) = (y_ref, g_ref) if variant.name == "scan" else loss_and_grads(variant)
    fwd_diff = float(np.max(np.abs(y - y_ref)))
    grad_diff = max(float(np.max(np.abs(a - b))) for a, b in
                    zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)))
    grad_scale = max(float(np.max(np.abs(b))) for b in jax.tree.leaves(g_ref))
    tol = 1e-4 if device.platform == "cpu" else 1e-2  # GPU matmuls may run in TF32
    result = {"reference": "scan", "small_T": small.T, "small_B": small.B,
              "forward_max_abs_diff": fwd_diff, "grad_max_abs_diff": grad_diff,
              "grad_max_abs": grad_scale, "tolerance": tol,
              "passed": bool(fwd_diff <= tol and grad_diff <= tol * max(1.0, grad_scale))}
    _CHECK_CACHE[key] = result
    return result


# ----------------------------------------------------------------------------- timing

def run_variant(variant: Variant, w, device, opts, scan_logits: dict) -> Entry:
    """Check, compile and time one variant on one workload: one JSON entry.

    ``scan_logits`` maps a workload label to the scan forward output at the workload's
    full size; each later variant's output is compared with it.
    """
    import jax

    from bench.timing import (
        block,
        flops_fields,
        lower_and_compile,
        memory_info,
        time_steady,
    )
    from bench.workloads import init_model, make_batch, make_functions

    entry = ours_entry(variant, w)
    if variant.strategy == "loop" and w.T > opts.loop_max_T:
        entry.update(status="skipped",
                     note=f"loop compiles in time ~linear in T; skipped above T={opts.loop_max_T} "
                          "(--loop-max-T)")
        return entry
    if variant.strategy.startswith("parallel") and w.T > getattr(opts, "parallel_max_T", w.T):
        entry.update(status="skipped",
                     note=f"parallel-in-time strategies skipped above T={opts.parallel_max_T} "
                          "(--parallel-max-T); their T curve is `python -m bench.parallel`")
        return entry

    entry["check"] = check_variant(variant, w, device)
    forward, train_step, optimizer = make_functions(w, strategy=variant.strategy,
                                                    unroll=variant.unroll)
    params = jax.device_put(init_model(w), device)
    ids_np, labels_np = make_batch(w)
    ids, labels = jax.device_put(ids_np, device), jax.device_put(labels_np, device)
    opt_state = jax.device_put(optimizer.init(params), device)
    timing = {"warmup": opts.warmup, "repeats": opts.repeats, "min_repeats": opts.min_repeats,
                  "budget_s": opts.budget_s}

    # Forward pass.
    compiled, comp = lower_and_compile(jax.jit(forward), params, ids)
    t0 = time.perf_counter()
    logits = block(compiled(params, ids))
    comp["first_call_s"] = time.perf_counter() - t0
    stats = time_steady(lambda: compiled(params, ids), block, **timing)
    entry["forward"] = {**comp, **stats, **memory_info(compiled, device),
                        **flops_fields(w.forward_flops(), stats["median_s"], device)}
    logits = np.asarray(logits)
    if variant.name == "scan":
        scan_logits[w.label()] = logits
    if w.label() in scan_logits:
        diff = float(np.max(np.abs(logits - scan_logits[w.label()])))
        entry["check"] = {**entry["check"], "full_size_forward_max_abs_diff_vs_scan": diff}
    if getattr(opts, "forward_only", False):
        return _noted(entry)

    # Train step: forward + backward + Adam; the state is threaded through the repeats.
    compiled, comp = lower_and_compile(jax.jit(train_step), params, opt_state, ids, labels)
    state = {"p": params, "o": opt_state}

    def step():
        state["p"], state["o"], loss = compiled(state["p"], state["o"], ids, labels)
        return loss

    t0 = time.perf_counter()
    block(step())
    comp["first_call_s"] = time.perf_counter() - t0
    stats = time_steady(step, block, **timing)
    entry["train"] = {**comp, **stats, **memory_info(compiled, device),
                      **flops_fields(w.train_flops(), stats["median_s"], device)}
    return _noted(entry)


def _noted(entry: dict) -> dict:
    if not entry["check"]["passed"]:
        entry["note"] = "CHECK FAILED: output differs from scan beyond tolerance"
    return entry
