"""``python -m skgradflow``: the command line (see :mod:`skgradflow.cli`)."""

from .cli import main

raise SystemExit(main())
