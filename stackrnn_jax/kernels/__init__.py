"""Pallas kernels that run a whole layer's time loop in one launch (strategy ``"pallas"``).

* ``gate_steps``: one timestep of each cell, forward and backward, written gate by gate
  on ``(rows, units)`` tiles (the code inside the kernels);
* ``recurrence``: the ``pallas_call`` s — the forward and the reverse-time kernel over
  row blocks of the batch — and the padded layout they read.

The strategy that calls them (custom VJP, weight gradients) is ``strategies/pallas.py``.
"""
