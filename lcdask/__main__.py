"""``python -m lcdask`` runs the command line."""

import sys

from lcdask.cli import main

sys.exit(main())
