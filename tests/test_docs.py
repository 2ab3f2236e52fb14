"""The documents agree with the results files they cite (no JAX compile; a second or two).

* every relative link in README.md, bench/README.md and CHANGELOG.md reaches a file, and
  every ``#anchor`` a heading of it;
* in README.md and bench/README.md, every decimal figure of a section's prose appears in
  a results file that the same section links (so a quoted figure cannot drift from its
  measurement, and a figure with no results file behind it fails);
* each row of the README's accuracy table equals the result it cites in an accuracy
  summary (``scripts/accuracy_runs.py``'s ``summary*.json``);
* every results folder's tables are what ``python -m bench.tables`` generates from its JSON;
* the README's Layout lists every module.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench import tables
from bench.report import AUTO_TABLE_BEGIN, AUTO_TABLE_END
from scripts import accuracy_runs

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "bench/README.md", "CHANGELOG.md")
CHECKED_DOCS = ("README.md", "bench/README.md")   # CHANGELOG's figures are history
RESULTS = ROOT / "bench" / "results"

LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6}) (.*)$", re.M)
# A decimal figure: 14.49, 0.39 (of "0.39x"); not a version (0.10.2) nor part of a word.
FIGURE = re.compile(r"(?<![\w.])\d+\.\d+(?![\d.])")
VERSION_BEFORE = re.compile(r"(Python|jax|jaxlib|flax|optax|keras|torch|C\+\+)\s*(>=|==)?\s*$",
                            re.I)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def read(doc: str) -> str:
    return (ROOT / doc).read_text(encoding="utf-8")


def prose(text: str) -> str:
    """The text a reader reads as claims: no code blocks, inline code, link targets or
    generated auto table."""
    if AUTO_TABLE_BEGIN in text:
        head, rest = text.split(AUTO_TABLE_BEGIN, 1)
        text = head + rest.split(AUTO_TABLE_END, 1)[1]
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    text = re.sub(r"^    .*$", "", text, flags=re.M)          # indented code blocks
    text = re.sub(r"`[^`]*`", "", text)                      # inline code, may wrap
    return LINK.sub("]", text)


def sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) for the text before the first heading and under each heading."""
    marks = list(HEADING.finditer(text))
    starts = [0] + [m.start() for m in marks]
    names = [""] + [m.group(2) for m in marks]
    ends = starts[1:] + [len(text)]
    return [(name, text[start:end]) for name, start, end in zip(names, starts, ends)]


def figures(text: str) -> list[str]:
    return [m.group(0) for m in FIGURE.finditer(text)
            if not VERSION_BEFORE.search(text[max(0, m.start() - 12):m.start()])]


def linked_files(doc: str, body: str) -> list[Path]:
    base = (ROOT / doc).parent
    out = []
    for target in LINK.findall(body):
        if "://" in target or target.startswith("#"):
            continue
        out.append((base / target.split("#")[0]).resolve())
    return out


def contains(text: str, figure: str) -> bool:
    return re.search(rf"(?<![\d.]){re.escape(figure)}(?!\d)", text) is not None


@pytest.mark.parametrize("doc", DOCS)
def test_links_reach_files_and_anchors(doc):
    text = read(doc)
    base = (ROOT / doc).parent
    broken = []
    for target in LINK.findall(text):
        if "://" in target:
            continue
        path, _, anchor = target.partition("#")
        file = (base / path).resolve() if path else ROOT / doc
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md":
            anchors = {slug(h) for _, h in HEADING.findall(file.read_text(encoding="utf-8"))}
            if anchor not in anchors:
                broken.append(target)
    assert not broken, f"{doc}: links to nothing: {broken}"


@pytest.mark.parametrize("doc", CHECKED_DOCS)
def test_every_quoted_figure_is_in_a_results_file_its_section_links(doc):
    unbacked = []
    for name, body in sections(read(doc)):
        quoted = figures(prose(body))
        if not quoted:
            continue
        files = [f for f in linked_files(doc, body)
                 if RESULTS in f.parents and f.suffix in (".md", ".json")]
        texts = [f.read_text(encoding="utf-8") for f in files if f.exists()]
        for figure in quoted:
            if not any(contains(t, figure) for t in texts):
                unbacked.append(f"{name or '(top)'}: {figure}")
    assert not unbacked, (
        f"{doc} quotes figures that no results file linked from the same section holds "
        f"(quote the file, or link the file that holds them): {unbacked}")


def accuracy_rows() -> list[dict]:
    """The README accuracy table's rows: their cells and the summary each row links."""
    text = read("README.md")
    section = next(body for name, body in sections(text) if name.startswith("IMDB accuracy"))
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        rows.append(cells)
    return rows


def test_readme_accuracy_table_equals_the_summaries_it_cites():
    rows = accuracy_rows()
    assert rows, "README.md: no accuracy table"
    for row in rows:
        (target,) = LINK.findall(row["results"])
        summary = (ROOT / target).with_suffix(".json")
        assert RESULTS in summary.resolve().parents and summary.exists(), target
        # The seed a run trained with (summaries before the "seed" key hold it in the config).
        results = [{**r, "seed": r["config"]["seed"]}
                   for r in json.loads(summary.read_text())["results"]]
        preset = re.match(r"[\w+-]+", row["preset"]).group(0)  # a variant: preset+name
        strategy = re.search(r"`([^`]+)`", row["strategy"]).group(1)
        seeds = [int(seed) for seed in row["seeds"].split(",")]
        runs = [r for seed in seeds for r in results
                if r["preset"] == preset and r["config"]["strategy"] == strategy
                and r["seed"] == seed]
        assert len(runs) == len(seeds), f"{preset} / {strategy}: seeds {seeds} not in {summary}"
        expected = accuracy_runs.readme_cells(runs)
        shown = {key: row[key] for key in expected}
        assert shown == expected, f"README accuracy row {preset} / {strategy} vs {summary}"


def test_results_tables_are_generated_from_their_json():
    stale = tables.stale([RESULTS])
    assert not stale, f"hand-edited or stale tables (run python -m bench.tables): {stale}"


def test_bench_tables_refuses_a_missing_folder(tmp_path, capsys):
    assert tables.main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: no such results folder")


def test_readme_layout_lists_every_module():
    text = read("README.md")
    layout = next(body for name, body in sections(text) if name == "Layout")
    listed = set(re.findall(r"^    (\S+)", layout, flags=re.M))
    modules = [p for pattern in ("stackrnn_jax/**/*.py", "stackrnn_jax/**/*.cc",
                                 "stackrnn_jax/**/*.h", "bench/*.py", "scripts/*")
               for p in ROOT.glob(pattern) if "__pycache__" not in p.parts]
    modules += [p for p in ROOT.glob("tests/*.py") if not p.name.startswith("test_")]
    missing = sorted(str(p.relative_to(ROOT)) for p in modules
                     if str(p.relative_to(ROOT)) not in listed)
    assert not missing, f"README.md's Layout does not list: {missing}"
    absent = sorted(p for p in listed if "*" not in p and not (ROOT / p).exists())
    assert not absent, f"README.md's Layout lists files that do not exist: {absent}"
