"""``python -m tracespec.cli``: the same as the ``tracespec`` command."""

import sys

from tracespec.cli import main

sys.exit(main())
