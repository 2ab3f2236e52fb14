"""Run every registered fault and bad-input case (``tests/test_faults.py``'s ``CASES``) and
write the table the README's "Reliability" section quotes.

A fault counts as survived, and a bad input as clean, when its test passes: each test
checks one ``error:``/``stopped:`` line, no traceback, and no file harmed. A registered
case that pytest does not collect fails the script (the table cannot silently shrink).

    .venv/bin/python scripts/fault_table.py            # writes results/faults.{json,md}
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import machine_info, machine_line  # noqa: E402
from tests.test_faults import CASES  # noqa: E402

KINDS = {"fault": ("faults injected", "survived"), "input": ("bad inputs tried", "clean")}


def run_cases() -> dict[str, str]:
    """``{node id: "passed" | "failed" | "skipped"}`` of one pytest run over every case."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-m", "", "-p", "no:cacheprovider", "-q",
                   f"--junitxml={report}", *[case.test for case in CASES]]
        status = subprocess.run(command, cwd=ROOT).returncode
        if not report.exists() or status not in (0, 1):  # 1: some tests failed; else broken
            raise SystemExit(f"pytest could not run the cases (exit status {status})")
        outcomes = {}
        for case in ElementTree.parse(report).iter("testcase"):
            module = case.get("classname").replace(".", "/") + ".py"
            result = ("failed" if case.find("failure") is not None or case.find("error") is not None
                      else "skipped" if case.find("skipped") is not None else "passed")
            outcomes[f"{module}::{case.get('name')}"] = result
    missing = [case.test for case in CASES if case.test not in outcomes]
    if missing:
        raise SystemExit(f"registered cases that pytest did not run: {missing}")
    return outcomes


def table(outcomes: dict[str, str], machine: dict) -> str:
    lines = [f"Written by `.venv/bin/python scripts/fault_table.py` on {machine_line(machine)}.",
             "",
             "| | tried | survived / clean |", "|---|---:|---:|"]
    for kind, (tried, ok) in KINDS.items():
        cases = [case for case in CASES if case.kind == kind]
        good = sum(outcomes[case.test] == "passed" for case in cases)
        lines.append(f"| {tried} | {len(cases)} | {good} {ok} |")
    lines += ["", "| kind | case | outcome | test |", "|---|---|---|---|"]
    lines += [f"| {case.kind} | {case.what} | {outcomes[case.test]} | `{case.test}` |"
              for case in CASES]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results", help="folder of the results")
    args = parser.parse_args()
    outcomes = run_cases()
    machine = machine_info()
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {kind: {"tried": sum(c.kind == kind for c in CASES),
                      "ok": sum(c.kind == kind and outcomes[c.test] == "passed" for c in CASES)}
               for kind in KINDS}
    (args.out / "faults.json").write_text(json.dumps(
        {"machine": machine, "summary": summary,
         "cases": [{"kind": c.kind, "what": c.what, "test": c.test, "outcome": outcomes[c.test]}
                   for c in CASES]}, indent=2) + "\n")
    (args.out / "faults.md").write_text(table(outcomes, machine))
    print(table(outcomes, machine), end="")


if __name__ == "__main__":
    main()
