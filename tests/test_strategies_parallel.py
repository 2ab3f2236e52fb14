"""The parallel-in-time (DEER / quasi-DEER) strategy: exact on hard problems, fallback, diagnostics.

``tests/test_stack.py`` already runs "parallel" and "parallel_quasi" through the parity
matrix on benign weights. Here: recurrent kernels with spectral radius > 1 (Newton slows
down there; damped variants too), the structured stand-ins (LSTM blocks, the SimpleRNN's
gain in its kernel's eigenbasis) and ELK's damped correction, tiny iteration caps (the
sequential finish completes forward and backward passes), the reported iteration counts,
convergence on Keras' orthogonal recurrent kernel, the linear scans, and the options'
checks. Tiny shapes, float64 except one float32 case; each case compiles one
function. The benchmark entry's smoke run is marked slow.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stackrnn_jax import init_params, make_cell, stacked_rnn
from stackrnn_jax.ops.kalman import damped_correction
from stackrnn_jax.ops.linear_scan import linear_recurrence
from stackrnn_jax.reference import reference_rnn
from stackrnn_jax.strategies.parallel import Options, parallel_solve
from tests.helpers import CELLS, max_error

BATCH, TIME, FEATURES = 3, 12, 4
LENGTHS = np.array([12, 5, 0])  # full, partial and empty sequences
# Undamped quasi runs in test_stack.py's matrix ("parallel_quasi", benign weights only).
OPTIONS = [{"method": "deer"}, {"method": "deer", "damping": 0.9},
           {"method": "quasi", "damping": 0.9}]


def _problem(cell, units, radius, seed=0, dtype=jnp.float64):
    """Weights with every recurrent kernel scaled to spectral radius ``radius``
    (per gate block), non-zero biases, inputs and an initial state."""
    key_p, key_x, key_s = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = init_params(key_p, FEATURES, units, cell=cell, dtype=dtype)
    for layer in params:
        w = np.asarray(layer["recurrent_kernel"])
        n = w.shape[0]
        blocks = [w[:, g * n:(g + 1) * n] for g in range(w.shape[1] // n)]
        scaled = [radius * b / np.max(np.abs(np.linalg.eigvals(b))) for b in blocks]
        layer["recurrent_kernel"] = jnp.asarray(np.concatenate(scaled, axis=1), dtype)
        layer["bias"] = layer["bias"] + 0.1 * jnp.sin(jnp.arange(layer["bias"].size)
                                                      ).reshape(layer["bias"].shape)
    x = jax.random.normal(key_x, (BATCH, TIME, FEATURES), dtype)
    carry = make_cell(cell).carry_size
    state = [tuple(0.3 * jax.random.normal(k, (BATCH, n), dtype)
                   for k in jax.random.split(jax.random.fold_in(key_s, i), carry))
             for i, n in enumerate(units)]
    state = [s if carry == 2 else s[0] for s in state]
    return params, x, state


def _outputs_and_grads(cell, padding, options_list):
    """One jit: per options set, (sequences, states) and the gradient of a loss; plus scan's."""
    def run(params, x, state, lengths):
        out = []
        for options in options_list:
            strategy = "scan" if options is None else "parallel"
            kw = dict(cell=cell, lengths=lengths, padding=padding, initial_state=state,
                      strategy=strategy, strategy_options=options)

            def loss(params, x, state, kw=kw):
                y, states = stacked_rnn(params, x, return_sequences=True, return_state=True,
                                        **kw)
                return (jnp.sum(jnp.sin(y)) + sum(jnp.sum(s ** 2) for s in jax.tree.leaves(states)),
                        (y, states))

            grads, outputs = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(params, x, state)
            out.append((outputs, grads))
        return out
    return jax.jit(run)


@pytest.mark.parametrize("cell, padding", [("simple", "post"), ("lstm", "pre"), ("gru", "post")])
def test_expanding_weights_are_exact_and_gradients_match_scan(cell, padding):
    """Spectral radius 2.5: Newton meets expanding dynamics; every variant stays exact."""
    with jax.enable_x64(True):
        params, x, state = _problem(cell, [5], radius=2.5)
        results = _outputs_and_grads(cell, padding, [None] + OPTIONS)(params, x, state, LENGTHS)
        ref = reference_rnn(params, x, cell=cell, lengths=LENGTHS, padding=padding,
                            initial_state=state, return_sequences=True, return_state=True)
        (_, scan_grads) = results[0]
        for options, (outputs, grads) in zip(OPTIONS, results[1:]):
            assert max_error(outputs, ref) < 1e-10, options
            assert max_error(grads, scan_grads) < 1e-10, options


