"""``stackrnn export``: a trained classifier that runs without this project.

The export folder::

    model.jax       a serialized ``jax.export.Exported`` (StableHLO and its calling
                    convention): ``ids (batch, time) int32, lengths (batch,) int32 ->
                    P(positive) (batch,) float32``, with ``batch`` and ``time`` symbolic,
                    lowered for the CPU and CUDA, the weights inside as constants
    vocab.json      the run's vocabulary (word ``i`` of ``words`` has id ``i + 3``)
    manifest.json   versions, the model, and the input contract: tokenizer patterns, id
                    layout, ``maxlen``, padding and truncating sides
    predict.py      the stand-alone loader (``LOADER``): jax and numpy only

With ``--format onnx`` (the ``onnx`` extra: jax2onnx, onnxruntime) the model is
``model.onnx`` instead (opset ``ONNX_OPSET``, inputs named ``ids`` and ``lengths``, dims
``batch`` and ``time`` dynamic), converted by jax2onnx from the same function; the
loader then runs it with onnxruntime (and numpy) instead of jax.

The program is lowered with the plain ``"scan"`` strategy whatever the run trained with:
``"cpu_native"``'s kernels are XLA FFI custom calls into a library compiled on the
exporting machine, which a serialized program cannot carry (``jax.export`` refuses
custom calls without a compatibility guarantee), and ``scan`` is plain StableHLO on every
platform. Every strategy computes the same numbers, so the export reproduces
``stackrnn predict`` to float32 rounding.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from stackrnn_jax import run_dir
from stackrnn_jax.data import tokenizer

PORTABLE_STRATEGY = "scan"
PLATFORMS = ("cpu", "cuda")
MODELS = {"jax": "model.jax", "onnx": "model.onnx"}
VOCAB, MANIFEST, LOADER_FILE = "vocab.json", "manifest.json", "predict.py"
ONNX_OPSET = 23
FORMAT, FORMAT_VERSION = "stackrnn_jax.export", 1

# The loader shipped beside the model (and shown in the README). It repeats the tokenizer
# and Vocabulary.encode from the manifest's patterns and ids, so it needs no stackrnn_jax.
LOADER = '''\
"""P(positive) of reviews with a `stackrnn export` folder; needs only jax (or, for
model.onnx, onnxruntime) and numpy.
Usage: python predict.py EXPORT_DIR "review one" "review two" ..."""
import json, re, sys
import numpy as np

def load(folder):
    """A function: list of review texts -> P(positive) (len(texts),) float32."""
    manifest = json.load(open(f"{folder}/manifest.json"))
    spec, model_file = manifest["inputs"], f"{folder}/{manifest['model_file']}"
    words = json.load(open(f"{folder}/vocab.json", encoding="utf-8"))["words"]
    ids = {word: spec["first_word_id"] + i for i, word in enumerate(words)}
    if manifest["model_format"] == "onnx":
        import onnxruntime
        session = onnxruntime.InferenceSession(model_file)
        call = lambda i, n: session.run(None, {"ids": i, "lengths": n})[0]
    else:
        from jax import export
        call = export.deserialize(open(model_file, "rb").read()).call
    def encode(text):  # [start, word ids (oov for unknown)], cut to maxlen on the truncating side
        text = re.sub(spec["line_break_pattern"], " ", text.lower())
        words = re.findall(spec["word_pattern"], text)
        row = [spec["start_id"]] + [ids.get(word, spec["oov_id"]) for word in words]
        return row[-spec["maxlen"]:] if spec["truncating"] == "pre" else row[:spec["maxlen"]]
    def predict(texts):
        rows = [encode(text) for text in texts]
        time = spec["maxlen"] if spec["pad_to_maxlen"] else max(map(len, rows))
        pads = [[spec["pad_id"]] * (time - len(row)) for row in rows]
        padded = [p + r if spec["padding"] == "pre" else r + p for p, r in zip(pads, rows)]
        lengths = np.array([len(row) for row in rows], np.int32)
        return np.asarray(call(np.array(padded, np.int32), lengths))
    return predict

if __name__ == "__main__":
    for text, p in zip(sys.argv[2:], load(sys.argv[1])(sys.argv[2:])):
        print(f"{p:.6f}\\t{text}")
'''


def export_run(workdir: str | Path, out: str | Path, model_format: str = "jax") -> Path:
    """Write the best epoch of the run in ``workdir`` to the folder ``out`` (see the module
    docstring) as ``model_format`` ("jax" or "onnx"); returns ``out``.
    ``run_dir.RunError`` if the run is missing or broken."""
    from stackrnn_jax.predict import load_run

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory; choose a folder")
    if model_format not in MODELS:
        raise ValueError(f"format: expected one of {list(MODELS)}, got {model_format!r}")
    run = load_run(workdir)
    probabilities = portable_probabilities(run)
    if model_format == "onnx":
        model, versions, platforms = _onnx_bytes(probabilities), _onnx_versions(), ["onnx"]
    else:
        exported = _jax_export(probabilities)
        model = bytes(exported.serialize())
        versions = {"calling_convention": exported.calling_convention_version}
        platforms = list(exported.platforms)
    run_dir.write_bytes(out / MODELS[model_format], model)
    run.vocab.save(out / VOCAB)
    run_dir.write_json(out / MANIFEST, manifest(run, model_format, versions, platforms))
    run_dir.write_text(out / LOADER_FILE, LOADER)
    return out


def portable_probabilities(run):
    """``probabilities(ids (B, T) int32, lengths (B,) int32) -> (B,) float32``: P(positive)
    of ``run``'s model (``predict.Run``), computed with ``PORTABLE_STRATEGY``."""
    from stackrnn_jax.train import create_model, model_logits

    config = dataclasses.replace(run.config, strategy=PORTABLE_STRATEGY)
    model = create_model(config)
    nnx.update(model, nnx.state(run.model, nnx.Param))
    model.eval()
    graphdef, state = nnx.split(model)

    def probabilities(ids, lengths):
        model = nnx.merge(graphdef, state)  # the weights enter the program as constants
        return jax.nn.sigmoid(model_logits(model, {"ids": ids, "lengths": lengths}, config))

    return probabilities


