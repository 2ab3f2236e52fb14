"""PNG plots from a results dict: time and compile time vs each swept size, per variant."""

from __future__ import annotations

from pathlib import Path

from bench.peers import PEERS

SWEEP_LABELS = {"T": "sequence length T", "L": "layers L", "H": "hidden units H",
                "B": "batch size B", "cell": "cell"}


def _series(result, sweep, part, key):
    """``{variant: [(x, y), ...]}`` over the entries of ``sweep`` that ran.

    Compile times leave out eager peers (PyTorch), which compile nothing.
    """
    series: dict = {}
    for e in result["entries"]:
        if sweep not in e.get("sweeps", []) or e["status"] != "ok" or not e.get(part):
            continue
        if key == "compile_s" and str(e[part].get("compile_method", "")).startswith("none"):
            continue
        series.setdefault(e["variant"], []).append((e["workload"][sweep], e[part][key]))
    return series


def _plot(ax, series, sweep, ylabel, title, scale=1.0):
    categorical = sweep == "cell"
    cats = []
    if categorical:
        for pts in series.values():
            for x, _ in pts:
                if x not in cats:
                    cats.append(x)
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("tab20").colors
    ticks = set()
    for index, (name, pts) in enumerate(series.items()):
        pts = pts if categorical else sorted(pts)
        xs = [cats.index(x) if categorical else x for x, _ in pts]
        ticks.update(xs)
        ys = [y * scale for _, y in pts]
        peer = name in PEERS
        ax.plot(xs, ys, marker="s" if peer else "o", linestyle="--" if peer else "-",
                color=colors[(2 * index) % 20 + (index // 10) % 2], label=name)
    if categorical:
        ax.set_xticks(range(len(cats)), cats)
    else:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(ticks), [str(t) for t in sorted(ticks)])
        ax.minorticks_off()
    ax.set_yscale("log")
    ax.set_xlabel(SWEEP_LABELS[sweep])
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)


def make_plots(result, out_dir) -> list[str]:
    """Write ``time_vs_{sweep}.png`` and ``compile_vs_{sweep}.png`` per sweep that ran."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    device = result["machine"].get("gpu_name") or result["machine"]["cpu_model"]
    written = []
    for sweep in ("T", "L", "H", "B", "cell"):
        if not any(sweep in e.get("sweeps", []) for e in result["entries"]):
            continue
        fig, axes = plt.subplots(1, 2, figsize=(13, 5))
        for ax, part in zip(axes, ("train", "forward")):
            _plot(ax, _series(result, sweep, part, "median_s"), sweep, "median time (ms)",
                  f"{part} {'step' if part == 'train' else 'pass'} vs {sweep} ({device})", 1e3)
        axes[0].legend(fontsize=8, ncol=2)
        fig.tight_layout()
        path = out_dir / f"time_vs_{sweep}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path.name)

        fig, axes = plt.subplots(1, 2, figsize=(13, 5))
        for ax, part in zip(axes, ("train", "forward")):
            _plot(ax, _series(result, sweep, part, "compile_s"), sweep, "compile time (s)",
                  f"{part} compile (jit.lower().compile()) vs {sweep} ({device})")
        axes[0].legend(fontsize=8, ncol=2)
        fig.tight_layout()
        path = out_dir / f"compile_vs_{sweep}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path.name)
    return written
