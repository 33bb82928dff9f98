"""``python -m medkit``: see :mod:`medkit.cli`."""

import sys

from .cli import main

sys.exit(main())
