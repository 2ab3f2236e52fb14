"""The compiled CPU kernels (``simple_rnn.cc``, ``gated.cc``, sharing ``common.h`` and
``row_matmul.h``): built on first use into one library, cached, registered.

The library ships C++ source, not binaries: the first call compiles it with the
machine's C++ compiler (``$CXX``, else ``c++``) against the XLA FFI headers that come
with jaxlib, for this CPU (``-march=native``), into a cache folder
(``$STACKRNN_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/stackrnn_jax`` or
``~/.cache/stackrnn_jax``). The file name holds a hash of the sources, the flags, the
compiler, jaxlib's version and the CPU, so a change to any of them builds anew; the
library is written to a temporary name and renamed into place, so concurrent first
uses and interrupted builds never leave a broken file behind.

``available()`` says whether the kernels can run here and, if not, why (no compiler, a
failed build); callers fall back to the XLA strategies then, and ``warn_unavailable()``
says so once per process (``"auto"`` is the library's default strategy, so a warning per
call would flood every user without a compiler).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

SOURCES = tuple(Path(__file__).with_name(name) for name in ("simple_rnn.cc", "gated.cc"))
HEADERS = tuple(Path(__file__).with_name(name) for name in ("common.h", "row_matmul.h"))
# -fno-trapping-math: the kernels never unmask floating-point exceptions, and without it
# GCC 12 left every gate loop (common.h's exp, tanh, sigmoid) scalar on a CPU without
# AVX-512 (the clamps and the float-to-integer conversion could "trap"): with AVX2 the
# LSTM gates of 16 rows took 31 us a step instead of 5, the whole forward twice as long.
FLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-fno-trapping-math",
         "-std=c++17", "-shared", "-fPIC")
TARGETS = {"stackrnn_simple_forward": "StackrnnSimpleForward",
           "stackrnn_simple_backward": "StackrnnSimpleBackward",
           "stackrnn_gated_train": "StackrnnGatedTrain",
           "stackrnn_gated_infer": "StackrnnGatedInfer",
           "stackrnn_gated_infer_stack": "StackrnnGatedInferStack",
           "stackrnn_gated_backward": "StackrnnGatedBackward"}


class NativeUnavailable(RuntimeError):
    """The kernels cannot be built or loaded here; the message says why, in one line."""


def cache_dir() -> Path:
    if os.environ.get("STACKRNN_NATIVE_CACHE"):
        return Path(os.environ["STACKRNN_NATIVE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "stackrnn_jax"


def cpu_identity() -> str:
    """What -march=native depends on: the CPU model and its feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    wanted = [line for line in lines if line.startswith(("model name", "flags", "Features"))]
    return platform.machine() + "".join(sorted(set(wanted)))


def _build(compiler: str, include: str, key: str) -> Path:
    folder = cache_dir()
    target = folder / f"kernels-{key}.so"
    if target.exists():
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            partial = Path(scratch) / target.name
            done = subprocess.run([compiler, *FLAGS, "-isystem", include,
                                   *map(str, SOURCES), "-o", str(partial)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                first = next((line for line in done.stderr.splitlines() if "error" in line),
                             done.stderr.strip().splitlines()[0] if done.stderr.strip() else "")
                names = " and ".join(source.name for source in SOURCES)
                raise NativeUnavailable(f"building {names} with {compiler} failed: {first}")
            os.replace(partial, target)  # atomic: a reader sees no file or the whole one
    except OSError as error:
        raise NativeUnavailable(f"cannot write the kernel cache {folder}: {error}; set "
                                f"STACKRNN_NATIVE_CACHE to a writable folder") from error
    return target


@functools.cache
def load() -> ctypes.CDLL:
    """Build (once per machine and version) and load the kernels, registering them with
    XLA as FFI targets for the CPU. Raises NativeUnavailable, with the reason."""
    import jax
    import jaxlib

    compiler = shutil.which(os.environ.get("CXX", "c++"))
    if compiler is None:
        raise NativeUnavailable(f"no C++ compiler ({os.environ.get('CXX', 'c++')!r} not on "
                                f"PATH; install g++ or set CXX)")
    if not hasattr(jax, "ffi") or not hasattr(jax.ffi, "include_dir"):
        raise NativeUnavailable(f"jax {jax.__version__} has no jax.ffi.include_dir "
                                f"(the kernels need jax >= 0.5)")
    include = jax.ffi.include_dir()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    texts = [path.read_text() for path in (*SOURCES, *HEADERS)]
    key = hashlib.sha256("\0".join([*texts, " ".join(FLAGS), version,
                                    jaxlib.__version__, cpu_identity()]).encode()).hexdigest()[:16]
    path = _build(compiler, include, key)
    try:
        library = ctypes.cdll.LoadLibrary(str(path))
    except OSError as error:
        raise NativeUnavailable(f"cannot load {path}: {error}") from error
    for name, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, symbol)),
                                    platform="cpu")
    return library


@functools.cache
def available() -> tuple[bool, str]:
    """``(True, "")`` when the kernels are loaded and registered, else ``(False, reason)``."""
    try:
        load()
    except NativeUnavailable as error:
        return False, str(error)
    return True, ""


@functools.cache
def warn_unavailable() -> bool:
    """``available()[0]``; when False, one RuntimeWarning per process saying why and what
    runs instead (the first caller's problem decides; later fallbacks stay quiet)."""
    ok, why = available()
    if not ok:
        warnings.warn(f"the compiled CPU kernels cannot run here, so cpu_native (the "
                      f"SimpleRNN strategy 'auto' prefers on a CPU) runs as scan_vjp: the "
                      f"same numbers, slower. Why: {why}", RuntimeWarning, stacklevel=2)
    return ok
