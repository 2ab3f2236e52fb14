"""Markdown tables from a ``results.json`` (``python -m bench.report [results.json]``), and
the rule table of the ``"auto"`` strategy (``python -m bench.report --auto-table``)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from bench.machine import machine_line


def _ms(x) -> str:
    return "-" if x is None else f"{1e3 * x:.2f}"


def _s(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _ratio(a, b) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def _mb(x) -> str:
    return "-" if x is None else f"{x / 2**20:.1f}"


def _get(entry, part, key):
    d = entry.get(part) or {}
    return d.get(key)


def first_result_s(entry, part):
    """Seconds from nothing to the first result: compile + first call for ours/Flax
    (compiled ahead of time), the first call alone for Keras/PyTorch (it includes compiling)."""
    d = entry.get(part) or {}
    if "first_call_s" not in d:
        return None
    if d.get("compile_method") == "jit.lower().compile()":
        return d["compile_s"] + d["first_call_s"]
    return d["first_call_s"]


def _ok(entries):
    return [e for e in entries if e["status"] == "ok"]


def tutorial_tables(result) -> str:
    tut = result["config"]["tutorial"]
    entries = [e for e in result["entries"] if "tutorial" in e.get("sweeps", [])]
    if not entries:
        return ""
    ours = [e for e in entries if e["kind"] == "ours"]
    peers = [e for e in entries if e["kind"] == "peer"]
    scan = next((e for e in ours if e["variant"] == "scan" and e["status"] == "ok"), None)
    lines = [(f"### Tutorial workload ({tut['cell']}, T={tut['T']}, L={tut['L']}, H={tut['H']}, "
             f"B={tut['B']}, E={tut['E']}, vocab={tut['vocab']})"), "",
             ("Times in ms: median [IQR]; compile = `jit.lower().compile()` seconds; "
             "'vs scan' = time / scan's time (< 1 is faster); temp = the train step "
             "executable's temporary buffers (`memory_analysis()`); "
             "FLOP/s fraction = achieved analytic FLOP/s ÷ a same-FLOP matmul's; "
             "check = max |difference| from `scan` of the output and gradients at T<=12, B=3 "
             "('full': of the output at the full size)."), "",
             ("| variant | forward ms | train step ms | train vs scan | fwd compile s | "
             "train compile s | compile vs scan | temp MB | train FLOP/s frac | check |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for e in ours:
        if e["status"] != "ok":
            lines.append(f"| {e['variant']} | {e['status']}: {e['note']} | | | | | | | | |")
            continue
        f, t = e["forward"], e["train"]
        chk = e.get("check") or {}
        check = ("ok" if chk.get("passed") else "FAIL") + (
            f" ({max(chk.get('forward_max_abs_diff', 0), chk.get('grad_max_abs_diff', 0)):.0e}"
            + (", full " + format(chk["full_size_forward_max_abs_diff_vs_scan"], ".0e")
               if "full_size_forward_max_abs_diff_vs_scan" in chk else "")
            + ")"
            if chk else "")
        lines.append(
            f"| {e['variant']} | {_ms(f['median_s'])} [{_ms(f['iqr_s'])}] | "
            f"{_ms(t['median_s'])} [{_ms(t['iqr_s'])}] | "
            f"{_ratio(t['median_s'], _get(scan, 'train', 'median_s') if scan else None)} | "
            f"{_s(f['compile_s'])} | {_s(t['compile_s'])} | "
            f"{_ratio(t['compile_s'], _get(scan, 'train', 'compile_s') if scan else None)} | "
            f"{_mb(t.get('temp_bytes'))} | {t['fraction_of_matmul']:.3f} | {check} |")
    if peers:
        best = min(_ok(ours), key=lambda e: e["train"]["median_s"], default=None)
        lines += ["", ("Peers on the same workload, same weights (checked: max |logit difference| "
                  "vs ours). Ratios are ours ÷ peer (< 1: ours faster). 'first result' = "
                  "seconds to the first output from nothing (ours: compile + first call)."), "",
                  ("| peer | version | forward ms | train step ms | scan ÷ peer (train) | "
                  f"best ours ({best['variant'] if best else '-'}) ÷ peer (train) | "
                  "scan ÷ peer (fwd) | first train result s | "
                  "scan ÷ peer (first result) | check |"),
                  "|---|---|---|---|---|---|---|---|---|---|"]
        if scan:
            lines.append(f"| ours (scan) | | {_ms(scan['forward']['median_s'])} | "
                         f"{_ms(scan['train']['median_s'])} | 1.00 | | 1.00 | "
                         f"{_s(first_result_s(scan, 'train'))} | 1.00 | |")
        for e in peers:
            if e["status"] != "ok":
                lines.append(f"| {e['impl']} | {e['status']}: {e['note']} | | | | | | | | |")
                continue
            chk = e["check"] or {}
            first_ratio = _ratio(first_result_s(scan, "train") if scan else None,
                                 first_result_s(e, "train"))
            lines.append(
                f"| {e['impl']} | {e.get('version') or ''} | {_ms(e['forward']['median_s'])} "
                f"[{_ms(e['forward']['iqr_s'])}] | {_ms(e['train']['median_s'])} "
                f"[{_ms(e['train']['iqr_s'])}] | "
                f"{_ratio(_get(scan, 'train', 'median_s'), e['train']['median_s'])} | "
                f"{_ratio(_get(best, 'train', 'median_s'), e['train']['median_s'])} | "
                f"{_ratio(_get(scan, 'forward', 'median_s'), e['forward']['median_s'])} | "
                f"{_s(first_result_s(e, 'train'))} | "
                f"{first_ratio} | "
                f"{'ok' if chk.get('passed') else 'FAIL'} "
                f"({chk.get('forward_max_abs_diff', float('nan')):.0e})"
                f"{'; ' + e['note'] if e['note'] else ''} |")
    return "\n".join(lines) + "\n"


def sweep_table(result, sweep: str, part: str = "train", key: str = "median_s",
                title: str | None = None, fmt=_ms) -> str:
    entries = [e for e in result["entries"] if sweep in e.get("sweeps", [])]
    if not entries:
        return ""
    values = []
    for e in entries:
        v = e["workload"][sweep]
        if v not in values:
            values.append(v)
    if sweep != "cell":
        values.sort()
    variants = []
    for e in entries:
        if e["variant"] not in variants:
            variants.append(e["variant"])
    if key == "compile_s":  # eager peers (PyTorch) compile nothing
        entries = [e for e in entries if not str((e.get(part) or {}).get("compile_method", ""))
                   .startswith("none")]
    cell = {(e["variant"], e["workload"][sweep]): e for e in entries}
    scan = {v: cell.get(("scan", v)) for v in values}
    lines = [title or f"### {part} {key} vs {sweep}", "",
             "| variant | " + " | ".join(f"{sweep}={v}" for v in values) + " |",
             "|---|" + "---|" * len(values)]
    for name in variants:
        row = []
        for v in values:
            e = cell.get((name, v))
            if e is None:
                row.append("")
            elif e["status"] != "ok":
                row.append(e["status"])
            elif not e.get(part):  # --forward-only: no train step
                row.append("-")
            else:
                x = e[part][key]
                base = scan[v]
                rel = ""
                if (base is not None and base["status"] == "ok" and base.get(part)
                        and name != "scan"):
                    rel = f" ({x / base[part][key]:.2f}x)"
                row.append(fmt(x) + rel)
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def markdown(result) -> str:
    command = " ".join(["python -m bench.run", shlex.join(result["config"]["argv"])]).strip()
    parts = [f"Machine: {machine_line(result['machine'])}", "", f"Command: `{command}`", ""]
    parts.append(tutorial_tables(result))
    for sweep in ("T", "L", "H", "B", "cell"):
        if any(sweep in e.get("sweeps", []) for e in result["entries"]):
            parts.append(sweep_table(result, sweep, "train", "median_s",
                                     f"### Train step ms (median) vs {sweep}; (x) = ÷ scan"))
            parts.append(sweep_table(result, sweep, "forward", "median_s",
                                     f"### Forward ms (median) vs {sweep}; (x) = ÷ scan"))
            parts.append(sweep_table(result, sweep, "train", "compile_s",
                                     f"### Train-step compile s vs {sweep}; (x) = ÷ scan", fmt=_s))
    return "\n".join(p for p in parts if p is not None)


def _range(low_high) -> str:
    from stackrnn_jax.strategies.auto import UNBOUNDED

    low, high = low_high
    if high >= UNBOUNDED:
        return "any" if low <= 1 else f"≥ {low}"
    if low == high:
        return str(low)
    return f"≤ {high}" if low <= 1 else f"{low}–{high}"


AUTO_TABLE_BEGIN = "<!-- auto-table: generated by `python -m bench.report --auto-table` -->"
AUTO_TABLE_END = "<!-- /auto-table -->"


def auto_table() -> str:
    """The rule table of the ``"auto"`` strategy (``auto.RULES``, in order) as Markdown."""
    from stackrnn_jax.strategies import auto

    lines = ["| # | backend | cells | layers | T | batch | widest layer | strategy | unroll "
             "| evidence |", "|---|---|---|---|---|---|---|---|---|---|"]
    for index, rule in enumerate(auto.RULES, 1):
        layers = _range(rule.layers) + (", equal widths" if rule.equal_widths else "")
        cells = "any" if rule.cells is None else ", ".join(rule.cells)
        unroll = "caller's" if rule.unroll is None else f"{rule.unroll} if the caller's is 1"
        where = " where its kernels build" if rule.needs_native else ""
        lines.append(f"| {index} | {', '.join(rule.backends)} | {cells} | {layers} | "
                     f"{_range(rule.time)} | {_range(rule.batch)} | {_range(rule.units)} | "
                     f"`{rule.strategy}`{where} | {unroll} | {rule.why} |")
    lines.append(f"| – | any | any | any | any | any | any | `{auto.FALLBACK}` | caller's "
                 f"| no rule matched: the default |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--auto-table"]:
        print(auto_table(), end="")
        return
    path = Path(argv[0]) if argv else Path(__file__).resolve().parent / "results" / "results.json"
    print(markdown(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
