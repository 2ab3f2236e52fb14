"""``"auto"``: pick a strategy from the backend, the cell and the shape of the problem.

The choice is the rule table ``RULES`` below: the first rule whose ranges all contain
the problem wins, and a problem no rule covers runs "scan". A rule is only added on
measured evidence that its strategy beats "scan" there; each rule says where its
numbers came from. ``explain_auto`` reports the choice and the reason;
``bench/README.md`` ("How `auto` chooses") lists the table (``bench.report.auto_table``).

A rule may also set ``unroll``: the unroll it runs with when the caller left
``unroll`` at its default 1 (any other value the caller passes is kept). A rule with
``needs_native`` applies only where the compiled CPU kernels build and load
(``native.available()``); elsewhere the next matching rule decides, and one warning
per process says the kernels are missing and why. A rule may be
limited to some ``cells`` (``cells.Cell.name``: "simple", "lstm", "gru") where only those
were measured.

The backend is ``jax.default_backend()`` at trace time (the platform a ``jit`` places
the computation on unless told otherwise). A bidirectional layer reaches a strategy as
one layer per direction, so it is chosen for ``layers == 1``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax

from stackrnn_jax import native
from stackrnn_jax.strategies.registry import get_strategy, register, takes_sequences

FALLBACK = "scan"
UNBOUNDED = 2**62
DEFAULT_CELL = "simple"     # the cell of ``stacked_rnn``; explain_auto's default


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
    cells: tuple[str, ...] | None = None       # cell names; None: any cell
    unroll: int | None = None                  # used when the caller's unroll is 1; None: keep it
    needs_native: bool = False                 # only where the compiled kernels load here

    def matches(self, backend, layers, time, batch, units: Sequence[int],
                cell: str = DEFAULT_CELL) -> bool:
        in_range = all(low <= value <= high for value, (low, high) in (
            (layers, self.layers), (time, self.time), (batch, self.batch),
            (max(units), self.units)))
        return (backend in self.backends and in_range
                and (not self.equal_widths or len(set(units)) == 1)
                and (self.cells is None or cell in self.cells)
                and (not self.needs_native or native.available()[0]))


# Measured by hand on the development machine, each strategy fwd+bwd (jit of
# value_and_grad, float32), median of 9-15 interleaved runs, batch 32, input 32, T 500
# unless noted.
_CPU = "CPU: 2-core AMD EPYC VM (shared), jax 0.10.2"
# The benchmark suite (python -m bench.run --malloc keep, the stackrnn command's allocator
# setting), one quiet run of scan, fused, wavefront and scan_vjp side by side.
_CPU_KEEP = "CPU: 2-core AMD EPYC VM, jax 0.10.2, bench.run with --malloc keep"

# The GPU pass (scripts/gpu_check.sh; files in bench/results/gpu/): the benchmark suite's
# model Embedding(32) -> L x RNN(H) -> Dense(1), float32, median of timed calls. Only the
# SimpleRNN was swept (T, L) for the sequential strategies, and one layer at batch 16 for
# the parallel ones, so each GPU rule is limited to the cells and ranges measured; below
# the measured batch and width the sequential strategies sit on the loop's per-step floor
# (an empty lax.scan iteration: 8.3 us), so their time cannot drop much further there.
_GPU = "GPU: NVIDIA H100 80GB HBM3, jax 0.11.2"
# python -m bench.run --sweep cell --cells lstm,gru --strategies cpu_native,fused,scan_vjp,scan
# --peers none --repeats 5 --budget-s 1.5 (its results.json says the machine and date).
_CPU_RUN = "CPU: 2-core Intel Xeon VM (shared), jax 0.10.2, bench.run --malloc keep"
# No rule picks "pallas" (each layer's time loop in one Pallas kernel): it has no GPU
# measurement yet; scripts/gpu_check.sh, stage pallas, takes the figures a rule would cite.

RULES: tuple[Rule, ...] = (
    Rule("cpu_native", backends=("cpu",), cells=("simple",), needs_native=True,
         why=f"SimpleRNN: each layer's time loop in one compiled call, the batch rows "
             f"split over the cores (XLA runs a scan step's small matmul on one core); "
             f"train steps, T 500, batch 32 unless noted, side by side with scan_vjp and "
             f"scan: 2x64 14.5 vs 30.4 vs 37.1 ms (default suite, where Keras took 39.8 and "
             f"Flax 39.3), T 100 3.6 vs 5.9, T 2000 92 vs 181; T 50 is noise-level (3.6 vs "
             f"3.2 in that run, 3.8 vs 4.9 in the one before). With the first version of "
             f"the kernel, in one sweep run: 1x64 11.7 vs 18.5, 4x64 60 vs 85, 8x64 115 vs "
             f"170, 2x32 9.6 vs 18.9, 2x128 61 vs 105, 2x256 208 vs 256, batch 1 2.6 vs 3.4, "
             f"batch 8 7.7 vs 11.1, batch 128 137 vs 168, batch 512 606 vs 611 "
             f"[{_CPU_KEEP}]"),
    Rule("cpu_native", backends=("cpu",), cells=("lstm", "gru"), units=(1, 127),
         needs_native=True,
         why=f"LSTM and GRU: each layer's time loop in one compiled call (gated.cc), all "
             f"gates in one row matmul, the rows split over the cores; 2x64, T 500, batch "
             f"32, side by side with fused, scan_vjp and scan (bench/results/"
             f"cpu-native-gated/rules-train-b32, a shared machine at load ~10-17 on 2 "
             f"cores, so noisy): LSTM train step 1073 vs 1388 vs 1551 vs 2054 ms, forward "
             f"237 vs 473 vs 792 vs 675; GRU train 529 vs 1134 vs 1580 vs 632, forward "
             f"148 vs 533 vs 682 vs 738 (that run's backward still wrote dX out; it no longer "
             f"does). Widths of 128 and up were not measured: scan_vjp's rule keeps them "
             f"[{_CPU_RUN}]"),
    Rule("scan_vjp", backends=("cpu",), cells=("simple",),
         why=f"SimpleRNN: the hand-scheduled backward pass carries only the state cotangent "
             f"and forms the weight gradients after the loop as single large matmuls; "
             f"benchmark-suite train steps, T 500, batch 32, side by side: 2x64 35.4 ms vs "
             f"scan 38.5 vs fused 40.4, 1x64 16.2 vs 17.6 vs 17.6, 4x64 82.5 vs 105.8 vs "
             f"82.8, 8x64 178 vs 180 vs 217, 2x32 15.6 vs 19.4 vs 20.8, 2x128 100 vs 126 vs "
             f"112, 2x256 281 vs 339 vs 362 [{_CPU_KEEP}]"),
    Rule("scan_vjp", backends=("cpu",), units=(128, UNBOUNDED),
         why=f"wide layers: the weight gradients leave the loop as one large matmul; "
             f"2x256 LSTM (T 200) 860 vs 936 ms, 2x256 GRU (T 200) 671 vs 732 ms [{_CPU}]"),
    Rule("fused", backends=("cpu",), layers=(2, UNBOUNDED), units=(1, 127),
         why=f"narrow stacked gated layers: one loop over time for all layers (fewer, "
             f"fuller iterations); benchmark-suite train steps, 2x64, T 500, batch 32: GRU "
             f"fused 137 ms vs scan 146 vs scan_vjp 166, LSTM 171 vs 175 vs 180 "
             f"[{_CPU_KEEP}]; by hand, 4x64 LSTM 425 vs 453 ms [{_CPU}]"),
    Rule("parallel_quasi", backends=("gpu",), cells=("gru", "lstm"), layers=(1, 1),
         time=(16384, 65536), batch=(1, 16), units=(64, 64),
         why=f"long sequence, one gated layer: quasi-DEER (diagonal-Jacobian Newton, "
             f"O(log T) depth per iteration) at 1x64, batch 16, T 16384: GRU forward 9.4 "
             f"vs scan 163.2 ms (17.4x), train step 26.5 vs 377.4 ms (14.2x), 10 "
             f"iterations; LSTM forward 22.1 vs 150.7 ms (6.8x), train 53.3 vs 448.7 ms "
             f"(8.4x), 13 iterations (full DEER: GRU 2.8x/3.9x; LSTM skipped, its "
             f"Jacobians ~103 GB). "
             f"Only T 16384 was measured for these cells; T up to 65536 because the "
             f"SimpleRNN curve's gain kept rising to there and the iteration count did not "
             f"grow with T (CPU, T 1k-16k); bench/results/gpu/parallel-target/"
             f"tables-gru-lstm.md [{_GPU}]"),
    Rule("parallel", backends=("gpu",), cells=("simple",), layers=(1, 1),
         time=(1024, 65536), batch=(1, 16), units=(1, 8),
         why=f"long sequence, one narrow SimpleRNN layer: DEER (full Jacobians, 5 Newton "
             f"iterations) at 1x8, batch 16: forward 0.7 vs scan 9.9 ms (14.5x) at T 1024 "
             f"to 13.4 vs 638.2 ms (47.8x) at T 65536, train step 1.7 vs 14.8 ms (8.9x) to "
             f"19.7 vs 966.0 ms (49.0x). Not at H 64: DEER won only 1.17-1.50x there (T 1024, "
             f"16384), below the 2.4x unroll 16 gave scan (T 2000), and its Jacobians take "
             f"6*T*B*H^2 floats (26 GB at T 16384); bench/results/gpu/parallel-curve/"
             f"tables.md, parallel-target/tables.md [{_GPU}]"),
    Rule("wavefront", backends=("gpu",), cells=("simple",), layers=(4, UNBOUNDED),
         equal_widths=True, time=(100, 2000), batch=(1, 32), units=(1, 64),
         why=f"deep stack of one width: T+L-1 loop iterations instead of L*T; train step "
             f"4x64 SimpleRNN 14.29 vs scan 37.56 ms (scan unroll 16: 15.44), 8x64 15.45 "
             f"vs 67.34 ms (unroll 16: 26.60); forward 3.72 and 3.92 vs 11.54 and 23.33 ms; "
             f"T 500, batch 32 (at L 2 its ratio to scan held over T 100-2000: 0.88x, 0.87x, "
             f"0.86x) [{_GPU}]"),
    Rule("scan", backends=("gpu",), cells=("simple",), unroll=16,
         time=(100, 2000), batch=(1, 32), units=(1, 64),
         why=f"the per-step while-loop overhead (8.3 us per empty scan iteration) bounds "
             f"scan on a GPU; unroll 16 runs 1/16 of the iterations: 2x64 SimpleRNN train "
             f"step 7.19 vs 16.26 ms at T 500, 1.85 vs 3.57 at T 100, 27.16 vs 64.88 at "
             f"T 2000; 1x64 3.98 vs 7.88, 4x64 15.44 vs 37.56, 8x64 26.60 vs 67.34 ms; "
             f"forward 2.75 vs 8.44 ms (T 500); batch 32; train compile 1.36 vs 2.30 s at "
             f"T 500, up to 3.27 vs 1.77 s at 8 layers [{_GPU}]"),
)


def choose(backend: str, layers: int, time: int, batch: int, units: Sequence[int],
           cell: str = DEFAULT_CELL):
    """``(strategy name, the Rule that chose it or None for the fallback)``."""
    for rule in RULES:
        if rule.matches(backend, layers, time, batch, units, cell):
            return rule.strategy, rule
    return FALLBACK, None


def rule_unroll(rule: Rule | None, unroll: int) -> int:
    """The unroll a strategy chosen by ``rule`` runs with, given the caller's ``unroll``."""
    if rule is not None and rule.unroll is not None and unroll == 1:
        return rule.unroll
    return unroll


