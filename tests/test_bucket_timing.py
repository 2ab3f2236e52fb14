"""scripts/bucket_timing.py on a tiny archive: both comparisons write their side-by-side rows."""

import json

import pytest

from scripts import bucket_timing
from tests.helpers import write_archive


@pytest.mark.parametrize("compare, names", [
    ([], ["no buckets", "buckets"]),
    (["--strategies", "scan", "scan_vjp"], ["strategy scan", "strategy scan_vjp"])])
def test_writes_both_variants_and_the_speedup(tmp_path, private_caches, compare, names):
    write_archive(tmp_path / "imdb.tar.gz", movies=True)
    out = tmp_path / "timing"
    bucket_timing.main(["--data", str(tmp_path / "imdb.tar.gz"), "--preset", "simple-best",
                        "--maxlen", "12", "--bucket-width", "4", "--batches", "2", "--block", "1",
                        *compare, "--out", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())
    assert list(result["variants"]) == names
    assert [result["baseline"], result["other"]] == names
    rows = result["variants"]
    assert all(row["timed_steps"] == 2 and row["step_ms_mean"] > 0 for row in rows.values())
    assert result["epoch_speedup"] == pytest.approx(
        rows[names[0]]["epoch_s_estimate"] / rows[names[1]]["epoch_s_estimate"])
    # Buckets trim padding; two strategies run the same batches.
    assert result["step_ratio"] >= 1.0 if not compare else result["step_ratio"] == 1.0
    assert f"over {names[0]}" in out.with_suffix(".md").read_text()
