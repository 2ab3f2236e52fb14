"""Ours against the fastest peer, side by side, from one or more ``bench.run`` results.

    python -m bench.peer_ratios RESULTS.json [RESULTS.json ...] --variant auto --out tables.md

For every workload and part (forward, train step) in the files: our variant's median
(and its min-max), each peer's median, the fastest peer and ``peer ÷ ours`` (above 1:
ours is faster). Each file's machine line and command head its rows, so a table never
mixes runs without saying so.

Files whose commands differ only in ``--out``, ``--note``, ``--strategies`` and ``--peers``
are one run: rounds of it (on a noisy machine: the same runs repeated, a fresh
``bench.run`` process each time), and within a round the implementations may each have
had a process of their own (``--strategies none --peers X``). They make one table, each
figure the median of the rounds' medians with the rounds' range, and the ratio's range
over the rounds beside it (files in round order: the k-th file holding an
implementation is its k-th round).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
from pathlib import Path

from bench.machine import machine_line

PEER_NAMES = {"keras": "Keras", "keras_tf": "Keras (TF)", "flax_linen": "Flax", "torch": "PyTorch"}


def _ms(part: dict) -> str:
    return (f"{1e3 * part['median_s']:.1f} ({1e3 * part['min_s']:.1f}-{1e3 * part['max_s']:.1f}, "
            f"n {part['repeats']})")


def _pooled(parts: list[dict]) -> dict:
    """One part's timing over rounds: the median of the rounds' medians, their range and
    how many rounds; a single round stays as it is (its timed calls' range)."""
    if len(parts) == 1:
        return parts[0]
    medians = [p["median_s"] for p in parts]
    return {"median_s": statistics.median(medians), "min_s": min(medians),
            "max_s": max(medians), "repeats": len(parts), "rounds": True}


def _ms_pooled(part: dict) -> str:
    if not part.get("rounds"):
        return _ms(part)
    return (f"{1e3 * part['median_s']:.1f} ({1e3 * part['min_s']:.1f}-{1e3 * part['max_s']:.1f}, "
            f"{part['repeats']} rounds)")


def _by_workload(results: list[dict]) -> dict:
    """{workload key: {(kind, impl, variant): [entry of each round]}}, ok entries only."""
    table: dict = {}
    for result in results:
        for e in result["entries"]:
            if e["status"] == "ok":
                key = tuple(sorted(e["workload"].items()))
                table.setdefault(key, {}).setdefault((e["kind"], e["impl"], e["variant"]),
                                                     []).append(e)
    return table


def rows(results: list[dict], variant: str) -> list[str]:
    """Markdown table rows of one run: one results file, or several rounds of it."""
    out = []
    for key, runs in _by_workload(results).items():
        w = dict(key)
        ours = runs.get(("ours", "stackrnn_jax", variant))
        peers = {impl: entries for (kind, impl, _), entries in runs.items() if kind == "peer"}
        for part in ("train", "forward"):
            if not ours or not all(e.get(part) for e in ours):
                continue
            timed = {impl: _pooled([e[part] for e in entries])
                     for impl, entries in peers.items() if all(e.get(part) for e in entries)}
            if not timed:
                continue
            mine = _pooled([e[part] for e in ours])
            best = min(timed, key=lambda impl: timed[impl]["median_s"])
            each = ", ".join(f"{PEER_NAMES.get(impl, impl)} {1e3 * t['median_s']:.1f}"
                             for impl, t in timed.items())
            ratio = f"{timed[best]['median_s'] / mine['median_s']:.2f}x"
            if len(ours) > 1 and len(ours) == len(peers[best]):
                per_round = [b[part]["median_s"] / o[part]["median_s"]
                             for o, b in zip(ours, peers[best], strict=True)]
                ratio += f" ({min(per_round):.2f}-{max(per_round):.2f}x)"
            label = "train step" if part == "train" else "inference"
            out.append(f"| {w['cell']} | {label} | {w['B']} | {w['T']} | {_ms_pooled(mine)} | "
                       f"{each} | {PEER_NAMES.get(best, best)} {_ms_pooled(timed[best])} | "
                       f"{ratio} |")
    return out


_PER_FILE_OPTIONS = ("--out", "--note", "--strategies", "--peers")


def _run_key(argv: list[str]) -> tuple[str, ...]:
    """A bench.run command without the options that may differ between the files of one
    run (where it wrote, its note, which implementations that process measured)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _PER_FILE_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{option}=" for option in _PER_FILE_OPTIONS)):
            kept.append(arg)
    return tuple(kept)


def markdown(paths: list[Path], variant: str) -> str:
    parts = [f"Ours (`{variant}`) against the fastest peer; ms per call, median (min-max, "
             f"timed calls; over several rounds of one run: the median of the rounds' "
             f"medians and their range); ratio = fastest peer ÷ ours (above 1: ours faster; "
             f"over rounds, each round's ratio's range beside it).", "",
             f"Command: `python -m bench.peer_ratios {shlex.join(map(str, paths))} "
             f"--variant {variant}`", ""]
    runs: dict[tuple[str, ...], list[tuple[Path, dict]]] = {}
    for path in paths:
        result = json.loads(path.read_text())
        runs.setdefault(_run_key(result["config"]["argv"]), []).append((path, result))
    for rounds in runs.values():
        first = rounds[0][1]
        command = " ".join(["python -m bench.run", shlex.join(first["config"]["argv"])])
        title = str(rounds[0][0]) + (f" and {len(rounds) - 1} more results files"
                                     if len(rounds) > 1 else "")
        machines = [f"Machine: {machine_line(result['machine'])}" for _, result in rounds]
        parts += [f"### {title}", "", *[m for line in machines for m in (line, "")]]
        if len(rounds) > 1:
            parts += ["Files: " + ", ".join(str(path) for path, _ in rounds), ""]
        parts += [f"Command: `{command}`", "",
                  "| cell | part | batch | T | ours ms | peers ms (median) | fastest peer ms | "
                  "peer ÷ ours |", "|---|---|---|---|---|---|---|---|",
                  *rows([result for _, result in rounds], variant), ""]
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
