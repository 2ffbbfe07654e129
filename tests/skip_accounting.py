"""Skip accounting (hooks re-exported by ``tests/conftest.py``).

Every run ends with the number of skipped tests and their reasons, each reason matched to the
prerequisite it names. With ``CI=true`` a skip whose prerequisite is present on this machine fails
the run: a test that skips because a broken product made its check look unavailable (a compiler
that is there, an installed ``snac``, a tmpfs that mounts) is a failure, not a skip.

A new kind of skip: add a :class:`Prerequisite` whose pattern matches the skip reason.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]


def _module(name: str) -> Callable[[], bool]:
    return lambda: importlib.util.find_spec(name) is not None


def _c_compiler() -> bool:
    from espnet_snac.model import kernels

    return kernels.compiler() is not None


def _tmpfs_mounts() -> bool:
    """Whether this process may mount a tmpfs (root with the mount capability, as the full-disk test needs)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    with tempfile.TemporaryDirectory() as d:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", d], capture_output=True).returncode:
            return False
        subprocess.run(["umount", "-l", d], capture_output=True)
    return True


def _demo_corpus() -> bool:
    return any((REPO / "local" / "demo_corpus" / "test").glob("*.flac"))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass(frozen=True)
class Prerequisite:
    name: str
    pattern: str  # regex searched in the skip reason
    present: Optional[Callable[[], bool]]  # None: skipped by design (never a CI failure)


PREREQUISITES: Tuple[Prerequisite, ...] = (
    Prerequisite("slow test (SNAC_SLOW_TESTS=1 runs it)", r"SNAC_SLOW_TESTS", None),
    Prerequisite("C compiler", r"no C compiler", _c_compiler),
    Prerequisite("official snac package", r"could not import 'snac'|\bsnac\b.*not installed", _module("snac")),
    Prerequisite("matplotlib", r"could not import 'matplotlib'", _module("matplotlib")),
    Prerequisite("onnxruntime", r"could not import 'onnxruntime'", _module("onnxruntime")),
    Prerequisite("onnx", r"could not import 'onnx'", _module("onnx")),
    Prerequisite("onnxscript", r"could not import 'onnxscript'", _module("onnxscript")),
    Prerequisite("visqol-python", r"could not import 'visqol'", _module("visqol")),
    Prerequisite("visqol-python[lattice]", r"ai-edge-litert", _module("ai_edge_litert")),
    Prerequisite("tmpfs mount rights", r"cannot mount", _tmpfs_mounts),
    Prerequisite("demo corpus", r"demo[ _]corpus", _demo_corpus),
    Prerequisite("CUDA device", r"CUDA|GPU", _cuda),
    Prerequisite("espeak-ng", r"espeak", lambda: shutil.which("espeak-ng") is not None),
    Prerequisite("flite", r"\bflite\b", lambda: shutil.which("flite") is not None),
    # platform properties the tests check independently before skipping (tests/test_kernels.py)
    Prerequisite("MKL vsSin as torch.sin", r"vsSin", None),
    Prerequisite("oneDNN rounding order", r"rounds in (another|neither)", None),
)


@functools.lru_cache(maxsize=None)
def _is_present(name: str) -> bool:
    prereq = next(p for p in PREREQUISITES if p.name == name)
    try:
        return bool(prereq.present())
    except Exception:  # a probe that cannot run means the prerequisite is not usable here
        return False


def classify(reason: str) -> Tuple[str, Optional[bool]]:
    """(prerequisite name, whether it is present here) for a skip reason; ("unaccounted", None) if
    no rule matches, (name, None) for skips by design."""
    for prereq in PREREQUISITES:
        if re.search(prereq.pattern, reason):
            return prereq.name, None if prereq.present is None else _is_present(prereq.name)
    return "unaccounted", None


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


_skips: List[Tuple[str, str]] = []  # (test id, reason)


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skips.append((report.nodeid, _reason(report)))


def _unjustified() -> List[Tuple[str, str, str]]:
    out = []
    for nodeid, reason in _skips:
        name, present = classify(reason)
        if present:
            out.append((nodeid, name, reason))
    return out


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if in_ci() and _unjustified() and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    tr = terminalreporter
    tr.section("skip accounting")
    if not _skips:
        tr.write_line("0 tests skipped")
        return
    groups: Dict[Tuple[str, str], int] = Counter()
    for _, reason in _skips:
        groups[(classify(reason)[0], reason)] += 1
    tr.write_line(f"{len(_skips)} tests skipped:")
    for (name, reason), n in sorted(groups.items(), key=lambda kv: (-kv[1], kv[0])):
        present = classify(reason)[1]
        state = {None: "", False: ": absent here", True: ": PRESENT here"}[present]
        tr.write_line(f"  {n:4d} x [{name}{state}] {reason}")
    bad = _unjustified()
    if bad:
        verdict = "fail the run (CI=true)" if in_ci() else "would fail the run with CI=true"
        tr.write_line(f"{len(bad)} skips whose prerequisite is present {verdict}:", red=True)
        for nodeid, name, reason in bad:
            tr.write_line(f"  {nodeid}: {name} is present, yet skipped: {reason}", red=True)
