"""stackrnn_jax/xla_heaps.py: XLA's temporaries split into blocks glibc keeps, where it can work."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stackrnn_jax import xla_heaps

SPLIT = f"--{xla_heaps.OPTION}={xla_heaps.HEAP_BYTES}"


def run_python(code: str, **env: str) -> str:
    """stdout of ``python -c code`` with this environment minus XLA_FLAGS, plus ``env``."""
    clean = {k: v for k, v in os.environ.items()
             if k not in ("XLA_FLAGS", "STACKRNN_TEMP_HEAPS", "JAX_PLATFORMS")}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


SHOW = "import os, stackrnn_jax; print(os.environ.get('XLA_FLAGS', ''))"


def test_import_splits_and_xla_accepts_the_option():
    # XLA aborts at start-up on an option it does not know: the computation proves it does.
    code = SHOW + "; import jax.numpy as jnp; print(float(jnp.arange(4.0).sum()))"
    flags, total = run_python(code, JAX_PLATFORMS="cpu").splitlines()
    assert flags == SPLIT
    assert total == "6.0"


def test_off_switch_and_accelerators_leave_xla_flags_alone():
    assert run_python(SHOW, JAX_PLATFORMS="cpu", STACKRNN_TEMP_HEAPS="0") == ""
    assert run_python(SHOW, JAX_PLATFORMS="cuda") == ""
    assert run_python(SHOW, JAX_PLATFORMS="cuda,cpu") == ""


def test_after_jax_started_it_is_left_alone():
    code = "import jax; jax.devices(); " + SHOW
    assert run_python(code, JAX_PLATFORMS="cpu") == ""


def test_other_flags_are_kept_and_a_users_value_stands():
    other = "--xla_cpu_enable_fast_math=false"
    assert run_python(SHOW, JAX_PLATFORMS="cpu", XLA_FLAGS=other) == f"{other} {SPLIT}"
    own = f"--{xla_heaps.OPTION}=1048576"
    assert run_python(SHOW, JAX_PLATFORMS="cpu", XLA_FLAGS=own) == own


@pytest.mark.parametrize("platforms, plugins, expected", [
    ("cpu", [], True), ("", [], True), ("", ["cuda"], False), ("tpu", [], False)])
def test_cpu_only(monkeypatch, platforms, plugins, expected):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    monkeypatch.setattr(xla_heaps.sys, "modules", {k: v for k, v in sys.modules.items()
                                                   if k != "jax"})
    monkeypatch.setattr(xla_heaps.importlib.metadata, "entry_points",
                        lambda group: plugins if group == "jax_plugins" else [])
    assert xla_heaps._cpu_only() is expected
