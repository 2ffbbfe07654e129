"""Shared fixtures: real speech from the committed demo corpus and small saved models."""
from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "local" / "demo_corpus"
CONF = REPO / "conf"


def load_speech(sample_rate: int, n: int = 3, split: str = "test") -> List[np.ndarray]:
    """``n`` utterances of real speech (mixed lengths) from the demo corpus at ``sample_rate``."""
    from espnet_snac.audio_io import load_mono

    files = sorted((DEMO / split).glob("*.flac"))
    if len(files) < n:
        pytest.skip(f"demo corpus {DEMO / split} has fewer than {n} files")
    return [load_mono(f, sample_rate)[0] for f in files[:n]]


@pytest.fixture(scope="session")
def speech24k() -> List[np.ndarray]:
    return load_speech(24000)
