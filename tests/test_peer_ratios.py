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


def test_rounds_of_one_run_make_one_table(tmp_path):
    """Three files whose commands differ only in --out and --note: one table, each figure
    the median of the rounds' medians with their range, each round's ratio's range."""
    paths = []
    for n, (ours, flax) in enumerate([(0.100, 0.150), (0.120, 0.150), (0.080, 0.200)]):
        result = {"machine": MACHINE, "entries": [
            _entry("ours", "stackrnn_jax", "auto", ours), _entry("peer", "flax_linen",
                                                                 "flax_linen", flax)],
            "config": {"argv": ["--forward-only", "--out", f"r{n}", "--note", f"load {n}"]}}
        paths.append(tmp_path / f"r{n}.json")
        paths[-1].write_text(json.dumps(result))
    other = tmp_path / "other.json"  # another run (its command differs): its own table
    other.write_text(json.dumps({"machine": MACHINE, "config": {"argv": ["--base", "T=100"]},
                                 "entries": [_entry("ours", "stackrnn_jax", "auto", 0.1),
                                             _entry("peer", "keras", "keras", 0.1)]}))
    out = tmp_path / "tables.md"
    peer_ratios.main([*map(str, paths), str(other), "--out", str(out)])
    text = out.read_text()
    assert text.count("### ") == 2 and "r0.json and 2 more results files" in text
    rows = [line for line in text.splitlines() if line.startswith("| lstm")]
    assert rows[0] == ("| lstm | inference | 256 | 500 | 100.0 (80.0-120.0, 3 rounds) | "
                       "Flax 150.0 | Flax 150.0 (150.0-200.0, 3 rounds) | 1.50x (1.25-2.50x) |")
    assert rows[1].endswith("| 1.00x |")


def test_a_process_per_implementation_makes_one_table(tmp_path):
    """Two rounds, each with ours and each peer in a process (and file) of its own: one
    table; each round's ratio pairs that round's files."""
    paths = []
    for n, (ours, flax, keras_tf) in enumerate([(0.100, 0.150, 0.300), (0.120, 0.200, 0.180)]):
        for impl, kind, seconds, options in (
                ("stackrnn_jax", "ours", ours, ["--strategies", "auto", "--peers", "none"]),
                ("flax_linen", "peer", flax, ["--strategies", "none", "--peers", "flax_linen"]),
                ("keras_tf", "peer", keras_tf, ["--strategies=none", "--peers=keras_tf"])):
            path = tmp_path / f"r{n}-{impl}.json"
            path.write_text(json.dumps({
                "machine": MACHINE, "config": {"argv": ["--forward-only", *options]},
                "entries": [_entry(kind, impl, "auto" if kind == "ours" else impl, seconds)]}))
            paths.append(path)
    out = tmp_path / "tables.md"
    peer_ratios.main([*map(str, paths), "--out", str(out)])
    text = out.read_text()
    assert text.count("### ") == 1 and "and 5 more results files" in text
    (row,) = [line for line in text.splitlines() if line.startswith("| lstm")]
    # medians of the rounds: ours 110, Flax 175, Keras (TF) 240; per round: 150/100, 180/120
    assert row == ("| lstm | inference | 256 | 500 | 110.0 (100.0-120.0, 2 rounds) | "
                   "Flax 175.0, Keras (TF) 240.0 | Flax 175.0 (150.0-200.0, 2 rounds) | "
                   "1.59x (1.50-1.67x) |")


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
