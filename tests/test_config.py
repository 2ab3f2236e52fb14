"""Config: tutorial defaults, presets, JSON/TOML files and their precedence, validation."""

import json

import pytest

from stackrnn_jax.config import PRESETS, TrainConfig, preset, read_config_file, resolve
from stackrnn_jax.strategies import STRATEGIES


def test_defaults_are_the_classic_tutorial():
    config = TrainConfig()
    assert (config.cell, config.layers, config.units, config.embed_dim) == ("simple", 2, 64, 32)
    assert (config.num_words, config.maxlen, config.padding) == (10_000, 500, "pre")
    assert (config.batch_size, config.epochs, config.learning_rate) == (32, 5, 1e-3)
    assert not config.mask and not config.bidirectional and config.clip_norm == 0
    assert config.val_split == "random"  # validation as the tutorial held it out
    assert preset("tutorial") == config


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_valid_and_round_trips(name):
    config = preset(name)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_best_presets_use_their_cell_and_the_same_stack_shape():
    for name, cell in (("simple-best", "simple"), ("lstm-best", "lstm"), ("gru-best", "gru"),
                       ("bigru-best", "gru")):
        config = preset(name)
        assert (config.cell, config.layers, config.units) == (cell, 2, 64)
        assert config.mask  # the recipes rely on masking by true length


def test_precedence_defaults_preset_file_flags(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('preset = "lstm-best"\nepochs = 3\nlearning_rate = 1\nunits = 16\n')
    values = read_config_file(path)
    config = resolve(None, values, {"units": 8, "dropout": None})
    assert config.cell == "lstm"  # preset named by the file
    assert config.epochs == 3 and config.learning_rate == 1.0  # file over preset (int widened)
    assert config.units == 8  # flag over file
    assert config.dropout == PRESETS["lstm-best"]["dropout"]  # unset flag changes nothing
    assert resolve("gru-best", values).cell == "gru"  # an explicit preset beats the file's


def test_json_file(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"cell": "gru", "mask": True}))
    assert resolve(None, read_config_file(path)) == TrainConfig(cell="gru", mask=True)


@pytest.mark.parametrize("content, suffix, message", [
    ('{"nope": 1}', ".json", "unknown field 'nope'"),
    ('{"epochs": "5"}', ".json", "field 'epochs' expects a int"),
    ('{"mask": 1}', ".json", "field 'mask' expects a bool"),
    ("[1, 2]", ".json", "table of fields"),
    ("epochs = = 3", ".toml", "config file"),
    ("epochs: 3", ".yaml", "expected a .json or .toml file"),
])
def test_bad_config_files(tmp_path, content, suffix, message):
    path = tmp_path / f"run{suffix}"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_config_file(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read it"):
        read_config_file(tmp_path / "absent.json")


@pytest.mark.parametrize("changes, message", [
    ({"cell": "transformer"}, "cell: expected one of simple, lstm, gru"),
    ({"strategy": "nope"}, "strategy: expected one of"),
    ({"units": 0}, "units: expected a positive integer"),
    ({"dropout": 1.0}, "dropout: expected a rate"),
    ({"word_dropout": -0.1}, "word_dropout: expected a rate"),
    ({"weight_dropout": 1.0}, "weight_dropout: expected a rate"),
    ({"average_decay": 1.0}, r"average_decay: expected a rate in \[0, 1\)"),
    ({"val_fraction": 1.0}, r"val_fraction: expected a fraction in \[0, 1\)"),
    ({"val_fraction": -0.1}, "val_fraction"),
    ({"val_split": "title"}, "val_split: expected one of random, movie"),
    ({"learning_rate": -1.0}, "learning_rate"),
    ({"weight_decay": -0.01}, "weight_decay: expected >= 0"),
    ({"bucket_width": -1}, "checkpoint_every and bucket_width: expected >= 0"),
    ({"num_words": 3}, "num_words"),
])
def test_invalid_values(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


def test_a_saved_config_without_later_fields_loads_with_their_defaults():
    """config.json of a run from before val_split (and word_dropout, weight_dropout,
    average_decay) existed."""
    saved = {k: v for k, v in TrainConfig(cell="gru").to_dict().items()
             if k not in ("val_split", "word_dropout", "weight_dropout", "average_decay")}
    config = TrainConfig.from_dict(json.loads(json.dumps(saved)))
    assert config == TrainConfig(cell="gru") and config.val_split == "random"


def test_val_split_is_a_checked_field():
    assert TrainConfig(val_split="movie").val_split == "movie"
    with pytest.raises(ValueError, match="field 'val_split' expects a str"):
        TrainConfig.from_dict({"val_split": 1})


def test_strategy_choices_come_from_the_registry():
    for name in STRATEGIES:
        assert TrainConfig(strategy=name).strategy == name


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset: expected one of"):
        resolve("best-ever")
