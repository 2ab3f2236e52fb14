"""What ran the benchmark: CPU model, cores, accelerator, library versions, date."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import os
import platform


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(dist: str) -> str | None:
    try:
        return _md.version(dist)
    except _md.PackageNotFoundError:
        return None


def machine_info(device=None, note: str = "") -> dict:
    """A JSON-able description of this machine and of the JAX device used."""
    import jax

    device = device if device is not None else jax.devices()[0]
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    info = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax_platform": device.platform,
        "jax_device": str(device),
        "device_kind": getattr(device, "device_kind", None),
        "gpu_name": None,
        "versions": {name: _version(name) for name in
                     ("jax", "jaxlib", "flax", "optax", "numpy", "keras", "torch")},
        "note": note,
    }
    if device.platform in ("gpu", "cuda", "rocm"):
        info["gpu_name"] = getattr(device, "device_kind", None)
    return info


def machine_line(info: dict) -> str:
    """One line for reports: CPU model, cores, GPU, JAX version, date."""
    v = info.get("versions", {})
    gpu = info.get("gpu_name") or "no GPU used"
    line = (f"{info['cpu_model']}, {info['cpu_count']} cores ({info['cpu_usable']} usable); "
            f"JAX device {info['jax_platform']} ({gpu}); "
            f"jax {v.get('jax')}, jaxlib {v.get('jaxlib')}, "
            f"flax {v.get('flax')}, keras {v.get('keras')}, torch {v.get('torch')}; "
            f"Python {info['python']}; {info['date_utc']}")
    if info.get("note"):
        line += f"; {info['note']}"
    return line
