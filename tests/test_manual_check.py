"""scripts/manual_check.py: the network and the hand computation agree, and a mismatch fails."""

import importlib.util
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "manual_check.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("manual_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_predictions_match(capsys):
    assert _load_script().main(["--cell", "simple"]) == 0
    lines = capsys.readouterr().out.splitlines()
    network = float(lines[0].split("[[")[1].rstrip("]"))
    manual = float(lines[1].split("[")[1].rstrip("]"))
    assert lines[0].startswith("Prediction from the neural network: [[")
    assert lines[1].startswith("Prediction from manual computation: [")
    assert 0.0 < network < 1.0 and abs(network - manual) < 1e-6


def test_mismatch_exits_non_zero(monkeypatch, capsys):
    module = _load_script()
    real = module.reference_rnn
    monkeypatch.setattr(module, "reference_rnn", lambda *a, **k: np.asarray(real(*a, **k)) + 0.01)
    assert module.main([]) == 1
    assert "MISMATCH" in capsys.readouterr().err
