"""``stackrnn export``: the folder's loader, run where stackrnn_jax cannot be imported,
reproduces ``stackrnn predict`` for batch sizes and lengths the export never saw."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from stackrnn_jax import export, native
from stackrnn_jax.cli import main
from stackrnn_jax.predict import load_run, predict_proba
from tests.helpers import make_run

# Lengths 1 to past maxlen (12, cut on the truncating side), unknown words, a <br />.
REVIEWS = ["great", "awful boring plot", "wonderful film but the actors were zzz unknown",
           "a great film<br />I loved it " * 4, "Boring! Boring? the story was bad, bad",
           "the the the", "loved it"]
# Runs the loader with only the site-packages folder of jax (and onnxruntime) on the path
# (-I: no environment, no user site, no script folder; -S: no .pth files, so no editable
# install of ours).
ISOLATED = """
import json, runpy, sys
site, loader, folder, batches = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
sys.path.append(site)
try:
    import stackrnn_jax
except ImportError:
    pass
else:
    raise SystemExit("stackrnn_jax is importable here: the check is not isolated")
sys.argv = [loader, folder, *batches[0]]
namespace = runpy.run_path(loader, run_name="__main__")  # the command line: the first batch
for batch in batches[1:]:                                 # load(): the others
    print(json.dumps(namespace["load"](folder)(batch).tolist()))
"""


def _loader_probabilities(folder: Path, batches: list[list[str]]) -> np.ndarray:
    """P(positive) of every review of ``batches``, each batch one call, from the loader run
    in an interpreter that cannot import stackrnn_jax."""
    site = str(Path(jax.__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-I", "-S", "-c", ISOLATED, site,
                           str(folder / export.LOADER_FILE), str(folder), json.dumps(batches)],
                          capture_output=True, text=True, cwd=folder, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    printed, rest = lines[:len(batches[0])], lines[len(batches[0]):]
    assert [line.split("\t", 1)[1] for line in printed] == batches[0]
    return np.concatenate([[float(line.split("\t")[0]) for line in printed],
                           *[json.loads(line) for line in rest]])


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


ONNX = pytest.mark.skipif(not (_has("jax2onnx") and _has("onnxruntime")),
                          reason="the onnx extra (jax2onnx, onnxruntime) is not installed")


@pytest.mark.parametrize("model_format, fields", [
    ("jax", {"mask": True}),
    ("jax", {"mask": False, "cell": "gru", "padding": "post", "truncating": "post", "layers": 1}),
    pytest.param("onnx", {"mask": True}, marks=ONNX),
], ids=["masked-simple", "unmasked-gru-post", "onnx-masked-simple"])
def test_loader_without_stackrnn_reproduces_predict(tmp_path, model_format, fields):
    workdir = make_run(tmp_path / "run", **fields)
    folder = tmp_path / "exported"
    assert main(["export", "--workdir", str(workdir), "--out", str(folder),
                 "--format", model_format]) == 0
    assert (folder / export.MODELS[model_format]).is_file()
    run = load_run(workdir)
    expected = predict_proba(run, REVIEWS)
    assert expected.std() > 0.02  # the model tells the reviews apart: the check can fail
    # One batch of 7, then batches of 1 and 3 (other batch sizes, other longest rows).
    got = _loader_probabilities(folder, [REVIEWS, REVIEWS[:1], REVIEWS[4:]])
    want = np.concatenate([expected, expected[:1], expected[4:]])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_folder_contents_and_manifest(tmp_path):
    workdir = make_run(tmp_path / "run")
    folder = export.export_run(workdir, tmp_path / "out")
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([export.MODELS["jax"], export.VOCAB, export.MANIFEST,
                            export.LOADER_FILE])
    manifest = json.loads((folder / export.MANIFEST).read_text())
    assert manifest["platforms"] == ["cpu", "cuda"] and manifest["strategy"] == "scan"
    assert manifest["versions"]["jax"] == jax.__version__
    inputs = manifest["inputs"]
    assert (inputs["maxlen"], inputs["padding"], inputs["pad_to_maxlen"]) == (12, "pre", False)
    exported = jax.export.deserialize((folder / export.MODELS["jax"]).read_bytes())
    assert [str(a.shape) for a in exported.in_avals] == ["(batch, time)", "(batch,)"]
    assert str(exported.out_avals[0].shape) == "(batch,)"
    assert json.loads((folder / export.VOCAB).read_text()) == json.loads(
        (workdir / "vocab.json").read_text())


@pytest.mark.skipif(not native.available()[0], reason="native kernels unavailable")
def test_cpu_native_custom_calls_cannot_be_exported(tmp_path):
    """Why the export lowers with "scan": jax.export refuses the kernels' custom calls."""
    from stackrnn_jax import init_params, stacked_rnn
    params = init_params(jax.random.PRNGKey(0), 3, [4])
    with pytest.raises(ValueError, match="custom call"):
        jax.export.export(jax.jit(lambda x: stacked_rnn(params, x, strategy="cpu_native")))(
            jax.ShapeDtypeStruct((2, 5, 3), np.float32))


def test_bad_export_arguments_are_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for argv, message in [
        (["export", "--workdir", str(tmp_path / "none"), "--out", str(tmp_path / "o")],
         "no trained run in"),
        (["export", "--workdir", str(make_run(tmp_path / "run")), "--out", str(blocker)],
         "is not a directory"),
    ]:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