@pytest.mark.parametrize("cell, padding, options", [
    ("simple", "post", {"method": "gain", "damping": 0.9}),
    ("lstm", "pre", {"method": "block", "init": "chunks", "chunk": 5}),
    pytest.param("gru", "post", {"method": "quasi", "elk": 0.5}, marks=pytest.mark.slow),
])
def test_structured_variants_are_exact_and_gradients_match_scan(cell, padding, options):
    """Radius 2.5, padded: the SimpleRNN's gain stand-in (in the kernel's eigenbasis,
    transposed for the adjoint), LSTM blocks from the chunked first guess, ELK's damped
    correction; forward against the reference, gradients against scan's."""
    with jax.enable_x64(True):
        params, x, state = _problem(cell, [5], radius=2.5)
        (_, scan_grads), (outputs, grads) = _outputs_and_grads(cell, padding, [None, options])(
            params, x, state, LENGTHS)
        ref = reference_rnn(params, x, cell=cell, lengths=LENGTHS, padding=padding,
                            initial_state=state, return_sequences=True, return_state=True)
        assert max_error(outputs, ref) < 1e-10
        assert max_error(grads, scan_grads) < 1e-10


@pytest.mark.parametrize("cell", CELLS)
def test_iteration_cap_falls_back_to_the_exact_recurrence(cell):
    """Caps of 1 (deer) and 0 (quasi) updates: the sequential finish completes both passes."""
    with jax.enable_x64(True):
        params, x, state = _problem(cell, [5], radius=1.2, seed=1)
        padding = "pre"
        capped = [{"method": "deer", "max_iters": 1}, {"method": "quasi", "max_iters": 0}]
        results = _outputs_and_grads(cell, padding, [None] + capped)(params, x, state, LENGTHS)
        ref = reference_rnn(params, x, cell=cell, lengths=LENGTHS, padding=padding,
                            initial_state=state, return_sequences=True, return_state=True)
        for options, (outputs, grads) in zip(capped, results[1:]):
            assert max_error(outputs, ref) < 1e-10, options
            assert max_error(grads, results[0][1]) < 1e-10, options


def test_iterations_are_reported_and_below_the_cap_on_a_benign_problem():
    with jax.enable_x64(True):
        cell = make_cell("gru")
        params, x, _ = _problem("gru", [6], radius=0.9, seed=2)
        params = params[0]
        xs = jnp.swapaxes(x, 0, 1)
        mask = jnp.asarray(np.arange(TIME)[:, None] < LENGTHS[None, :])

        def solve(xs):
            return [parallel_solve(cell, params, xs, mask, method=m, max_iters=k)
                    for m, k in (("deer", 32), ("quasi", 32), ("deer", 1))]
        (deer, deer_k, deer_ok), (quasi, quasi_k, quasi_ok), (_, capped_k, capped_ok) = (
            jax.jit(solve)(xs))
        ref = reference_rnn([params], x, cell="gru", lengths=LENGTHS, return_sequences=True)
        for states, k, ok in ((deer, deer_k, deer_ok), (quasi, quasi_k, quasi_ok)):
            assert bool(ok) and 1 <= int(k) < 32
            assert max_error(jnp.where(mask[..., None], states, 0.0).swapaxes(0, 1), ref) < 1e-10
        assert int(deer_k) <= int(quasi_k)   # the full Jacobian never needs more updates here
        assert int(capped_k) == 1 and not bool(capped_ok)


def _blocks_as_full(blocks):
    """``(..., n, p, p)`` blocks -> the ``(..., p*n, p*n)`` matrix on part-major states."""
    n, p = blocks.shape[-3], blocks.shape[-1]
    full = np.zeros(blocks.shape[:-3] + (p * n, p * n))
    for k in range(n):
        for i in range(p):
            for j in range(p):
                full[..., i * n + k, j * n + k] = blocks[..., k, i, j]
    return full


def test_linear_recurrence_full_blocks_and_diagonal_match_a_loop():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        a = rng.standard_normal((9, 2, 4, 4))
        blocks = rng.standard_normal((9, 2, 2, 2, 2))      # n = 2 units, p = 2 parts
        b, x0 = rng.standard_normal((9, 2, 4)), rng.standard_normal((2, 4))
        ours = jax.jit(lambda a, blocks, b, x0: [linear_recurrence(a_t, b, x0)
                                                 for a_t in (a, a[..., 0], blocks)])(
            a, blocks, b, x0)
        full = lambda m, v: np.einsum("bij,bj->bi", m, v)  # noqa: E731
        for a_t, apply, x in ((a, full, ours[0]), (a[..., 0], lambda d, v: d * v, ours[1]),
                              (_blocks_as_full(blocks), full, ours[2])):
            state, expected = x0, []
            for t in range(9):
                state = apply(a_t[t], state) + b[t]
                expected.append(state)
            assert max_error(x, np.stack(expected)) < 1e-12


