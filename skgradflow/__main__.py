"""``python -m skgradflow``: the command line (see :mod:`skgradflow.cli`)."""

import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while the command line's modules load
    print("skgradflow: interrupted", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
