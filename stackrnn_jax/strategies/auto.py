"""``"auto"``: pick a strategy from the backend and the shape of the problem.

The choice is the rule table ``RULES`` below: the first rule whose ranges all contain
the problem wins, and a problem no rule covers runs "scan". A rule is only added on
measured evidence that its strategy beats "scan" there; each rule says where its
numbers came from. ``explain_auto`` reports the choice and the reason.

The backend is ``jax.default_backend()`` at trace time (the platform a ``jit`` places
the computation on unless told otherwise). A bidirectional layer reaches a strategy as
one layer per direction, so it is chosen for ``layers == 1``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax

from stackrnn_jax import strategies as registry

FALLBACK = "scan"
UNBOUNDED = 2**62


@dataclasses.dataclass(frozen=True)
class Rule:
    """Use ``strategy`` when every ``(low, high)`` range (inclusive) contains the problem."""

    strategy: str
    why: str
    backends: tuple[str, ...] = ("cpu", "gpu", "tpu")
    layers: tuple[int, int] = (1, UNBOUNDED)
    time: tuple[int, int] = (1, UNBOUNDED)
    batch: tuple[int, int] = (1, UNBOUNDED)
    units: tuple[int, int] = (1, UNBOUNDED)   # the widest layer
    equal_widths: bool = False                 # only when all layers have one width

    def matches(self, backend, layers, time, batch, units: Sequence[int]) -> bool:
        in_range = all(low <= value <= high for value, (low, high) in (
            (layers, self.layers), (time, self.time), (batch, self.batch),
            (max(units), self.units)))
        return (backend in self.backends and in_range
                and (not self.equal_widths or len(set(units)) == 1))


# Measured by hand on the development machine, each strategy fwd+bwd (jit of
# value_and_grad, float32), median of 9-15 interleaved runs, batch 32, input 32, T 500
# unless noted. No accelerator was measured yet: GPU and TPU problems fall back to "scan".
_CPU = "CPU: 2-core AMD EPYC VM (shared), jax 0.10.2"

RULES: tuple[Rule, ...] = (
    Rule("scan_vjp", backends=("cpu",), units=(128, UNBOUNDED),
         why=f"wide layers: the weight gradients leave the loop as one large matmul; "
             f"2x256 SimpleRNN scan_vjp 372 ms vs scan 458 ms, 2x128 172 vs 191 ms, "
             f"2x256 LSTM (T 200) 860 vs 936 ms, 2x256 GRU (T 200) 671 vs 732 ms [{_CPU}]"),
    Rule("wavefront", backends=("cpu",), layers=(8, UNBOUNDED), units=(1, 127),
         equal_widths=True,
         why=f"deep narrow stack of one width: T+L-1 steps of batched layer updates; "
             f"8x64 SimpleRNN wavefront 214 ms vs fused 241 ms vs scan 254 ms; a second "
             f"run 269 vs 264 vs 328 ms wall but 216 vs 239 vs 257 ms of CPU time [{_CPU}]"),
    Rule("fused", backends=("cpu",), layers=(2, UNBOUNDED), units=(1, 127),
         why=f"narrow stacked layers: one loop over time for all layers (fewer, fuller "
             f"iterations); 2x64 SimpleRNN fused 55 ms vs scan 72 ms, 4x64 120 vs 126 ms, "
             f"2x64 LSTM 203 vs 219 ms, 4x64 LSTM 425 vs 453 ms [{_CPU}]"),
)


def choose(backend: str, layers: int, time: int, batch: int, units: Sequence[int]):
    """``(strategy name, the Rule that chose it or None for the fallback)``."""
    for rule in RULES:
        if rule.matches(backend, layers, time, batch, units):
            return rule.strategy, rule
    return FALLBACK, None


def explain_auto(*, time: int, batch: int, units: int | Sequence[int],
                 backend: str | None = None) -> str:
    """Which strategy "auto" runs for this problem, and why.

    ``units``: the width of each layer (one int per layer; an int means one layer).
    ``backend``: ``"cpu"``, ``"gpu"`` or ``"tpu"``; default ``jax.default_backend()``.
    """
    units = (units,) if isinstance(units, int) else tuple(units)
    backend = backend or jax.default_backend()
    strategy, rule = choose(backend, len(units), time, batch, units)
    problem = (f"backend {backend}, {len(units)} layer(s) of {list(units)} units, "
               f"time {time}, batch {batch}")
    if rule is None:
        return (f"auto -> {strategy!r} for {problem}: no measured rule covers this problem, "
                f"so the default {FALLBACK!r}")
    return f"auto -> {strategy!r} for {problem}: {rule.why}"


def run_stack(cell, layers, xs, mask, carries, between, *, unroll=1):
    """Run the strategy ``choose`` picks for ``xs (time, batch, features)`` and ``layers``."""
    time, batch = xs.shape[:2]
    units = [layer["recurrent_kernel"].shape[0] for layer in layers]
    strategy, _ = choose(jax.default_backend(), len(layers), time, batch, units)
    return registry.get_strategy(strategy)(cell, layers, xs, mask, carries, between,
                                           unroll=unroll)
