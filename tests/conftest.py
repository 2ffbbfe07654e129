"""Shared fixtures: real speech from the committed demo corpus. Helpers that test modules import
live in ordinary modules (``speech_samples``, ``tiny_training``), never here: a conftest is not
importable as a module when pytest runs from the repository root."""
from __future__ import annotations

from typing import Iterator, List

import numpy as np
import pytest
import torch

import global_state
import skip_accounting
from speech_samples import load_speech


@pytest.fixture(scope="session")
def speech24k() -> List[np.ndarray]:
    return load_speech(24000)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """torch at one intra-op thread for a module's tests, restored after the module."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# the run-level checks of both helper modules (a conftest's hooks must be its own attributes)
pytest_runtest_logreport = skip_accounting.pytest_runtest_logreport
pytest_runtest_protocol = global_state.pytest_runtest_protocol


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    skip_accounting.pytest_sessionfinish(session, exitstatus)
    global_state.pytest_sessionfinish(session, exitstatus)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    skip_accounting.pytest_terminal_summary(terminalreporter, exitstatus, config)
    global_state.pytest_terminal_summary(terminalreporter, exitstatus, config)