@pytest.mark.parametrize("options, message", [
    ({"method": "newton"}, r"method: expected one of \['auto', 'deer', 'quasi', 'block', "
                           r"'gain', 'structured'\]"),
    ({"init": "random"}, r"init: expected one of \['input', 'zeros', 'chunks'\]"),
    ({"elk": 0.0}, r"elk: expected a positive float"),
    ({"method": "deer", "elk": 1.0}, r"elk: the damped correction needs diagonal Jacobians"),
    ({"chunk": 0}, r"chunk: expected an int >= 1"),
    ({"tol": 0.0}, r"tol: expected a positive float"),
    ({"max_iters": -1}, r"max_iters: expected an int >= 0"),
    ({"damping": -1.0}, r"damping: expected a positive float"),
])
def test_bad_options_raise_one_clear_value_error(options, message):
    with pytest.raises(ValueError, match=message):
        Options(**options)


def test_defaults_per_layer():
    assert Options().for_layer(8, jnp.float32) == Options("deer", 1e-6, 32, None, "input")
    assert Options().for_layer(128, jnp.float64) == Options("quasi", 1e-13, 128, None, "input")
    assert Options(method="quasi", damping=2.0).for_layer(4, jnp.bfloat16) == Options(
        "quasi", 1e-2, 128, 2.0, "input")
    assert [Options(method="structured").for_layer(8, jnp.float32, c).method
            for c in ("simple", "lstm", "gru")] == ["gain", "block", "quasi"]


def test_gain_on_a_gated_cell_is_one_clear_error():
    params = init_params(jax.random.PRNGKey(0), FEATURES, [4], cell="gru")
    with pytest.raises(ValueError, match="method 'gain' is for the SimpleRNN cell"):
        stacked_rnn(params, jnp.ones((1, 3, FEATURES)), cell="gru", strategy="parallel",
                    strategy_options={"method": "gain"})


def test_elk_correction_is_the_damped_least_squares_solution():
    """``argmin sum |δ_t - j_t δ_{t-1} - r_t|² + λ|δ_t|²`` per component, by dense least
    squares; as λ -> 0 it approaches the exact (Newton) solve (gains up to ~1.5^30 here
    amplify λ's effect, hence the loose bound)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        steps = 30
        j, r = 1.5 * rng.standard_normal((steps, 2, 3)), rng.standard_normal((steps, 2, 3))
        lams = (1e-9, 0.3, 5.0)
        ours = jax.jit(lambda j, r: [damped_correction(j, r, lam) for lam in lams])(j, r)
        for lam, delta in zip(lams, ours):
            for b in range(2):
                for d in range(3):
                    system = np.vstack([np.eye(steps) - np.diag(j[1:, b, d], -1),
                                        np.sqrt(lam) * np.eye(steps)])
                    target = np.concatenate([r[:, b, d], np.zeros(steps)])
                    expected = np.linalg.lstsq(system, target, rcond=None)[0]
                    assert max_error(delta[:, b, d], expected) < 1e-8 * max(
                        1.0, np.max(np.abs(expected)))
        assert max_error(ours[0], linear_recurrence(j, r)) < 1e-3 * np.max(np.abs(ours[0]))


def _orthogonal_problem(cell_name, units, steps, seed=0):
    """Keras' initialisation (orthogonal recurrent kernel) with small non-zero biases and
    inputs of the bench model's scale; float32 ``(params, xs (T, 2, 8))``."""
    params = init_params(jax.random.PRNGKey(seed), 8, [units], cell=cell_name)[0]
    params["bias"] = 0.1 * jax.random.normal(jax.random.PRNGKey(seed + 1), params["bias"].shape)
    xs = 0.3 * jax.random.normal(jax.random.PRNGKey(seed + 2), (steps, 2, 8))
    return params, xs


def test_orthogonal_simple_rnn_converges_with_the_gain_stand_in():
    """Quasi's diagonal says nothing about a rotation: on Keras' orthogonal kernel it is
    still short of the tolerance after 48 updates (T 192); the gain stand-in converges, and
    the answer is the reference's to float32 accuracy."""
    cell = make_cell("simple")
    params, xs = _orthogonal_problem("simple", 32, 192)

    def solve(xs):
        return [parallel_solve(cell, params, xs, method=m, max_iters=48)
                for m in ("quasi", "gain")]
    (_, _, quasi_ok), (gain, gain_k, gain_ok) = jax.jit(solve)(xs)
    ref = reference_rnn([params], np.asarray(xs).swapaxes(0, 1), cell="simple",
                        return_sequences=True)
    assert not bool(quasi_ok)
    assert bool(gain_ok) and int(gain_k) < 48
    assert max_error(np.asarray(gain).swapaxes(0, 1), ref) < 1e-5


