"""Peer implementations of the same model, loaded with our weights, checked, and timed.

* Keras 3 on the JAX backend: ``Embedding -> SimpleRNN/LSTM/GRU x L -> Dense(1)``; the
  forward pass is ``predict_on_batch`` (Keras' jitted predict function), the train step
  is ``train_on_batch`` (Adam, binary cross-entropy from logits).
* The same Keras model on the TensorFlow backend (``keras_tf``), compiled with Keras'
  default ``jit_compile="auto"``. Keras fixes its backend when it is first imported, so
  this peer runs in a process started with ``KERAS_BACKEND=tensorflow`` (and TensorFlow
  installed: ``make venv-tf``), where the JAX-backend peer cannot run.
* Flax linen: ``nn.Embed -> nn.RNN(nn.SimpleCell | nn.LSTMCell | nn.GRUCell) x L ->
  nn.Dense(1)``, jitted forward and an optax Adam train step.
* PyTorch: ``nn.Embedding -> nn.RNN / nn.LSTM / nn.GRU(num_layers=L, batch_first=True)
  -> nn.Linear(1)`` with ``torch.optim.Adam``; on CUDA when the JAX device is a GPU
  and torch sees one (cuDNN), else CPU.

Each is optional: ``available(name)`` says whether its library imports. The weight
converters are used by ``tests/test_peers_parity.py`` as well.
"""

from __future__ import annotations

import importlib.util
import os
import time

import numpy as np

from bench.entries import Entry, failed, new_entry

PEERS = ("keras", "keras_tf", "flax_linen", "torch")
_MODULE = {"keras": "keras", "keras_tf": "tensorflow", "flax_linen": "flax.linen",
           "torch": "torch"}
# The Keras backend each Keras peer needs in its process.
KERAS_BACKENDS = {"keras": "jax", "keras_tf": "tensorflow"}


def available(name: str) -> tuple[bool, str]:
    """``(ok, note)``: whether peer ``name`` can run here."""
    module = _MODULE[name]
    top = module.split(".")[0]
    if importlib.util.find_spec(top) is None:
        return False, f"{top} not installed (pip install {top}); skipped"
    if name in KERAS_BACKENDS:
        if importlib.util.find_spec("keras") is None:
            return False, "keras not installed (pip install keras); skipped"
        backend, wanted = os.environ.get("KERAS_BACKEND", "jax"), KERAS_BACKENDS[name]
        if backend != wanted:
            return False, (f"KERAS_BACKEND={backend}; the {name} peer runs in a process "
                           f"started with KERAS_BACKEND={wanted}; skipped")
    return True, ""


def _np(params):
    import jax
    return jax.tree.map(np.asarray, params)


def jax_tree_copy(params):
    """Writable NumPy copies of every array (torch.from_numpy wants writable memory)."""
    import jax
    return jax.tree.map(lambda a: np.array(a, copy=True), params)


def _gru_reset_after(layer) -> bool:
    return np.ndim(layer["bias"]) == 2


# ----------------------------------------------------------------------------- Keras

