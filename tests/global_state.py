"""Test modules leave the process as they found it (hooks re-exported by ``tests/conftest.py``).

Around every test module (its tests and fixtures): the random generators of ``random``, NumPy and
torch are restored afterwards (tests seed them freely), and a change of torch's thread count, the
working directory or an environment variable is reported and undone, then fails the run at the
end: a module that changes them makes every later module depend on the order the suite runs in.
The unit is the module, not the test, so that a module-scoped fixture may set something for its
module's tests (``one_thread`` in ``tests/conftest.py``) as long as it restores it.
"""
from __future__ import annotations

import os
import random
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch

_changes: List[Tuple[str, str]] = []  # (test module, what changed)
# Set by libraries when a test first imports them (Intel OpenMP via ESPnet's dependencies, torch's
# inductor cache), not by the tests: a process-wide default that every later module would see anyway.
SET_BY_IMPORTS = frozenset({"KMP_DUPLICATE_LIB_OK", "KMP_INIT_AT_FORK", "TORCHINDUCTOR_CACHE_DIR"})


def _snapshot() -> Dict[str, object]:
    return {"threads": torch.get_num_threads(), "cwd": os.getcwd(), "env": dict(os.environ)}


def _differences(before: Dict[str, object], after: Dict[str, object]) -> List[str]:
    out = []
    if before["threads"] != after["threads"]:
        out.append(f"torch threads {before['threads']} -> {after['threads']}")
    if before["cwd"] != after["cwd"]:
        out.append(f"working directory {before['cwd']} -> {after['cwd']}")
    env0, env1 = before["env"], after["env"]
    for key in sorted(set(env0) | set(env1)):
        if env0.get(key) != env1.get(key) and not (key in SET_BY_IMPORTS and key not in env0):
            out.append(f"${key} {env0.get(key)!r} -> {env1.get(key)!r}")
    return out


def _restore(before: Dict[str, object]) -> None:
    torch.set_num_threads(before["threads"])
    os.chdir(before["cwd"])
    kept = {k: v for k, v in os.environ.items() if k in SET_BY_IMPORTS and k not in before["env"]}
    os.environ.clear()
    os.environ.update(before["env"], **kept)


_open: Dict[str, tuple] = {}  # module -> (state, generator states) when its first test started


def _module(item: pytest.Item) -> str:
    return item.nodeid.split("::")[0]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    module = _module(item)
    if module not in _open:
        _open[module] = (_snapshot(), (random.getstate(), np.random.get_state(), torch.get_rng_state()))
    yield
    if nextitem is not None and _module(nextitem) == module:
        return
    before, rng = _open.pop(module)
    random.setstate(rng[0])
    np.random.set_state(rng[1])
    torch.set_rng_state(rng[2])
    changed = _differences(before, _snapshot())
    if changed:
        _changes.extend((module, c) for c in changed)
        _restore(before)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _changes and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _changes:
        terminalreporter.section("global state changed by test modules (restored; the run fails)", red=True)
        for module, change in _changes:
            terminalreporter.write_line(f"{module}: {change}", red=True)
