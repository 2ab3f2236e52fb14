"""The persistent compilation cache (stackrnn_jax/compile_cache.py): a second process loads
what the first compiled, with the same numbers; the ``stackrnn`` command turns it on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from stackrnn_jax import compile_cache
from tests.helpers import make_run

# Compiles a small program with the cache on and reports the cache hits jax counted.
PROBE = """
import json, jax, jax.numpy as jnp
from stackrnn_jax.compile_cache import use_compile_cache
hits = []
jax.monitoring.register_event_listener(
    lambda name, **_: hits.append(name) if name.endswith("cache_hits") else None)
folder = use_compile_cache()
value = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.arange(64.0).reshape(8, 8) / 64)
print(json.dumps({"folder": str(folder), "value": float(value), "hits": len(hits)}))
"""


def _probe(cache_setting):
    # Every compile is worth caching here, however short (the default floor is 1 s).
    env = {**os.environ, compile_cache.ENV: str(cache_setting),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_a_second_process_loads_the_compiled_program(tmp_path):
    first, _ = _probe(tmp_path)
    second, _ = _probe(tmp_path)
    assert first["folder"] == second["folder"]
    assert first["folder"].startswith(str(tmp_path / "xla-"))  # one folder per CPU model
    assert first["hits"] == 0 and second["hits"] > 0
    assert second["value"] == first["value"]


def test_zero_turns_it_off_and_an_unwritable_folder_warns_once(tmp_path):
    off, _ = _probe(0)
    assert off["folder"] == "None" and off["hits"] == 0
    blocker = tmp_path / "file"
    blocker.write_text("")
    unwritable, err = _probe(blocker / "cache")  # a folder below a file
    assert unwritable["folder"] == "None"
    assert err.count("UserWarning: compile cache off: cannot write") == 1
    assert "persistent compilation cache" not in err  # no warning per compile from jax


def test_the_command_keeps_its_compiled_programs(tmp_path):
    workdir = make_run(tmp_path / "run")
    env = {**os.environ, compile_cache.ENV: str(tmp_path / "cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    done = subprocess.run([sys.executable, "-m", "stackrnn_jax", "predict", "--workdir",
                           str(workdir), "a great film"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "cache").glob("xla-*/*-cache")), "no compiled program was kept"
