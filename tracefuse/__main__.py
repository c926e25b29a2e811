"""``python -m tracefuse`` runs the command line (see tracefuse/cli.py)."""

import sys

from tracefuse.cli import main

sys.exit(main())
