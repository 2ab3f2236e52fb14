"""bench.peer_ratios (ours against the fastest peer) and bench.run's --base and
--forward-only options: tables from a synthetic results file, and bad input as one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# bench/ is a folder of the repository, not an installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import peer_ratios  # noqa: E402
from bench.run import parse_args, plan  # noqa: E402

MACHINE = {"cpu_model": "test CPU", "cpu_count": 2, "cpu_usable": 2, "jax_platform": "cpu",
           "gpu_name": None, "versions": {}, "python": "3", "date_utc": "2026-01-01"}


def _part(median):
    return {"median_s": median, "min_s": median * 0.9, "max_s": median * 1.2, "repeats": 3}


def _entry(kind, impl, variant, forward, train=None):
    return {"kind": kind, "impl": impl, "variant": variant, "status": "ok",
            "workload": {"T": 500, "L": 2, "H": 64, "B": 256, "cell": "lstm", "E": 32,
                         "vocab": 10}, "forward": _part(forward),
            "train": None if train is None else _part(train)}


def test_ratio_is_the_fastest_peer_over_ours(tmp_path):
    result = {"machine": MACHINE, "config": {"argv": ["--forward-only"]}, "entries": [
        _entry("ours", "stackrnn_jax", "auto", 0.100),
        _entry("ours", "stackrnn_jax", "scan", 0.050),          # not the compared variant
        _entry("peer", "flax_linen", "flax_linen", 0.150),
        _entry("peer", "keras", "keras", 0.300)]}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(result))
    out = tmp_path / "tables.md"
    peer_ratios.main([str(path), "--out", str(out)])
    rows = [line for line in out.read_text().splitlines() if line.startswith("| lstm")]
    assert len(rows) == 1  # no train step in a forward-only run
    assert "| inference | 256 | 500 | 100.0 (90.0-120.0, n 3) |" in rows[0]
    assert rows[0].endswith("| Flax 150.0 (135.0-180.0, n 3) | 1.50x |")


def test_missing_results_file_is_one_line(tmp_path):
    with pytest.raises(SystemExit,
                       match=r"^peer_ratios: no such results file: .*run python -m bench.run"):
        peer_ratios.main([str(tmp_path / "none.json")])


def test_base_sizes_set_the_swept_workload():
    points, base = plan(parse_args(["--sweep", "cell", "--base", "T=100,B=256",
                                    "--forward-only"]))
    assert (base.T, base.B, base.H) == (100, 256, 64)
    assert [w.cell for w, _, _ in points] == ["simple", "gru", "lstm"]
    assert all((w.T, w.B) == (100, 256) for w, _, _ in points)


@pytest.mark.parametrize("bad", ["T=x", "Q=3", "T"])
def test_bad_base_is_one_line(bad, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--base", bad])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --base: expected NAME=INT pairs with NAME in T, L, H, B, E" in err
