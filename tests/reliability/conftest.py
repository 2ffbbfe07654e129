"""Fixtures of the fault-injection suite."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fault_helpers import SMALL


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory) -> Path:
    """Official-format directory of a random SNAC-24k-layout model with narrow layers."""
    from espnet_snac.model.snac import SNAC, SNAC_24KHZ

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("small_model") / "model"
    SNAC(**dict(SNAC_24KHZ, **SMALL)).eval().save_pretrained(path)
    return path
