"""Split XLA's per-call temporaries into blocks glibc keeps, so CPU train steps stop page-faulting.

XLA's CPU runtime allocates each call's temporaries (for a train step, what the backward
pass reads: the LSTM's gates and cell states of every step) with ``malloc`` at the call
and frees them after it. Its buffer assignment combines them into one block. glibc serves
a block above its mmap threshold with fresh pages and unmaps it on free; the threshold
rises to the largest such block freed, but not above 32 MiB (glibc's
``DEFAULT_MMAP_THRESHOLD_MAX`` on 64-bit). The LSTM's and the GRU's train steps at
batch 32, T 500 (the peer benchmarks' workload) combine 47-55 MB, above that cap, so
under glibc's default settings every step faulted its temporaries in again, page by page.

XLA's option ``xla_multiheap_size_constraint_per_heap`` caps each combined block ("heap")
at a size; at ``HEAP_BYTES`` (30 MiB) every block is one glibc's own adaptive threshold
learns to keep, so the steps reuse the same memory call after call. Unlike
``allocator.keep_freed_memory`` (the ``stackrnn`` command's setting) no allocator setting
changes and the process keeps no more memory than the blocks themselves; only XLA's
grouping of its temporaries changes, not what any program computes.

``import stackrnn_jax`` applies it (``split_temporaries``) so that a library user's own
``jax.jit`` gets it, where it can take effect and is wanted:
- XLA reads ``XLA_FLAGS`` once, when jax starts its backends: after that (jax already
  ran something before ``stackrnn_jax`` was imported) it is left alone;
- CPU-only processes: with an accelerator plugin installed, or ``JAX_PLATFORMS`` naming
  one, XLA_FLAGS is left alone (the GPU has its own allocator);
- a value of the option already in ``XLA_FLAGS`` stands;
- ``STACKRNN_TEMP_HEAPS=0`` turns it off.
What it buys: ``python -m bench.temp_heaps`` (results in ``bench/results/temp-heaps/``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys

OPTION = "xla_multiheap_size_constraint_per_heap"
# Under glibc's 32 MiB cap on its adaptive mmap threshold, with room for malloc's headers.
HEAP_BYTES = 30 << 20
# jax's accelerator plugins register under this entry-point group; TPUs come as libtpu.
_PLUGIN_GROUP = "jax_plugins"


def split_temporaries(heap_bytes: int = HEAP_BYTES) -> bool:
    """Add ``--xla_multiheap_size_constraint_per_heap`` to ``XLA_FLAGS`` where it takes effect
    (see the module docstring); returns whether it was added."""
    flags = os.environ.get("XLA_FLAGS", "")
    if (os.environ.get("STACKRNN_TEMP_HEAPS", "1") == "0" or OPTION in flags
            or _backends_started() or not _cpu_only()):
        return False
    os.environ["XLA_FLAGS"] = f"{flags} --{OPTION}={heap_bytes}".strip()
    return True


def _backends_started() -> bool:
    """Whether jax has created its backends (and so has read XLA_FLAGS)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # another jax layout: cannot tell, so assume so
        return True


def _cpu_only() -> bool:
    """Whether jax will run on the CPU alone: JAX_PLATFORMS (or jax's config of it) names
    only the CPU, or, unset, no accelerator plugin is installed."""
    jax = sys.modules.get("jax")
    platforms = getattr(getattr(jax, "config", None), "jax_platforms", None) if jax else None
    platforms = platforms or os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return {p.strip() for p in platforms.split(",") if p.strip()} == {"cpu"}
    plugins = importlib.metadata.entry_points(group=_PLUGIN_GROUP)
    return not plugins and importlib.util.find_spec("libtpu") is None