def explain_auto(*, time: int, batch: int, units: int | Sequence[int],
                 backend: str | None = None, cell: str = DEFAULT_CELL,
                 unroll: int = 1) -> str:
    """Which strategy "auto" runs for this problem, and why.

    ``units``: the width of each layer (one int per layer; an int means one layer).
    ``backend``: ``"cpu"``, ``"gpu"`` or ``"tpu"``; default ``jax.default_backend()``.
    ``cell``: ``"simple"``, ``"lstm"`` or ``"gru"``. ``unroll``: the caller's unroll.
    """
    units = (units,) if isinstance(units, int) else tuple(units)
    backend = backend or jax.default_backend()
    strategy, rule = choose(backend, len(units), time, batch, units, cell)
    runs = rule_unroll(rule, unroll)
    problem = (f"backend {backend}, {cell} cell, {len(units)} layer(s) of {list(units)} "
               f"units, time {time}, batch {batch}")
    choice = f"{strategy!r}" + (f" (unroll {runs})" if runs != 1 else "")
    if rule is None:
        return (f"auto -> {choice} for {problem}: no measured rule covers this problem, "
                f"so the default {FALLBACK!r}")
    return f"auto -> {choice} for {problem}: {rule.why}"


def run_stack(cell, layers, xs, mask, carries, between, *, unroll=1, sequences=True):
    """Run the strategy ``choose`` picks for ``xs (time, batch, features)`` and ``layers``;
    ``sequences`` (see ``registry.RunStack``) is passed on to a strategy that takes it."""
    time, batch = xs.shape[:2]
    units = [layer["recurrent_kernel"].shape[0] for layer in layers]
    problem = (jax.default_backend(), len(layers), time, batch, units, cell.name)
    _warn_if_kernels_missing(problem)
    strategy, rule = choose(*problem)
    chosen = get_strategy(strategy)
    extra = {} if sequences or not takes_sequences(chosen) else {"sequences": False}
    return chosen(cell, layers, xs, mask, carries, between, unroll=rule_unroll(rule, unroll),
                  **extra)


def _warn_if_kernels_missing(problem) -> None:
    """When a rule that needs the compiled kernels covers ``problem`` but they cannot run
    here, ``native.warn_unavailable`` says so (once per process: "auto" is the default)."""
    if any(rule.needs_native and dataclasses.replace(rule, needs_native=False).matches(*problem)
           for rule in RULES):
        native.warn_unavailable()


register("auto", run_stack)
