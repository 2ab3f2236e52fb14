"""scripts/accuracy_runs.py: every ablation variant is a valid config, and the seed table."""

import json

import pytest

from scripts import accuracy_runs
from stackrnn_jax.config import PRESETS, resolve


@pytest.mark.parametrize("preset", [name for name in PRESETS if name.endswith("-best")])
def test_every_variant_resolves_for_the_masked_presets(preset):
    for name, changes in accuracy_runs.VARIANTS.items():
        config = resolve(preset, None, changes)
        assert all(getattr(config, field) == value for field, value in changes.items()), name


def test_seed_table_is_mean_and_std_over_seeds():
    results = [{"preset": "p", "seed": seed, "test_accuracy": accuracy, "best_epoch": 1,
                "best_val_accuracy": accuracy + 0.01,
                "epochs": 2, "train_wall_s": 60.0, "seconds_per_epoch": epoch_s,
                "outside_share": 0.01}
               for seed, accuracy, epoch_s in [(0, 0.90, 30.0), (1, 0.91, 34.0), (2, 0.89, 32.0)]]
    results.append({**results[0], "preset": "single"})
    info = {"cpu": "c", "cores": 2, "platform": "p", "jax": "j", "device": "d"}
    text = accuracy_runs.markdown(results, info)
    assert "| p | 3 | 0.9000 ± 0.0100 | 1.0 min | 32 |" in text
    assert "| single | 1 |" not in text  # one seed: no spread to report
    cells = accuracy_runs.readme_cells(results[:3])
    assert cells == {"seeds": "0, 1, 2", "epochs (best)": "2 (best 1, 1, 1)",
                     "train time": "1.0 min", "s/epoch": "32",
                     "test accuracy": "0.9000 ± 0.0100"}
    assert accuracy_runs.readme_cells(results[3:])["test accuracy"] == "0.9000"


def test_render_rewrites_the_markdown_from_the_json(tmp_path):
    result = {"preset": "p", "seed": 0, "test_accuracy": 0.8, "best_val_accuracy": 0.81,
              "best_epoch": 1, "epochs": 1, "train_wall_s": 60.0, "seconds_per_epoch": 50.0,
              "outside_share": 0.0}
    info = {"cpu": "c", "cores": 2, "platform": "p", "jax": "j", "device": "d"}
    (tmp_path / "summary.json").write_text(json.dumps({"machine": info, "results": [result]}))
    accuracy_runs.main(["--out", str(tmp_path), "--render"])
    assert (tmp_path / "summary.md").read_text() == accuracy_runs.markdown([result], info)
