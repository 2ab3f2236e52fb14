"""Keep compiled XLA programs on disk, so that the next process loads them instead.

Every ``stackrnn`` command traces and compiles its programs anew: a train step per bucket
length and the evaluation step (a minute or two of a CPU run with buckets), the forward
pass of ``predict``. jax's persistent compilation cache stores each executable that took
at least ``jax_persistent_cache_min_compile_time_secs`` (1 s by default) to compile, under
a key of the program, its compile options and the jax/jaxlib versions; a later process
that compiles the same program reads it back. The native kernels' custom calls are named
in the program and resolved when it is loaded, so a cached step runs the kernels of the
current library.

XLA compiles CPU programs for the host's instruction set, which jax's key leaves out, so
the folder is one per CPU model and feature flags (``native.cpu_identity``): a home folder
shared by different machines never hands one machine's code to another.

Like ``allocator.py``, a process-wide setting: the library never applies it on import;
the ``stackrnn`` command does (``STACKRNN_COMPILE_CACHE=0`` turns it off, ``=DIR`` keeps
it under ``DIR``), and an application may call ``use_compile_cache()`` before its first
compile.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import jax

from stackrnn_jax import native

ENV = "STACKRNN_COMPILE_CACHE"


def compile_cache_folder() -> Path | None:
    """Where this machine's compiled programs go; None when ``$STACKRNN_COMPILE_CACHE`` is 0."""
    setting = os.environ.get(ENV, "")
    if setting == "0":
        return None
    base = Path(setting) if setting else native.cache_dir()
    machine = hashlib.sha256(native.cpu_identity().encode()).hexdigest()[:12]
    return base / f"xla-{machine}"


def use_compile_cache() -> Path | None:
    """Turn on jax's persistent compilation cache in ``compile_cache_folder()``; returns it.

    Takes effect for compiles after the call (jax opens the cache at its next compile), so
    call it before the first. A folder that cannot be written costs the cache, not the
    run: one warning, and the programs compile as without it.
    """
    folder = compile_cache_folder()
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        writable = os.access(folder, os.W_OK)
    except OSError:
        writable = False
    if not writable:  # else jax would warn at every compile, reading and writing
        warnings.warn(f"compile cache off: cannot write {folder}; set {ENV} to a writable "
                      f"folder, or to 0", stacklevel=2)
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    return folder
