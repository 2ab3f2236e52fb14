"""The glibc allocator setting the `stackrnn` command applies (stackrnn_jax/allocator.py)."""

import os
import platform
import subprocess
import sys

import pytest

CHILD = "from stackrnn_jax.allocator import keep_freed_memory; print(keep_freed_memory())"


def run(env_value):
    env = {**os.environ}
    env.pop("STACKRNN_MALLOPT", None)
    if env_value is not None:
        env["STACKRNN_MALLOPT"] = env_value
    return subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          env=env, check=True).stdout.strip()


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
def test_applies_on_glibc_and_can_be_turned_off():
    assert run(None) == "True"
    assert run("0") == "False"
