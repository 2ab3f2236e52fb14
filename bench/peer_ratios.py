"""Ours against the fastest peer, side by side, from one or more ``bench.run`` results.

    python -m bench.peer_ratios RESULTS.json [RESULTS.json ...] --variant auto --out tables.md

For every workload and part (forward, train step) in the files: our variant's median
(and its min-max), each peer's median, the fastest peer and ``peer ÷ ours`` (above 1:
ours is faster). Each file's machine line and command head its rows, so a table never
mixes runs without saying so.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from bench.machine import machine_line

PEER_NAMES = {"keras": "Keras", "flax_linen": "Flax", "torch": "PyTorch"}


def _ms(part: dict) -> str:
    return (f"{1e3 * part['median_s']:.1f} ({1e3 * part['min_s']:.1f}-{1e3 * part['max_s']:.1f}, "
            f"n {part['repeats']})")


def rows(result: dict, variant: str) -> list[str]:
    """Markdown table rows of one results file."""
    by_workload: dict = {}
    for e in result["entries"]:
        if e["status"] == "ok":
            key = tuple(sorted(e["workload"].items()))
            by_workload.setdefault(key, []).append(e)
    out = []
    for key, entries in by_workload.items():
        w = dict(key)
        ours = next((e for e in entries if e["kind"] == "ours" and e["variant"] == variant), None)
        peers = [e for e in entries if e["kind"] == "peer"]
        for part in ("train", "forward"):
            if ours is None or not ours.get(part):
                continue
            timed = [p for p in peers if p.get(part)]
            if not timed:
                continue
            best = min(timed, key=lambda p: p[part]["median_s"])
            each = ", ".join(f"{PEER_NAMES.get(p['impl'], p['impl'])} "
                             f"{1e3 * p[part]['median_s']:.1f}" for p in timed)
            ratio = best[part]["median_s"] / ours[part]["median_s"]
            label = "train step" if part == "train" else "inference"
            out.append(f"| {w['cell']} | {label} | {w['B']} | {w['T']} | {_ms(ours[part])} | "
                       f"{each} | {PEER_NAMES.get(best['impl'], best['impl'])} "
                       f"{_ms(best[part])} | {ratio:.2f}x |")
    return out


def markdown(paths: list[Path], variant: str) -> str:
    parts = [f"Ours (`{variant}`) against the fastest peer; ms per call, median (min-max, "
             f"timed calls); ratio = fastest peer ÷ ours (above 1: ours faster).", "",
             f"Command: `python -m bench.peer_ratios {shlex.join(map(str, paths))} "
             f"--variant {variant}`", ""]
    for path in paths:
        result = json.loads(path.read_text())
        command = " ".join(["python -m bench.run", shlex.join(result["config"]["argv"])])
        parts += [f"### {path}", "", f"Machine: {machine_line(result['machine'])}", "",
                  f"Command: `{command}`", "",
                  "| cell | part | batch | T | ours ms | peers ms (median) | fastest peer ms | "
                  "peer ÷ ours |", "|---|---|---|---|---|---|---|---|", *rows(result, variant), ""]
    return "\n".join(parts)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.peer_ratios", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", type=Path, help="results.json files of bench.run")
    p.add_argument("--variant", default="auto", help="our variant to compare (default auto)")
    p.add_argument("--out", type=Path, default=None, help="write the tables here (default: print)")
    args = p.parse_args(argv)
    missing = [str(path) for path in args.results if not path.is_file()]
    if missing:
        raise SystemExit(f"peer_ratios: no such results file: {', '.join(missing)}; run "
                         f"python -m bench.run first")
    text = markdown(args.results, args.variant)
    if args.out is None:
        print(text)
        return
    partial = args.out.with_name(args.out.name + ".partial")
    partial.write_text(text)
    partial.replace(args.out)  # atomic: the old tables stay until the new ones are whole


if __name__ == "__main__":
    main()
