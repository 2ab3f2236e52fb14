"""Keep freed memory in the process (glibc ``mallopt``) so jitted steps stop page-faulting.

XLA's CPU runtime allocates each call's temporary buffers (tens of MB for a train step:
the activations kept for the backward pass) with ``malloc``. glibc serves blocks above
its mmap threshold with fresh ``mmap`` pages and returns them with ``munmap`` on free,
so every call touches its temporaries as new pages: ~9,000 page faults per tutorial
train step on the development CPU. Raising the mmap and trim thresholds makes glibc
reuse the same heap memory call after call — the tutorial train step fell from
48 to 39 ms ("scan") and from 46 to 30-35 ms ("scan_vjp") in one side-by-side run
(2-core AMD EPYC, jax 0.10.2), with the process's page faults down from ~900k to
~110-230k. The cost: memory freed by the process stays reserved for it (its peak).

This is a process-wide setting, so the library never applies it on import; the
``stackrnn`` command applies it (``STACKRNN_MALLOPT=0`` turns it off), and an
application may call ``keep_freed_memory()`` itself. The environment variables
``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` do the same from outside.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# glibc's malloc.h parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks below this come from the heap, and the heap keeps up to this much freed memory.
THRESHOLD_BYTES = 1 << 30


def keep_freed_memory(threshold: int = THRESHOLD_BYTES) -> bool:
    """Raise glibc's mmap and trim thresholds; returns whether it applied (glibc only)."""
    if os.environ.get("STACKRNN_MALLOPT", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return (bool(mallopt(_M_MMAP_THRESHOLD, threshold))
            and bool(mallopt(_M_TRIM_THRESHOLD, threshold)))
