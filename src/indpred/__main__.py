"""``python -m indpred`` (what ``torchrun -m indpred`` runs)."""

import sys

from indpred.cli import main

sys.exit(main())
