"""bench/loop_overhead.py: the train-step floor's arithmetic, and one tiny end-to-end run.

Timings are never asserted, only that they exist, are positive and are combined as the
module docstring says.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from bench import loop_overhead
from bench.workloads import TUTORIAL


def test_train_floor_splits_sequential_from_large_matmul_flops():
    w = TUTORIAL  # T 500, L 2, H 64, B 32, E 32
    loops = {"step_scan": {"gflops_per_s": 40.0}, "rows_matmul": {"gflops_per_s": 100.0}}
    floor = loop_overhead.train_floor(w, loops)
    # h W_h forward and dA W_h^T backward: 2 passes x L x T steps x 2 B H^2 each.
    assert floor["sequential_flops"] == 2 * 2 * 500 * 2 * 32 * 64 * 64 == 524_288_000
    assert floor["sequential_flops"] + floor["parallel_flops"] == w.train_flops()
    assert floor["sequential_ms"] == pytest.approx(524_288_000 / 40e9 * 1e3)
    assert floor["parallel_ms"] == pytest.approx(floor["parallel_flops"] / 100e9 * 1e3)
    assert floor["floor_ms"] == pytest.approx(floor["sequential_ms"] + floor["parallel_ms"])


def test_tiny_run_writes_the_tables_and_the_floor(tmp_path, monkeypatch):
    tiny = dataclasses.replace(TUTORIAL, T=6, L=2, H=8, B=4, E=8, vocab=50)
    monkeypatch.setattr(loop_overhead, "_torch", lambda *a: None)
    monkeypatch.setattr(loop_overhead, "_peer_train_steps", lambda *a: {"keras": 1e-3})
    monkeypatch.setattr("bench.workloads.TUTORIAL", tiny)
    loop_overhead.main(["--repeats", "2", "--budget-s", "0.01", "--out", str(tmp_path),
                        "--malloc", "default"])
    result = json.loads((tmp_path / "loop_overhead.json").read_text())
    assert result["workload"]["T"] == 6 and result["malloc_keep_freed_memory"] is False
    for name in ("empty_scan", "step_scan", "step_scan_half_batch", "step_scan_two_halves",
                 "rows_matmul"):
        assert result["loops"][name]["median_s"] > 0, name
    assert result["loops"]["step_scan_half_batch"]["matmul_flops"] * 2 == \
        result["loops"]["step_scan"]["matmul_flops"]
    floor = result["train_floor"]
    assert floor["floor_ms"] > 0
    assert floor["in_loop_gflops_per_s"] == result["loops"]["step_scan"]["gflops_per_s"]
    assert set(result["ours"]) == set(loop_overhead.STRATEGIES)
    table = (tmp_path / "loop_overhead.md").read_text()
    assert ("Train-step floor" in table
            and "Half the fastest peer's train step (keras): 0.500 ms" in table)


def test_strategies_option_rejects_unknown_names(tmp_path):
    with pytest.raises(SystemExit):
        loop_overhead.main(["--strategies", "scan,magic", "--out", str(tmp_path)])
    assert not (tmp_path / "loop_overhead.json").exists()


@pytest.mark.slow
def test_pallas_runs_as_a_kernel_loop(tmp_path, monkeypatch):
    """``--strategies pallas`` (interpret mode here): L T layer-steps and no loop floor."""
    tiny = dataclasses.replace(TUTORIAL, T=6, L=2, H=8, B=4, E=8, vocab=50)
    monkeypatch.setattr(loop_overhead, "_torch", lambda *a: None)
    monkeypatch.setattr(loop_overhead, "_peer_train_steps", lambda *a: {})
    monkeypatch.setattr("bench.workloads.TUTORIAL", tiny)
    loop_overhead.main(["--repeats", "2", "--budget-s", "0.01", "--out", str(tmp_path),
                        "--strategies", "pallas"])
    result = json.loads((tmp_path / "loop_overhead.json").read_text())
    assert set(result["ours"]) == {"pallas"}
    train = result["ours"]["pallas"]["train"]
    assert train["iterations"] == 2 * 2 * 6 and train["floor_ms"] == 0 and train["median_s"] > 0
