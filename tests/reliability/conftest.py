"""Fixtures of the fault-injection suite: a small saved SNAC model (the architecture of SNAC-24k
with narrow layers, so that encoding takes milliseconds) and an environment for subprocesses."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SMALL = dict(encoder_dim=8, decoder_dim=32)


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory) -> Path:
    """Official-format directory of a random SNAC-24k-layout model with narrow layers."""
    from espnet_snac.model import SNAC, SNAC_24KHZ

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("small_model") / "model"
    SNAC(**dict(SNAC_24KHZ, **SMALL)).eval().save_pretrained(path)
    return path


def subprocess_env() -> dict:
    """The current environment with this checkout first on the import path, one thread per process."""
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                OMP_NUM_THREADS="1")