def test_lstm_blocks_need_fewer_updates_than_the_diagonal():
    """The (h_k, c_k) blocks keep dh_t/dc_{t-1}, which the diagonal drops."""
    cell = make_cell("lstm")
    params, xs = _orthogonal_problem("lstm", 16, 128)

    def solve(xs):
        return [parallel_solve(cell, params, xs, method=m) for m in ("quasi", "block")]
    (_, quasi_k, quasi_ok), (block, block_k, block_ok) = jax.jit(solve)(xs)
    ref = reference_rnn([params], np.asarray(xs).swapaxes(0, 1), cell="lstm",
                        return_sequences=True)
    assert bool(quasi_ok) and bool(block_ok) and int(block_k) < int(quasi_k)
    assert max_error(np.asarray(block[..., :16]).swapaxes(0, 1), ref) < 1e-5


def test_saturated_float32_dynamics_end_exactly_in_the_sequential_finish():
    """Radius 8, float32: a Newton update fixes about one step, damped or not, so a cap of
    12 updates on 48 steps leaves the rest to the sequential finish, which is exact."""
    cell = make_cell("simple")
    params = _problem("simple", [5], radius=8.0, seed=3, dtype=jnp.float32)[0][0]
    xs = jnp.asarray(np.random.default_rng(0).standard_normal((48, BATCH, FEATURES)), jnp.float32)

    def solve(xs):
        scan = stacked_rnn([params], xs.swapaxes(0, 1), return_sequences=True,
                           strategy="scan").swapaxes(0, 1)
        return scan, [parallel_solve(cell, params, xs, method="deer", damping=d, max_iters=12)
                      for d in (None, 1.0)]
    scan, results = jax.jit(solve)(xs)
    for states, iterations, converged in results:
        assert int(iterations) == 12 and not bool(converged)
        assert max_error(states, scan) < 1e-5


@pytest.mark.slow
def test_benchmark_entry_runs_quick(tmp_path):
    """``python -m bench.parallel --quick``: every variant measured, tables written."""
    from bench.parallel import main

    result = main(["--quick", "--out", str(tmp_path)])
    assert [(e["variant"], e["status"]) for e in result["entries"]] == [
        ("scan", "ok"), ("deer", "ok"), ("quasi", "ok"), ("gain", "ok")]
    for entry in result["entries"][1:]:
        assert entry["newton"]["converged"] == [True]
        assert entry["max_abs_diff_vs_scan"] < 1e-5
    assert "| 4 | 16 |" in (tmp_path / "tables.md").read_text()


@pytest.mark.slow
def test_iteration_study_runs_quick(tmp_path):
    """``python -m bench.parallel_iterations --quick``: every variant that applies to each
    cell, both first guesses, converged and within float32 accuracy; tables written."""
    from bench.parallel_iterations import main

    result = main(["--quick", "--out", str(tmp_path)])
    runs = {(e["cell"], e["variant"], e["init"]) for e in result["entries"]}
    assert ("simple", "gain", "chunks") in runs and ("lstm", "block", "input") in runs
    assert ("lstm", "gain", "input") not in runs and ("simple", "block", "input") not in runs
    for entry in result["entries"]:
        assert entry["converged"] and entry["max_abs_error"] < 1e-5, entry
    assert "| 32 |" in (tmp_path / "iterations.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS)
def test_structured_strategy_matches_scan_on_orthogonal_kernels_float32(cell):
    """``"parallel_structured"`` on Keras' initialisation at T 512: forward and gradients
    within float32 tolerance of scan's."""
    params, xs = _orthogonal_problem(cell, 16, 512)
    x = xs.swapaxes(0, 1)

    def loss(params, strategy):
        y = stacked_rnn([params], x, cell=cell, return_sequences=True, strategy=strategy)
        return jnp.sum(jnp.sin(y)), y

    run = jax.jit(lambda p: [jax.grad(loss, has_aux=True)(p, s)
                             for s in ("scan", "parallel_structured")])
    (scan_grads, scan_y), (grads, y) = run(params)
    assert max_error(y, scan_y) < 1e-4
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(scan_grads))
    assert max_error(grads, scan_grads) < 1e-4 * scale
