"""One row of ``results.json``: the record every implementation's measurement fills in.

``bench/strategies.py`` fills it for our variants, ``bench/peers.py`` for the peers;
``bench/report.py`` and ``bench/plots.py`` read it back.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict


class Entry(TypedDict, total=False):
    """A measurement of one implementation on one workload (schema ``stackrnn-bench/1``)."""

    kind: Literal["ours", "peer"]
    impl: str                      # "stackrnn_jax" or the peer's name
    variant: str                   # "scan/u16", "cpu_native", "torch", ...
    strategy: str | None           # our registry name; None for a peer
    unroll: int | None
    bench_only: bool               # a strategy only the benchmark registers ("fori")
    workload: dict[str, Any]       # ``Workload.as_dict()``
    status: Literal["ok", "skipped", "error"]
    note: str
    check: dict[str, Any] | None   # parity against the reference / scan / our logits
    forward: dict[str, Any] | None   # compile, timing, memory and FLOP/s fields
    train: dict[str, Any] | None
    version: str | None            # a peer's library version
    sweeps: list[str]              # the sweeps this workload belongs to


def new_entry(kind: Literal["ours", "peer"], impl: str, variant: str, workload,
              *, strategy: str | None = None, unroll: int | None = None,
              bench_only: bool = False) -> Entry:
    """An ``ok`` entry with no measurement yet."""
    entry = Entry(kind=kind, impl=impl, variant=variant, strategy=strategy, unroll=unroll,
                  bench_only=bench_only, workload=workload.as_dict(), status="ok", note="",
                  check=None, forward=None, train=None)
    if kind == "peer":
        entry["version"] = None
    return entry


def ours_entry(variant, workload) -> Entry:
    """The entry of our ``strategies.Variant`` on ``workload``."""
    return new_entry("ours", "stackrnn_jax", variant.name, workload, strategy=variant.strategy,
                     unroll=variant.unroll, bench_only=variant.bench_only)


def failed(entry: Entry, exc: BaseException) -> Entry:
    """``entry`` marked as an error, naming the exception."""
    entry.update(status="error", note=f"{type(exc).__name__}: {exc}")
    return entry
