"""The compiled CPU kernels (stackrnn_jax/native) and the "cpu_native" strategy.

Parity of every strategy with the reference (float64 and float32, masks, both
directions) is in test_stack.py and test_strategies_fast.py, which include cpu_native;
here: the kernel really runs (and where it does not, the fallback), sizes that exercise
the kernels' row blocks, column tiles and thread chunks, float32 against float64,
vmap, and the build's failure modes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stackrnn_jax import init_params, make_cell, native, stacked_rnn
from stackrnn_jax.reference import reference_rnn
from stackrnn_jax.strategies import cpu_native

# Only the tests that run the kernels need them built; the fallback and build-failure
# tests below are exactly what a machine without a compiler exercises, so they always run.
needs_kernels = pytest.mark.skipif(not native.available()[0],
                                   reason=f"native kernels unavailable: {native.available()[1]}")
needs_compiler = pytest.mark.skipif(shutil.which("c++") is None, reason="no c++ on PATH")


def _problem(units, batch, time, dtype, features=3, seed=0):
    params = init_params(jax.random.key(seed), features, units, cell="simple", dtype=dtype)
    x = jax.random.normal(jax.random.key(seed + 1), (batch, time, features), dtype)
    return params, x


def _max_error(a, b):
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _hlo(fn, *args) -> str:
    return jax.jit(fn).lower(*args).as_text()


@needs_kernels
def test_the_kernel_runs_for_the_simple_cell():
    """Training runs simple_rnn.cc's kernels (inference: test_native_gated.py)."""
    params, x = _problem([4, 3], 2, 5, jnp.float32)
    grad_text = _hlo(jax.grad(lambda p, x: stacked_rnn(p, x, strategy="cpu_native").sum()),
                     params, x)
    assert grad_text.count("stackrnn_simple_forward") == 2  # one call per layer
    assert grad_text.count("stackrnn_simple_backward") == 2


@needs_kernels
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("padding", ["pre", "post"])
def test_row_blocks_column_tiles_and_chunks_float64(activation, padding):
    """batch 9 -> two chunks of 4 and 5 rows (a 4-row block plus a single row); 40 units
    -> two 16-wide float64 column tiles and 8 tail columns; masks on some rows."""
    with jax.enable_x64(True):
        params, x = _problem([40, 21], 9, 33, jnp.float64)
        lengths = np.array([33, 1, 0, 17, 32, 33, 5, 9, 30])
        kw = dict(lengths=lengths, padding=padding, activation=activation,
                  return_sequences=True, return_state=True)
        ours = jax.jit(lambda p, x: stacked_rnn(p, x, strategy="cpu_native", **kw))(params, x)
        assert _max_error(ours, reference_rnn(params, x, **kw)) < 1e-10

        def loss(strategy):
            return jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.sin(
                stacked_rnn(p, x, strategy=strategy, **{**kw, "return_state": False}))),
                argnums=(0, 1)))
        assert _max_error(loss("cpu_native")(params, x), loss("scan")(params, x)) < 1e-10


@needs_kernels
def test_float32_long_sequence_matches_float64_reference():
    """Tutorial-like sizes: 32 rows over the thread pool, 64 units (two float32 tiles),
    T 300; the float32 tanh approximation stays within float32 rounding."""
    params, x = _problem([64, 64], 32, 300, jnp.float32, features=8)
    ours = jax.jit(lambda p, x: stacked_rnn(p, x, strategy="cpu_native",
                                            return_sequences=True))(params, x)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
        want = reference_rnn(p64, np.asarray(x, np.float64), return_sequences=True)
    assert _max_error(ours, want) < 1e-5


@needs_kernels
def test_tanh_approximation_over_its_whole_range():
    """Values straddling every branch-free piece: tiny, moderate, the clamp, huge."""
    grid = np.concatenate([np.linspace(-30, 30, 20001), [0.0, 1e-30, -1e-8, 8.99, 9.01, 1e4]])
    params = [{"kernel": jnp.eye(1, dtype=jnp.float32),
               "recurrent_kernel": jnp.zeros((1, 1), jnp.float32),
               "bias": jnp.zeros((1,), jnp.float32)}]
    x = jnp.asarray(grid, jnp.float32).reshape(-1, 1, 1)  # each value one sequence
    ours = stacked_rnn(params, x, strategy="cpu_native")[:, 0]
    assert float(jnp.max(jnp.abs(ours - np.tanh(grid.astype(np.float32))))) < 3e-7
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        ours64 = stacked_rnn(p64, jnp.asarray(grid).reshape(-1, 1, 1), strategy="cpu_native")
        assert float(jnp.max(jnp.abs(ours64[:, 0] - np.tanh(grid)))) < 1e-15


@needs_kernels
def test_vmap_and_jit_of_the_gradient():
    params, x = _problem([5], 4, 6, jnp.float32)
    xs = jnp.stack([x, 2 * x, -x])
    grad = jax.grad(lambda p, x: jnp.sum(stacked_rnn(p, x, strategy="cpu_native") ** 2))
    batched = jax.jit(jax.vmap(grad, in_axes=(None, 0)))(params, xs)
    for i in range(3):
        one = grad(params, xs[i])
        assert _max_error(jax.tree.map(lambda a, i=i: a[i], batched), one) < 1e-6


