"""Where indpred looks for data that lives outside the package."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    """The shared real-data folder: ``$INDPRED_TEST_DATA`` or ``../shared/data`` beside the repo."""
    env = os.environ.get("INDPRED_TEST_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"
