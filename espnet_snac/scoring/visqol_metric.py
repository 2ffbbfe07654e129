"""ViSQOL (MOS-LQO, 1..5, higher is better) through ``visqol-python``, a pure-Python port of Google's
ViSQOL v3 that ships its models and runs offline (``pip install 'espnet-snac[visqol]'``).

Default: **audio mode at 48 kHz** (SVR model ``libsvm_nu_svr_model.txt``), the default of
``audiotools.metrics.quality.visqol``, the wrapper DAC's ``scripts/evaluate.py`` scores with (that
script reports both modes, ``visqol-audio-*`` and ``visqol-speech-*``: 16 kHz, the deep-lattice model).
Which mode the SNAC paper's ViSQOL is was not found in public sources (docs/cli.md, "Which ViSQOL the
papers report").
Speech mode is available with ``mode="speech"``; without the ``[lattice]`` extra of visqol-python
(``ai-edge-litert``) it falls back to a polynomial mapping that over-predicts MOS on degraded speech,
so this module uses speech mode only with the lattice model unless told otherwise.
Audio mode tops out at about 4.73 for identical signals (the SVR's ceiling), not 5.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
from functools import lru_cache
from typing import Dict, Tuple

import numpy as np

#: mode -> the rate both signals are resampled to (ViSQOL's own rates for its two modes)
MODE_RATES: Dict[str, int] = {"audio": 48000, "speech": 16000}
DEFAULT_MODE = "audio"
#: ViSQOL's alignment needs at least this much audio; shorter pairs get an error, not a score.
MIN_SECONDS = 0.5


from espnet_snac.scoring.metrics import MetricError


class VisqolError(MetricError):
    """ViSQOL cannot score this pair (package missing, too short, silent); the message says why."""


def _import_visqol():
    """``import visqol``, undoing the process-wide ``NUMBA_THREADING_LAYER`` it sets on import (numba
    reads it once; a library should not change the environment of the programs that use it)."""
    import os

    saved = os.environ.get("NUMBA_THREADING_LAYER")
    try:
        import visqol
    finally:
        if saved is None:
            os.environ.pop("NUMBA_THREADING_LAYER", None)
        else:
            os.environ["NUMBA_THREADING_LAYER"] = saved
    return visqol


@contextlib.contextmanager
def _keep_torch_threads():
    """Restore torch's intra-op thread count after ViSQOL: its numba code, under numba's OpenMP layer,
    sets the process-wide OpenMP thread count (the one torch reads) to every core."""
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def available() -> bool:
    """True when ``visqol-python`` is importable."""
    try:
        _import_visqol()
    except ImportError:
        return False
    return True


def lattice_available() -> bool:
    """True when speech mode can use Google's default deep-lattice model (``visqol-python[lattice]``)."""
    try:
        import ai_edge_litert  # noqa: F401
    except ImportError:
        return False
    return True


@lru_cache(maxsize=4)
def _api(mode: str, allow_polynomial: bool):
    """One configured ViSQOL per process and mode (creating it loads the model)."""
    try:
        VisqolApi = _import_visqol().VisqolApi
    except ImportError as exc:
        raise VisqolError("ViSQOL needs visqol-python: pip install 'espnet-snac[visqol]' "
                          "(or pip install visqol-python)") from exc
    if mode not in MODE_RATES:
        raise VisqolError(f"ViSQOL mode must be one of {sorted(MODE_RATES)}, got {mode!r}")
    api = VisqolApi()
    if mode == "speech":
        lattice = lattice_available()
        if not lattice and not allow_polynomial:
            raise VisqolError("ViSQOL speech mode without the lattice model over-predicts MOS by 1-2 points; "
                              "pip install 'visqol-python[lattice]', or use audio mode")
        api.create(mode="speech", use_lattice_model=lattice)
    else:
        api.create(mode="audio")
    return api


def visqol(ref: np.ndarray, hyp: np.ndarray, sample_rate: int, mode: str = DEFAULT_MODE,
           allow_polynomial: bool = False) -> float:
    """MOS-LQO of ``hyp`` against ``ref`` (mono, same rate and length), resampled to the mode's rate."""
    from espnet_snac.io.audio_io import resample

    ref = np.asarray(ref, dtype=np.float32).reshape(-1)
    hyp = np.asarray(hyp, dtype=np.float32).reshape(-1)
    if ref.size < MIN_SECONDS * sample_rate:
        raise VisqolError(f"ViSQOL: {ref.size / sample_rate:.2f} s is too short (needs {MIN_SECONDS} s)")
    if not np.any(ref):
        raise VisqolError("ViSQOL: the reference is silent")
    rate = MODE_RATES.get(mode)
    with _keep_torch_threads():
        api = _api(mode, allow_polynomial)
    if sample_rate != rate:
        ref, hyp = resample(ref, sample_rate, rate), resample(hyp, sample_rate, rate)
    quiet = logging.getLogger("visqol")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), _keep_torch_threads():
            result = api.measure_from_arrays(ref.astype(np.float64), hyp.astype(np.float64), rate)
    except (ValueError, RuntimeError, IndexError) as exc:
        raise VisqolError(f"ViSQOL: {type(exc).__name__}: {exc}") from exc
    finally:
        quiet.setLevel(level)
    score = float(result.moslqo)
    if not math.isfinite(score):
        raise VisqolError(f"ViSQOL: non-finite score {score}")
    return score


def describe(mode: str = DEFAULT_MODE) -> Tuple[str, str]:
    """``(short label, one-line description)`` of the setting, for reports."""
    rate = MODE_RATES[mode]
    model = "SVR (libsvm_nu_svr_model)" if mode == "audio" else (
        "deep lattice" if lattice_available() else "polynomial fallback")
    return f"ViSQOL {mode} {rate // 1000} kHz", f"visqol-python, {mode} mode at {rate} Hz, {model} mapping"
