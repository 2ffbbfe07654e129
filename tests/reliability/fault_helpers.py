"""Shared by the fault-injection tests: paths, the small model layout, the subprocess environment."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: SNAC-24k layout with narrow layers: encoding takes milliseconds.
SMALL = dict(encoder_dim=8, decoder_dim=32)


def subprocess_env() -> dict:
    """The current environment with this checkout first on the import path, one thread per process."""
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                OMP_NUM_THREADS="1")
