"""The training curves as a PNG: accuracy and loss per epoch, train vs validation."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def plot_history(epochs: Sequence[dict], path: str | Path) -> None:
    """Two panels like the Keras tutorial's; ``epochs`` are ``history.json`` rows."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    x = [row["epoch"] for row in epochs]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for axis, metric in zip(axes, ("accuracy", "loss")):
        axis.plot(x, [row[metric] for row in epochs], "o-", label=f"training {metric}")
        validated = [row for row in epochs if row[f"val_{metric}"] is not None]
        if validated:  # none without a validation split (val_fraction 0)
            axis.plot([row["epoch"] for row in validated],
                      [row[f"val_{metric}"] for row in validated], "s--",
                      label=f"validation {metric}")
        title = f"Training and validation {metric}" if validated else f"Training {metric}"
        axis.set(title=title, xlabel="epoch", ylabel=metric)
        axis.set_xticks(x)
        axis.legend()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp, dpi=100)
    plt.close(figure)
    tmp.replace(path)  # atomic, like the other run files
