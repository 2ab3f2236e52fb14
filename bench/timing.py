"""Timing helpers: steady-state statistics, compile timing, memory, matmul baseline."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import numpy as np


def summarize(times: list[float]) -> dict:
    """Median, quartiles, IQR, min, max of a list of seconds."""
    a = np.asarray(times, dtype=np.float64)
    p25, med, p75 = np.percentile(a, [25, 50, 75])
    return {"median_s": float(med), "p25_s": float(p25), "p75_s": float(p75),
            "iqr_s": float(p75 - p25), "min_s": float(a.min()), "max_s": float(a.max()),
            "repeats": int(a.size)}


def time_steady(call: Callable[[], object], sync: Callable[[object], object], *,
                warmup: int, repeats: int, min_repeats: int, budget_s: float) -> dict:
    """Time ``sync(call())`` ``repeats`` times after ``warmup`` untimed calls.

    Stops early once ``budget_s`` seconds have been spent and ``min_repeats`` calls are
    timed, so slow points (long sequences, big layers) stay affordable.
    """
    for _ in range(warmup):
        sync(call())
    times: list[float] = []
    spent = 0.0
    while len(times) < repeats:
        t0 = time.perf_counter()
        sync(call())
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
        if spent > budget_s and len(times) >= min_repeats:
            break
    return summarize(times)


def block(out):
    """Wait for every JAX array in ``out``."""
    import jax
    return jax.block_until_ready(out)


def lower_and_compile(jitted, *args) -> tuple[object, dict]:
    """``jitted.lower(*args).compile()``, timed: returns ``(compiled, info)``."""
    t0 = time.perf_counter()
    lowered = jitted.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    return compiled, {"lower_s": t1 - t0, "xla_compile_s": t2 - t1, "compile_s": t2 - t0,
                      "compile_method": "jit.lower().compile()"}


def memory_info(compiled=None, device=None) -> dict:
    """What the backend reports about memory.

    ``compiled.memory_analysis()`` (all backends): the executable's argument, output and
    temporary buffer sizes — on CPU the only figure there is. On a GPU, also
    ``device.memory_stats()['peak_bytes_in_use']``: the process-wide high-water mark so
    far (JAX offers no reset, so it only grows across entries).
    """
    out: dict = {"source": None}
    if compiled is not None:
        try:
            ma = compiled.memory_analysis()
        except Exception:  # noqa: BLE001 - not every backend implements it
            ma = None
        if ma is not None:
            out["source"] = "compiled.memory_analysis()"
            for key in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                        "alias_size_in_bytes", "generated_code_size_in_bytes",
                        "peak_memory_in_bytes"):
                value = getattr(ma, key, None)
                if value is not None:
                    name = key.replace("_size_in_bytes", "_bytes").replace("_in_bytes", "_bytes")
                    out[name] = int(value)
    if device is not None and device.platform != "cpu":
        try:
            stats = device.memory_stats() or {}
        except Exception:  # noqa: BLE001
            stats = {}
        if "peak_bytes_in_use" in stats:
            out["device_peak_bytes_in_use_process"] = int(stats["peak_bytes_in_use"])
            out["source"] = ((out["source"] + " + " if out["source"] else "")
                             + "device.memory_stats()")
    return out


@functools.cache
def _matmul_seconds(n: int, platform: str, repeats: int) -> float:
    import jax
    import jax.numpy as jnp

    device = jax.devices(platform)[0]
    a = jax.device_put(jnp.ones((n, n), jnp.float32) / n, device)
    b = jax.device_put(jnp.ones((n, n), jnp.float32), device)
    f = jax.jit(lambda x, y: x @ y)
    block(f(a, b))
    block(f(a, b))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        block(f(a, b))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def matmul_baseline(flops: int, device, repeats: int = 3) -> dict:
    """Time one float32 ``(n, n) @ (n, n)`` matmul with ``2 n^3 ~= flops`` on ``device``."""
    n = max(8, round((flops / 2.0) ** (1.0 / 3.0)))
    seconds = _matmul_seconds(n, device.platform, repeats)
    done = 2 * n ** 3
    return {"matmul_n": n, "matmul_flops": done, "matmul_s": seconds,
            "matmul_flops_per_s": done / seconds}


def flops_fields(flops: int, median_s: float, device, repeats: int = 3) -> dict:
    """Analytic FLOPs, achieved FLOP/s and its fraction of the same-size matmul's FLOP/s."""
    base = matmul_baseline(flops, device, repeats)
    achieved = flops / median_s
    return {"flops": int(flops), "achieved_flops_per_s": achieved, **base,
            "fraction_of_matmul": achieved / base["matmul_flops_per_s"]}