def _input_specs():
    batch, time = jax.export.symbolic_shape("batch, time")
    return (jax.ShapeDtypeStruct((batch, time), jnp.int32),
            jax.ShapeDtypeStruct((batch,), jnp.int32))


def _jax_export(probabilities) -> jax.export.Exported:
    return jax.export.export(jax.jit(probabilities), platforms=PLATFORMS)(*_input_specs())


def _onnx_bytes(probabilities) -> bytes:
    try:
        from jax2onnx import to_onnx
    except ImportError as error:
        raise ValueError("--format onnx needs jax2onnx: pip install "
                         "'stackrnn-jax[onnx]'") from error
    return to_onnx(probabilities, _input_specs(), opset=ONNX_OPSET, model_name="stackrnn",
                   input_names=["ids", "lengths"], output_names=["probabilities"]
                   ).SerializeToString()


def _onnx_versions() -> dict:
    from importlib.metadata import version
    return {"jax2onnx": version("jax2onnx"), "onnx_opset": ONNX_OPSET}


def manifest(run, model_format: str, versions: dict, platforms: list[str]) -> dict:
    """What a user of the folder needs to know: versions, the model and the input contract."""
    import jaxlib

    from stackrnn_jax import __version__

    config = run.config
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model_file": MODELS[model_format], "model_format": model_format,
        "versions": {"stackrnn_jax": __version__, "jax": jax.__version__,
                     "jaxlib": jaxlib.__version__, "tokenizer": tokenizer.TOKENIZER_VERSION,
                     **versions},
        "platforms": platforms, "strategy": PORTABLE_STRATEGY,
        "model": {name: getattr(config, name) for name in
                  ("cell", "layers", "units", "bidirectional", "embed_dim", "num_words", "dtype")},
        "best_epoch": {k: v for k, v in run.best.items() if k != "checkpoint"},
        "inputs": {
            "ids": "int32 (batch, time): one row per review, padded with pad_id",
            "lengths": "int32 (batch,): the non-padding ids of each row",
            "lowercase": True, "line_break_pattern": tokenizer.LINE_BREAK_PATTERN,
            "word_pattern": tokenizer.WORD_PATTERN,
            "pad_id": tokenizer.PAD_ID, "start_id": tokenizer.START_ID,
            "oov_id": tokenizer.OOV_ID, "first_word_id": tokenizer.FIRST_WORD_ID,
            "maxlen": config.maxlen, "padding": config.padding,
            "truncating": config.truncating,
            # Without masking the model reads the padding too: pad every row to maxlen, as
            # training did, or the probabilities change.
            "pad_to_maxlen": not config.mask,
        },
        "output": "float32 (batch,): P(positive) of each review",
    }

