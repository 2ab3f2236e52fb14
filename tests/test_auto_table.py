"""The rule table of ``"auto"`` in bench/README.md is the one ``auto.RULES`` holds."""

from __future__ import annotations

from pathlib import Path

from bench.report import AUTO_TABLE_BEGIN, AUTO_TABLE_END, auto_table
from stackrnn_jax.strategies import auto

ROOT = Path(__file__).resolve().parents[1]


def test_readme_auto_table_matches_rules():
    text = (ROOT / "bench" / "README.md").read_text()
    assert text.count(AUTO_TABLE_BEGIN) == 1 and text.count(AUTO_TABLE_END) == 1
    in_readme = text.split(AUTO_TABLE_BEGIN)[1].split(AUTO_TABLE_END)[0].strip("\n")
    assert in_readme == auto_table().strip("\n"), (
        "bench/README.md's auto table is stale: paste `python -m bench.report --auto-table` "
        "between its markers")


def test_auto_table_has_one_row_per_rule_and_the_fallback():
    rows = [line for line in auto_table().splitlines() if line.startswith("| ")][1:]
    assert len(rows) == len(auto.RULES) + 1
    for rule, row in zip(auto.RULES, rows):
        assert f"`{rule.strategy}`" in row and rule.why in row