def keras_model(w, params, *, learning_rate: float = 1e-3, jit_compile: bool | str = True):
    """A compiled ``keras.Sequential`` computing our model, with our weights copied in."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    p = _np(params)
    rnn_cls = {"simple": keras.layers.SimpleRNN, "lstm": keras.layers.LSTM,
               "gru": keras.layers.GRU}[w.cell]
    layers = [keras.Input((w.T,), dtype="int32", batch_size=w.B),
              keras.layers.Embedding(w.vocab, w.E)]
    for i, layer in enumerate(p["rnn"]):
        kwargs = {"return_sequences": i < w.L - 1}
        if w.cell == "gru":
            kwargs["reset_after"] = _gru_reset_after(layer)
        layers.append(rnn_cls(w.H, **kwargs))
    layers.append(keras.layers.Dense(1))
    model = keras.Sequential(layers)
    model.layers[0].set_weights([p["embedding"]])
    for keras_layer, layer in zip(model.layers[1:-1], p["rnn"]):
        keras_layer.set_weights([layer["kernel"], layer["recurrent_kernel"], layer["bias"]])
    model.layers[-1].set_weights([p["dense_kernel"], p["dense_bias"]])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True),
                  jit_compile=jit_compile)
    return model


class KerasPeer:
    name = "keras"
    compile_method = "first call minus steady-state median (Keras traces and compiles inside)"
    jit_compile: bool | str = True  # the JAX backend always compiles

    def __init__(self, w, params, device, opts=None):
        import keras
        self.version = keras.__version__
        self.model = keras_model(w, params, jit_compile=self.jit_compile)

    def forward(self, ids):
        return np.asarray(self.model.predict_on_batch(ids))[:, 0]

    def train_step(self, ids, labels):
        return self.model.train_on_batch(ids, labels)

    def sync(self, out):
        return out  # both calls return host NumPy values

    def memory(self):
        return {"source": None, "note": "Keras does not expose its compiled executables"}


class KerasTensorFlowPeer(KerasPeer):
    name = "keras_tf"
    jit_compile = "auto"  # what model.compile() does unless told: XLA where the model allows

    def __init__(self, w, params, device, opts=None):
        super().__init__(w, params, device, opts)
        import tensorflow as tf
        self.version = f"{self.version} (TensorFlow {tf.__version__})"

    def note(self) -> str:
        """What Keras made of ``jit_compile="auto"``: XLA or not."""
        return f"Keras on TensorFlow, jit_compile resolved to {self.model.jit_compile}"


# ----------------------------------------------------------------------------- Flax linen

def flax_model(w):
    """A flax.linen module computing our model (cells named ``cell_{i}``)."""
    import flax.linen as nn

    cell_cls = {"simple": nn.SimpleCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}[w.cell]

    class Model(nn.Module):
        @nn.compact
        def __call__(self, ids):
            x = nn.Embed(w.vocab, w.E, name="embed")(ids)
            for i in range(w.L):
                x = nn.RNN(cell_cls(w.H, name=f"cell_{i}"), name=f"rnn_{i}")(x)
            return nn.Dense(1, name="head")(x[:, -1])[:, 0]

    return Model()


def flax_variables(w, params) -> dict:
    """Our params in flax.linen layout (``{'params': ...}``) for ``flax_model(w)``."""
    p = _np(params)
    tree = {"embed": {"embedding": p["embedding"]},
            "head": {"kernel": p["dense_kernel"], "bias": p["dense_bias"]}}
    for i, layer in enumerate(p["rnn"]):
        k, r, b = layer["kernel"], layer["recurrent_kernel"], layer["bias"]
        if w.cell == "simple":
            cell = {"i": {"kernel": k, "bias": b}, "h": {"kernel": r}}
        elif w.cell == "lstm":  # Keras gate order i, f, c(g), o; flax puts the bias on h
            ks, rs, bs = (np.split(a, 4, axis=-1) for a in (k, r, b))
            cell = {}
            for j, g in enumerate("ifgo"):
                cell["i" + g] = {"kernel": ks[j]}
                cell["h" + g] = {"kernel": rs[j], "bias": bs[j]}
        else:  # gru, Keras gate order z, r, h
            if not _gru_reset_after(layer):
                raise ValueError("flax.linen GRUCell is a reset_after GRU; "
                                 "reset_after=False has no equivalent")
            ks, rs = np.split(k, 3, axis=-1), np.split(r, 3, axis=-1)
            b_in, b_rec = np.split(b[0], 3), np.split(b[1], 3)
            cell = {"iz": {"kernel": ks[0], "bias": b_in[0] + b_rec[0]},
                    "ir": {"kernel": ks[1], "bias": b_in[1] + b_rec[1]},
                    "in": {"kernel": ks[2], "bias": b_in[2]},
                    "hz": {"kernel": rs[0]}, "hr": {"kernel": rs[1]},
                    "hn": {"kernel": rs[2], "bias": b_rec[2]}}
        tree[f"cell_{i}"] = cell  # nn.RNN adds no scope of its own
    return {"params": tree}


class FlaxPeer:
    name = "flax_linen"
    compile_method = "jit.lower().compile()"

    def __init__(self, w, params, device, opts=None, *, learning_rate: float = 1e-3):
        import flax
        import jax
        import optax

        from bench.timing import lower_and_compile

        self.version = flax.__version__
        self.device = device
        model = flax_model(w)
        variables = jax.device_put(flax_variables(w, params), device)
        tx = optax.adam(learning_rate)

        def forward(variables, ids):
            return model.apply(variables, ids)

        def train_step(variables, opt_state, ids, labels):
            def loss_fn(v):
                return optax.sigmoid_binary_cross_entropy(model.apply(v, ids), labels).mean()
            loss, grads = jax.value_and_grad(loss_fn)(variables)
            updates, opt_state = tx.update(grads, opt_state, variables)
            return optax.apply_updates(variables, updates), opt_state, loss

        self.state = {"v": variables, "o": jax.device_put(tx.init(variables), device)}
        self._forward_jit, self._train_jit = jax.jit(forward), jax.jit(train_step)
        self._compiled = {}
        self._lower_and_compile = lower_and_compile

    def compile(self, which, ids, labels=None):
        """Compile the forward or train function ahead of time; returns the timing info."""
        if which == "forward":
            compiled, info = self._lower_and_compile(self._forward_jit, self.state["v"], ids)
        else:
            compiled, info = self._lower_and_compile(self._train_jit, self.state["v"],
                                                     self.state["o"], ids, labels)
        self._compiled[which] = compiled
        return info

    def forward(self, ids):
        f = self._compiled.get("forward", self._forward_jit)
        return f(self.state["v"], ids)

    def train_step(self, ids, labels):
        f = self._compiled.get("train", self._train_jit)
        self.state["v"], self.state["o"], loss = f(self.state["v"], self.state["o"], ids, labels)
        return loss

    def sync(self, out):
        import jax
        return jax.block_until_ready(out)

    def memory(self, which):
        from bench.timing import memory_info
        return memory_info(self._compiled.get(which), self.device)


# ----------------------------------------------------------------------------- PyTorch

def torch_device(jax_device) -> str:
    """``"cuda"`` when the JAX device is a GPU and torch sees one, else ``"cpu"``."""
    import torch
    if jax_device.platform != "cpu" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def _gru_torch_order(a, axis):
    """Keras GRU gates (z, r, h) -> PyTorch (r, z, n)."""
    z, r, h = np.split(a, 3, axis=axis)
    return np.concatenate([r, z, h], axis=axis)


def torch_model(w, params, device: str = "cpu"):
    """A ``torch.nn.Module`` computing our model, with our weights copied in."""
    import torch
    from torch import nn

    p = jax_tree_copy(params)
    rnn_cls = {"simple": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[w.cell]

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(w.vocab, w.E)
            self.rnn = rnn_cls(w.E, w.H, num_layers=w.L, batch_first=True)
            self.head = nn.Linear(w.H, 1)

        def forward(self, ids):
            _, h = self.rnn(self.embed(ids))
            if isinstance(h, tuple):  # LSTM: (h_n, c_n)
                h = h[0]
            return self.head(h[-1])[:, 0]

    model = Model()
    with torch.no_grad():
        model.embed.weight.copy_(torch.from_numpy(p["embedding"]))
        for i, layer in enumerate(p["rnn"]):
            k, r, b = layer["kernel"], layer["recurrent_kernel"], layer["bias"]
            if w.cell == "gru":
                if not _gru_reset_after(layer):
                    raise ValueError("torch.nn.GRU is a reset_after GRU; "
                                     "reset_after=False has no equivalent")
                k, r = _gru_torch_order(k, -1), _gru_torch_order(r, -1)
                b_ih, b_hh = _gru_torch_order(b[0], -1), _gru_torch_order(b[1], -1)
            else:  # SimpleRNN, and LSTM (gate order i, f, g, o in both)
                b_ih, b_hh = b, np.zeros_like(b)
            for name, value in (("weight_ih", k.T), ("weight_hh", r.T), ("bias_ih", b_ih),
                                ("bias_hh", b_hh)):
                getattr(model.rnn, f"{name}_l{i}").copy_(
                    torch.from_numpy(np.ascontiguousarray(value)))
        model.head.weight.copy_(torch.from_numpy(np.ascontiguousarray(p["dense_kernel"].T)))
        model.head.bias.copy_(torch.from_numpy(p["dense_bias"]))
    return model.to(device)


class TorchPeer:
    name = "torch"
    compile_method = "none (eager); first call minus steady-state median"

    def __init__(self, w, params, device, opts=None, *, learning_rate: float = 1e-3):
        import torch

        self.torch = torch
        threads = getattr(opts, "torch_threads", 0) if opts is not None else 0
        if threads:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        self.version = torch.__version__
        self.dev = torch_device(device)
        self.model = torch_model(w, params, self.dev)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=learning_rate)
        self.loss = torch.nn.BCEWithLogitsLoss()
        self._cache = {}

    def _tensor(self, a, dtype):
        key = (id(a), dtype)
        if key not in self._cache:  # move each input to the device once, not per call
            self._cache[key] = (a, self.torch.as_tensor(np.asarray(a), dtype=dtype).to(self.dev))
        return self._cache[key][1]

    def forward(self, ids):
        with self.torch.no_grad():  # not inference_mode: the cached input is reused for training
            return self.model(self._tensor(ids, self.torch.long))

    def train_step(self, ids, labels):
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(self.model(self._tensor(ids, self.torch.long)),
                         self._tensor(labels, self.torch.float32))
        loss.backward()
        self.opt.step()
        return loss

    def sync(self, out):
        if self.dev == "cuda":
            self.torch.cuda.synchronize()
        return out

    def reset_memory(self):
        if self.dev == "cuda":
            self.torch.cuda.reset_peak_memory_stats()

    def memory(self):
        if self.dev == "cuda":
            return {"source": "torch.cuda.max_memory_allocated()",
                    "device_peak_bytes": int(self.torch.cuda.max_memory_allocated())}
        return {"source": None, "note": "no memory figure for PyTorch on CPU"}


PEER_CLASSES = {"keras": KerasPeer, "keras_tf": KerasTensorFlowPeer, "flax_linen": FlaxPeer,
                "torch": TorchPeer}


def run_peer(name: str, w, device, opts, ours_logits) -> Entry:
    """Build peer ``name`` with our weights, check its output against ours, time it."""
    entry = new_entry("peer", name, name, w)
    ok, note = available(name)
    if not ok:
        entry.update(status="skipped", note=note)
        return entry
    try:
        _run_peer(name, w, device, opts, ours_logits, entry)
    except Exception as exc:  # noqa: BLE001 - report, don't abort the suite
        failed(entry, exc)
    return entry


def _run_peer(name, w, device, opts, ours_logits, entry):
    import jax

    from bench.timing import flops_fields, time_steady
    from bench.workloads import init_model, make_batch

    params = init_model(w)
    ids, labels = make_batch(w)
    peer = PEER_CLASSES[name](w, params, device, opts)
    entry["version"] = peer.version
    if name == "flax_linen":
        ids_in, labels_in = jax.device_put(ids, device), jax.device_put(labels, device)
    else:
        ids_in, labels_in = ids, labels
    timing = {"warmup": opts.warmup, "repeats": opts.repeats, "min_repeats": opts.min_repeats,
                  "budget_s": opts.budget_s}
    for which in ("forward",) if getattr(opts, "forward_only", False) else ("forward", "train"):
        if hasattr(peer, "reset_memory"):
            peer.reset_memory()  # per part, so the train figure is the train step's peak
        info = {}
        if name == "flax_linen":
            info = peer.compile(which, ids_in, labels_in)
        call = ((lambda: peer.forward(ids_in)) if which == "forward"
                else (lambda: peer.train_step(ids_in, labels_in)))
        t0 = time.perf_counter()
        first = peer.sync(call())
        info["first_call_s"] = time.perf_counter() - t0
        if which == "forward":
            logits = np.asarray(first.cpu() if hasattr(first, "cpu") else first)
            diff = float(np.max(np.abs(logits - ours_logits)))
            tol = 1e-4 if device.platform == "cpu" else 1e-2
            entry["check"] = {"reference": "stackrnn_jax scan", "forward_max_abs_diff": diff,
                              "tolerance": tol, "passed": bool(diff <= tol)}
            if not entry["check"]["passed"]:
                entry["note"] = "CHECK FAILED: output differs from ours beyond tolerance"
        stats = time_steady(call, peer.sync, **timing)
        if name != "flax_linen":
            info["compile_s"] = max(0.0, info["first_call_s"] - stats["median_s"])
            info["compile_method"] = peer.compile_method
        memory = peer.memory(which) if name == "flax_linen" else peer.memory()
        flops = w.forward_flops() if which == "forward" else w.train_flops()
        entry[which] = {**info, **stats, **memory, **flops_fields(flops, stats["median_s"], device)}
    if name == "torch":
        entry["note"] = ((entry["note"] + "; " if entry["note"] else "")
                         + f"torch device {peer.dev}, {peer.threads} threads")
    if name == "keras_tf":
        entry["note"] = (entry["note"] + "; " if entry["note"] else "") + peer.note()
