"""``python -m stackrnn_jax``: the ``stackrnn`` command."""

from stackrnn_jax.cli import main

raise SystemExit(main())
