"""Benchmarks of the stackrnn_jax execution strategies and of peer libraries.

Entry point: ``python -m bench.run`` (see ``bench/README.md``). The package is not
installed with ``stackrnn_jax``; run it from the repository root.
"""