def test_falls_back_to_scan_vjp_with_a_warning_when_unavailable(monkeypatch):
    params, x = _problem([4], 2, 5, jnp.float32)
    monkeypatch.setattr(native, "available", lambda: (False, "no C++ compiler (test)"))
    native.warn_unavailable.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="runs as scan_vjp.*Why: no C.. compiler"):
            text = _hlo(lambda p, x: stacked_rnn(p, x, strategy="cpu_native"), params, x)
    finally:
        native.warn_unavailable.cache_clear()
    assert "stackrnn_" not in text


def test_other_backends_run_scan_vjp(monkeypatch):
    params, x = _problem([4], 2, 5, jnp.float32)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert not cpu_native.covers(make_cell("simple"), jnp.float32)
    text = _hlo(lambda p, x: stacked_rnn(p, x, strategy="cpu_native"), params, x)
    assert "stackrnn_" not in text


def test_no_compiler_is_one_line(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    native.load.cache_clear()
    try:
        with pytest.raises(native.NativeUnavailable, match=r"^no C\+\+ compiler .*install g\+\+"):
            native.load()
    finally:
        native.load.cache_clear()
        monkeypatch.undo()
        native.available()  # loads and registers them again for the tests that follow


@needs_compiler
def test_failed_build_reports_the_compiler_error_and_leaves_no_file(tmp_path, monkeypatch):
    broken = tmp_path / "broken.cc"
    broken.write_text("int main( { return 0; }\n")
    monkeypatch.setattr(native, "SOURCES", (broken,))
    monkeypatch.setenv("STACKRNN_NATIVE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(native.NativeUnavailable,
                       match=r"building broken.cc with .* failed: .*error"):
        native._build("c++", jax.ffi.include_dir(), "k")
    assert not list((tmp_path / "cache").glob("*.so"))
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]  # scratch removed


def test_unwritable_cache_is_one_line(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("STACKRNN_NATIVE_CACHE", str(blocker / "cache"))  # below a file
    with pytest.raises(native.NativeUnavailable,
                       match=r"cannot write the kernel cache .*STACKRNN_NATIVE_CACHE"):
        native._build("c++", jax.ffi.include_dir(), "k")


def test_a_cached_build_is_reused_without_compiling(tmp_path, monkeypatch):
    """The second build of the same key finds the library and runs no compiler. A stand-in
    compiler writes the output file: a real build costs ~25 s here, and every kernel test
    already runs a real one."""
    monkeypatch.setenv("STACKRNN_NATIVE_CACHE", str(tmp_path))
    calls = []

    def fake_compiler(command, **kwargs):
        calls.append(command)
        Path(command[command.index("-o") + 1]).write_bytes(b"library")
        return subprocess.CompletedProcess(command, 0, "", "")
    monkeypatch.setattr(subprocess, "run", fake_compiler)
    first = native._build("c++", jax.ffi.include_dir(), "same")
    assert first.parent == tmp_path and first.read_bytes() == b"library"
    assert native._build("c++", jax.ffi.include_dir(), "same") == first
    assert len(calls) == 1
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # scratch folder removed


@needs_kernels
def test_gradient_through_the_final_state_only_matches_scan():
    """The top layer is read only through its final state (its outputs' cotangent is a
    symbolic zero, so the kernel reads no dy); the lower layer only through its outputs."""
    with jax.enable_x64(True):
        params, x = _problem([7, 5], 6, 11, jnp.float64)
        lengths = np.array([11, 4, 0, 7, 11, 2])

        def grad(strategy):
            return jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.cos(stacked_rnn(
                p, x, strategy=strategy, lengths=lengths, padding="pre"))), argnums=(0, 1)))
        assert _max_error(grad("cpu_native")(params, x), grad("scan")(params, x)) < 1e-10


@needs_kernels
def test_concurrent_calls_from_several_devices_finish():
    """Four CPU devices run the kernels at once and share XLA's thread pool: every call
    must finish even when the pool is busy (the caller runs unclaimed chunks itself)."""
    code = (
        "import jax, jax.numpy as jnp, numpy as np\n"
        "from jax.sharding import NamedSharding, PartitionSpec as P\n"
        "from stackrnn_jax import init_params, stacked_rnn\n"
        "mesh = jax.make_mesh((4,), ('d',))\n"
        "p = init_params(jax.random.key(0), 3, [16, 16])\n"
        "x = jax.device_put(jnp.ones((32, 50, 3)), NamedSharding(mesh, P('d')))\n"
        "f = jax.jit(jax.grad(lambda p, x: stacked_rnn(p, x, strategy='cpu_native').sum()))\n"
        "for _ in range(20): jax.block_until_ready(f(p, x))\n"
        "print('done', jax.device_count())\n")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    done = subprocess.run([sys.executable, "-c", code], env=env, timeout=300,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["done", "4"]
