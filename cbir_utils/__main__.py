"""``python -m cbir_utils``: the command line (see :mod:`cbir_utils.cli`)."""

import sys

from cbir_utils.cli import main

sys.exit(main())
