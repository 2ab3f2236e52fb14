"""Each results folder's Markdown, regenerated from its JSON by the benchmarks' own writers.

``python -m bench.tables [DIR ...] [--check]``

The tables beside a benchmark's JSON are what its Markdown writer makes of that JSON,
never hand edits, so the documents that link them cannot drift from the measurements.
For every ``*.json`` under the given folders (default ``bench/results``, recursively)
whose ``schema`` names a benchmark, this writes its table file:

* ``stackrnn-bench/1`` (``bench.run``): ``results[-X].json`` -> ``tables[-X].md``;
* ``stackrnn-bench-parallel/1`` (``bench.parallel``): ``results[-X].json`` -> ``tables[-X].md``;
* ``stackrnn-bench-parallel-iterations/1``: ``iterations.json`` -> ``iterations.md``;
* ``stackrnn-bench-loop-overhead/1``: ``loop_overhead.json`` -> ``loop_overhead.md``;
* ``stackrnn-bench-grad-memory/1``: ``grad_memory.json`` -> ``grad_memory.md``.

Other JSON (the accuracy summaries of ``scripts/accuracy_runs.py``, which writes its own
``summary.md``) is left alone. ``--check`` writes nothing and exits 1 naming every table
file that differs from what its JSON gives (``tests/test_docs.py`` runs it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _writers() -> dict:
    """schema -> Markdown writer (imported here: each module's own ``markdown``)."""
    from bench import grad_memory, loop_overhead, parallel, parallel_iterations, report

    return {"stackrnn-bench/1": report.markdown,
            "stackrnn-bench-parallel/1": parallel.markdown,
            parallel_iterations.SCHEMA: parallel_iterations.markdown,
            "stackrnn-bench-loop-overhead/1": loop_overhead.markdown,
            "stackrnn-bench-grad-memory/1": grad_memory.markdown}


def table_path(json_path: Path) -> Path:
    """Where a JSON's tables go: ``results*.json`` -> ``tables*.md``, else ``<stem>.md``."""
    stem = json_path.stem
    if stem.startswith("results"):
        stem = "tables" + stem[len("results"):]
    return json_path.with_name(stem + ".md")


def generated(folders) -> dict[Path, str]:
    """Table file -> the Markdown its JSON gives, for every benchmark JSON under ``folders``."""
    writers, out = _writers(), {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*.json")):
            data = json.loads(path.read_text())
            writer = writers.get(data.get("schema")) if isinstance(data, dict) else None
            if writer is not None:
                out[table_path(path)] = writer(data)
    return out


def stale(folders) -> list[Path]:
    """The table files that are missing or differ from what their JSON gives."""
    return [path for path, text in generated(folders).items()
            if not path.exists() or path.read_text() != text]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, default=[RESULTS])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a table differs from its JSON")
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.folders if not f.is_dir()]
    if missing:
        print(f"error: no such results folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.check:
        bad = stale(args.folders)
        for path in bad:
            print(f"stale: {path} (regenerate: python -m bench.tables {path.parent})")
        return 1 if bad else 0
    for path, text in generated(args.folders).items():
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
