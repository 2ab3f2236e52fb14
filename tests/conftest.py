"""Session-wide test settings."""

from __future__ import annotations

import os

import pytest

# The tests call the `stackrnn` command in this process and in subprocesses: its persistent
# compilation cache (stackrnn_jax/compile_cache.py) would be process-wide and write under
# the user's home. Off here; tests/test_compile_cache.py turns it on where it is checked.
os.environ["STACKRNN_COMPILE_CACHE"] = "0"


@pytest.fixture(autouse=True, scope="session")
def _full_float32_matmuls_on_accelerators():
    """On a GPU/TPU, run float32 matmuls at full precision for the whole test session.

    JAX's default float32 matmul precision on Ampere/Hopper GPUs is TF32 (a 10-bit
    mantissa): the float32 parity tests then measure TF32 rounding, not our code (max
    error 3.4e-4 on an H100 for the GRU, the same for every strategy including scan,
    against a 1e-5 tolerance; all of them pass at "highest"). Unless the environment
    already chose a precision. On the CPU nothing changes (its matmuls are float32).
    A session fixture, not a configure hook, so that the backend is first initialised
    after the test modules are imported, as without it.
    """
    if not os.environ.get("JAX_DEFAULT_MATMUL_PRECISION"):
        import jax

        if jax.default_backend() != "cpu":
            jax.config.update("jax_default_matmul_precision", "highest")
    yield


@pytest.fixture
def private_caches(tmp_path, monkeypatch):
    """tfds and the encoded-data cache live under a temporary HOME, never the user's."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("STACKRNN_DATA_DIR", raising=False)
    monkeypatch.delenv("STACKRNN_IMDB_PATH", raising=False)
