"""Bridges to other libraries' models (loaded lazily: importing this package imports none).

* ``stackrnn_jax.interop.keras`` — import the weights of a Keras 3 stacked
  SimpleRNN / LSTM / GRU model (live, ``.keras`` or ``.weights.h5``) into our params.
"""
