"""The benchmark suite runs end to end on tiny sizes and writes well-formed results.

Timings are never asserted, only that they exist and are positive. The default tests
run two strategy variants (``scan`` and the benchmark-only ``fori``) and the Flax and
PyTorch peers on one tiny workload, and the ``loop`` cap; the ``slow`` test runs every
variant the registry holds on every sweep, all peers included (``pytest -m slow``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

# bench/ is a folder of the repository, not an installed package.
from bench import strategies as st
from bench.run import SCHEMA, main

MACHINE_KEYS = {"date_utc": str, "cpu_model": str, "cpu_count": int, "jax_platform": str,
                "versions": dict, "python": str}
ENTRY_KEYS = {"kind", "impl", "variant", "strategy", "unroll", "workload", "status", "note",
              "check", "forward", "train", "sweeps"}
PART_KEYS = {"compile_s", "first_call_s", "median_s", "p25_s", "p75_s", "iqr_s", "min_s",
             "max_s", "repeats", "flops", "achieved_flops_per_s", "matmul_flops_per_s",
             "fraction_of_matmul", "source"}


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def check_schema(result: dict, out: Path):
    assert result["schema"] == SCHEMA
    for key, typ in MACHINE_KEYS.items():
        assert isinstance(result["machine"][key], typ), key
    assert result["machine"]["versions"]["jax"]
    assert isinstance(result["config"]["variants"], list)
    assert result["entries"], "no entries"
    on_disk = json.loads((out / "results.json").read_text())
    assert len(on_disk["entries"]) == len(result["entries"])
    assert (out / "tables.md").read_text().startswith("Machine:")
    for e in result["entries"]:
        assert ENTRY_KEYS <= set(e), e.get("variant")
        assert e["kind"] in ("ours", "peer")
        assert e["status"] in ("ok", "skipped"), (e["variant"], e["note"])
        assert set(e["workload"]) == {"T", "L", "H", "B", "cell", "E", "vocab"}
        if e["status"] != "ok":
            assert e["note"]
            continue
        assert e["check"]["passed"], (e["variant"], e["check"])
        for part in ("forward", "train"):
            d = e[part]
            assert PART_KEYS <= set(d), (e["variant"], part, PART_KEYS - set(d))
            for key in ("median_s", "min_s", "max_s", "flops", "achieved_flops_per_s",
                        "matmul_flops_per_s", "fraction_of_matmul"):
                assert _positive(d[key]), (e["variant"], part, key, d[key])
            assert d["compile_s"] >= 0 and d["first_call_s"] > 0
            assert d["min_s"] <= d["median_s"] <= d["max_s"]
            assert d["iqr_s"] >= 0 and isinstance(d["repeats"], int) and d["repeats"] >= 1
        if e["kind"] == "ours":
            assert _positive(e["forward"]["compile_s"]) and _positive(e["train"]["compile_s"])
            assert e["train"]["source"] == "compiled.memory_analysis()" or \
                e["train"]["source"].startswith("compiled.memory_analysis()")
            assert e["train"]["temp_bytes"] >= 0 and e["train"]["argument_bytes"] > 0


def test_quick_suite_writes_valid_results(tmp_path):
    # The T sweep's one point is the tutorial workload itself: measured once, in both sweeps.
    result = main(["--quick", "--sweep", "tutorial,T", "--T-values", "8",
                   "--strategies", "scan,fori", "--peers", "flax_linen,torch",
                   "--out", str(tmp_path)])
    check_schema(result, tmp_path)
    ours = [e for e in result["entries"] if e["kind"] == "ours"]
    assert [e["variant"] for e in ours] == ["scan", "fori"]
    assert all(e["sweeps"] == ["tutorial", "T"] for e in ours)
    assert all(e["status"] == "ok" for e in ours)
    peers = {e["impl"]: e for e in result["entries"] if e["kind"] == "peer"}
    assert set(peers) == {"flax_linen", "torch"}
    assert all("tutorial" in e["sweeps"] for e in peers.values())
    assert set(result["plots"]) == {"time_vs_T.png", "compile_vs_T.png"}
    for name in result["plots"]:
        assert (tmp_path / name).stat().st_size > 1000


def test_loop_is_capped_by_T(tmp_path):
    result = main(["--quick", "--sweep", "tutorial", "--strategies", "loop",
                   "--loop-max-T", "4", "--peers", "none", "--no-plots", "--out", str(tmp_path)])
    check_schema(result, tmp_path)
    [loop] = result["entries"]
    assert loop["status"] == "skipped" and "loop-max-T" in loop["note"]


def test_variants_follow_the_registry(monkeypatch):
    from stackrnn_jax.strategies import STRATEGIES

    monkeypatch.setitem(STRATEGIES, "added_later", STRATEGIES["scan"])
    names = [v.name for v in st.all_variants()]
    assert names[:5] == ["scan", "scan/u2", "scan/u4", "scan/u8", "scan/u16"]
    assert "added_later" in names and "loop" in names and names[-1] == "fori"
    with st.bench_strategies_registered():
        assert "fori" in STRATEGIES
    assert "fori" not in STRATEGIES


@pytest.mark.slow
def test_every_variant_and_sweep_quick(tmp_path):
    """Every registry variant, every sweep, every peer, on tiny sizes (a few minutes)."""
    result = main(["--quick", "--sweep", "all", "--peers-in-sweeps", "--out", str(tmp_path)])
    check_schema(result, tmp_path)
    ours = {e["variant"] for e in result["entries"] if e["kind"] == "ours"}
    assert ours == {v.name for v in st.all_variants()}
    for sweep in ("T", "L", "H", "B", "cell"):
        assert {f"time_vs_{sweep}.png", f"compile_vs_{sweep}.png"} <= set(result["plots"])
