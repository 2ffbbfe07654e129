"""Per-utterance objective metrics for codec evaluation.

Every function takes two mono signals ``ref`` and ``hyp`` (1-D numpy arrays or tensors of equal length,
floats in [-1, 1]) and returns a Python float. ``ref`` is the reference (original), ``hyp`` the
reconstruction. Lower is better for the distances, higher is better for SI-SNR, PESQ and STOI.

- ``mel_distance``: DAC-style multi-scale log-mel L1 (7 scales, windows 32..2048, hop w/4,
  5..320 mel bands, L1 of log10(clamp(mel, 1e-5)), summed over scales). 0 for identical signals.
- ``stft_distance``: multi-resolution STFT distance (FFT 2048/1024/512, hop n/4): spectral convergence
  plus log-magnitude L1, averaged over resolutions. 0 for identical signals.
- ``si_snr``: scale-invariant SNR in dB (torchmetrics when installed, else the same closed formula).
- ``pesq_wb``: PESQ wideband (ITU-T P.862.2) via the ``pesq`` package at 16 kHz, range 1.04..4.64.
- ``stoi``: short-time objective intelligibility via ``pystoi`` at its native 10 kHz, range 0..1.

ViSQOL is optional (``visqol-python``, :mod:`espnet_snac.scoring.visqol_metric`): :func:`compute_all`
and :func:`mean_scores` add ``visqol`` when given a ViSQOL mode; ``espnet_snac.bin.score`` and
``local/make_results.py`` pass one when it is installed.
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from espnet_snac.io.audio_io import resample

Signal = Union[np.ndarray, torch.Tensor]

# DAC (descript-audio-codec) mel-loss scales.
MEL_WINDOWS: Sequence[int] = (32, 64, 128, 256, 512, 1024, 2048)
MEL_BANDS: Sequence[int] = (5, 10, 20, 40, 80, 160, 320)
MEL_CLAMP = 1e-5
STFT_FFT_SIZES: Sequence[int] = (2048, 1024, 512)
STFT_CLAMP = 1e-7

PESQ_RATE = 16000
STOI_RATE = 10000  # pystoi's internal rate: resampling here once (soxr) avoids its slower resampler

# Short utterances make pystoi fall back to a placeholder value; treat that as a failure instead.
_STOI_TOO_SHORT = "Not enough STFT frames"


class MetricError(ValueError):
    """A metric cannot be computed for this pair of signals (message says which and why)."""


def _as_tensor(x: Signal) -> torch.Tensor:
    """A CPU float32 tensor: the metrics' cached filterbanks live on the CPU, so a signal on a GPU
    (e.g. straight from the decoder) is brought over first, once."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to(device="cpu", dtype=torch.float32)
    t = torch.as_tensor(x, dtype=torch.float32)
    if t.dim() != 1:
        raise MetricError(f"expected a 1-D mono signal, got shape {tuple(t.shape)}")
    return t


def _as_numpy(x: Signal) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float32)
    if a.ndim != 1:
        raise MetricError(f"expected a 1-D mono signal, got shape {a.shape}")
    return a


def _check_pair(ref: torch.Tensor, hyp: torch.Tensor) -> None:
    if ref.shape != hyp.shape:
        raise MetricError(f"signals differ in length ({ref.numel()} vs {hyp.numel()}); trim them first")
    if ref.numel() == 0:
        raise MetricError("empty signal")


@functools.lru_cache(maxsize=16)
def _mel_loss(sample_rate: int):
    from espnet_snac.objective.losses import MultiScaleMelLoss

    with warnings.catch_warnings():
        # tiny windows at high rates leave some top mel bands empty; DAC accepts that too
        warnings.simplefilter("ignore", UserWarning)
        return MultiScaleMelLoss(sample_rate, MEL_WINDOWS, MEL_BANDS, clamp_eps=MEL_CLAMP)


@functools.lru_cache(maxsize=1)
def _stft_loss():
    from espnet_snac.objective.losses import MultiResolutionSTFTLoss

    return MultiResolutionSTFTLoss(STFT_FFT_SIZES, eps=STFT_CLAMP)


def _pad_for_window(x: torch.Tensor, n_fft: int) -> torch.Tensor:
    """Zero-pad so that reflect padding (n_fft // 2) is valid for very short signals."""
    need = n_fft // 2 + 1
    return torch.nn.functional.pad(x, (0, need - x.numel())) if x.numel() < need else x


@torch.no_grad()
def mel_distance(ref: Signal, hyp: Signal, sample_rate: int) -> float:
    """DAC-style multi-scale log-mel L1 distance: the unweighted training mel loss
    (:class:`espnet_snac.objective.losses.MultiScaleMelLoss`), sum over the 7 scales of the mean abs log10 error."""
    r, h = _as_tensor(ref), _as_tensor(hyp)
    _check_pair(r, h)
    n = max(MEL_WINDOWS)
    return float(_mel_loss(int(sample_rate))(_pad_for_window(h, n).view(1, 1, -1), _pad_for_window(r, n).view(1, 1, -1)))


@torch.no_grad()
def stft_distance(ref: Signal, hyp: Signal) -> float:
    """Multi-resolution STFT distance: mean over FFT sizes of (spectral convergence + log-magnitude L1),
    as :class:`espnet_snac.objective.losses.MultiResolutionSTFTLoss`.

    Spectral convergence = ||S_ref - S_hyp||_F / ||S_ref||_F on magnitudes; log-magnitude L1 = mean
    |log S_ref - log S_hyp| with magnitudes clamped at 1e-7. Hann windows, hop n_fft / 4.
    """
    r, h = _as_tensor(ref), _as_tensor(hyp)
    _check_pair(r, h)
    n = max(STFT_FFT_SIZES)
    sc, mag = _stft_loss()(_pad_for_window(h, n).view(1, 1, -1), _pad_for_window(r, n).view(1, 1, -1))
    return float(sc + mag)


def _si_snr_formula(ref: torch.Tensor, hyp: torch.Tensor, eps: float) -> float:
    """SI-SNR = 10 log10(|a r|^2 / |h - a r|^2) with zero-mean r, h and a = <h, r> / |r|^2."""
    r = ref.double() - ref.double().mean()
    h = hyp.double() - hyp.double().mean()
    target = (h @ r + eps) / (r @ r + eps) * r
    noise = h - target
    return float(10 * torch.log10((target @ target + eps) / (noise @ noise + eps)))


@torch.no_grad()
def si_snr(ref: Signal, hyp: Signal) -> float:
    """Scale-invariant signal-to-noise ratio in dB (identical signals give a large finite value)."""
    r, h = _as_tensor(ref), _as_tensor(hyp)
    _check_pair(r, h)
    if float(r.abs().max()) == 0.0:
        raise MetricError("SI-SNR undefined: reference is silent")
    try:
        from torchmetrics.functional.audio import scale_invariant_signal_noise_ratio
    except ImportError:
        return _si_snr_formula(r, h, eps=float(torch.finfo(torch.float64).eps))
    return float(scale_invariant_signal_noise_ratio(h.double(), r.double()))


def pesq_wb(ref: Signal, hyp: Signal, sample_rate: int) -> float:
    """PESQ wideband MOS-LQO at 16 kHz (signals resampled from ``sample_rate`` when needed)."""
    from pesq import PesqError, pesq

    r = resample(_as_numpy(ref), int(sample_rate), PESQ_RATE)
    h = resample(_as_numpy(hyp), int(sample_rate), PESQ_RATE)
    n = min(r.size, h.size)  # resampling may differ by a sample
    if n == 0:
        raise MetricError("PESQ: empty signal")
    try:
        return float(pesq(PESQ_RATE, r[:n].astype(np.float64), h[:n].astype(np.float64), "wb"))
    except PesqError as exc:  # e.g. no speech detected in the reference
        raise MetricError(f"PESQ failed: {type(exc).__name__}: {exc}") from exc


def stoi(ref: Signal, hyp: Signal, sample_rate: int, extended: bool = False) -> float:
    """STOI (or ESTOI with ``extended=True``) via pystoi, computed at 10 kHz."""
    from pystoi import stoi as _pystoi

    r = resample(_as_numpy(ref), int(sample_rate), STOI_RATE)
    h = resample(_as_numpy(hyp), int(sample_rate), STOI_RATE)
    n = min(r.size, h.size)
    if n == 0:
        raise MetricError("STOI: empty signal")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(_pystoi(r[:n].astype(np.float64), h[:n].astype(np.float64), STOI_RATE, extended=extended))
    for w in caught:
        if _STOI_TOO_SHORT in str(w.message):
            raise MetricError("STOI: too little active speech (needs about 0.4 s of non-silent audio)")
    return value


#: Metric names in report order, as used in results.json / utt_results.tsv.
METRIC_NAMES = ("mel_distance", "stft_distance", "si_snr", "pesq_wb", "stoi")

#: True where a larger value means better quality.
HIGHER_IS_BETTER: Dict[str, bool] = {
    "mel_distance": False,
    "stft_distance": False,
    "si_snr": True,
    "pesq_wb": True,
    "stoi": True,
    "visqol": True,  # optional (espnet_snac.scoring.visqol_metric): with a ViSQOL mode only
}

VISQOL = "visqol"


def metric_names(visqol_mode: Optional[str] = None) -> Tuple[str, ...]:
    """The metrics of a run: :data:`METRIC_NAMES`, plus ``visqol`` when a ViSQOL mode is given."""
    return METRIC_NAMES + ((VISQOL,) if visqol_mode else ())


def compute_all(ref: Signal, hyp: Signal, sample_rate: int, visqol_mode: Optional[str] = None) -> Dict[str, float]:
    """All metrics for one utterance; raises ``MetricError`` naming the metric that failed.
    ``visqol_mode`` (``"audio"``/``"speech"``) adds ViSQOL's MOS-LQO under ``visqol``."""
    funcs: Dict[str, Callable[[], float]] = {
        "mel_distance": lambda: mel_distance(ref, hyp, sample_rate),
        "stft_distance": lambda: stft_distance(ref, hyp),
        "si_snr": lambda: si_snr(ref, hyp),
        "pesq_wb": lambda: pesq_wb(ref, hyp, sample_rate),
        "stoi": lambda: stoi(ref, hyp, sample_rate),
    }
    out: Dict[str, float] = {}
    for name in METRIC_NAMES:
        try:
            value = funcs[name]()
        except MetricError as exc:
            raise MetricError(f"{name}: {exc}") from exc
        if not math.isfinite(value):
            raise MetricError(f"{name}: non-finite value {value}")
        out[name] = value
    if visqol_mode:
        from espnet_snac.scoring.visqol_metric import visqol  # its errors already say "ViSQOL: ..."

        out[VISQOL] = visqol(ref, hyp, sample_rate, mode=visqol_mode)
    return out


def mean_scores(pairs: Iterable[Tuple[str, Signal, Signal]], sample_rate: int,
                on_error: Optional[Callable[[str, MetricError], None]] = None,
                visqol_mode: Optional[str] = None) -> Dict[str, object]:
    """:func:`compute_all` over ``(utt, ref, hyp)`` pairs: ``{metric: mean (None if every pair
    failed), "num_utts": n, "num_failed": k}``; a pair whose metrics fail is counted (and passed to
    ``on_error``), not averaged. ``pairs`` may be a generator (one reconstruction in memory).
    ``visqol_mode`` adds ``visqol`` as in :func:`compute_all`."""
    names = metric_names(visqol_mode)
    values: Dict[str, list] = {name: [] for name in names}
    total = failed = 0
    for utt, ref, hyp in pairs:
        total += 1
        try:
            scores = compute_all(ref, hyp, sample_rate, visqol_mode)
        except MetricError as exc:
            failed += 1
            if on_error is not None:
                on_error(utt, exc)
            continue
        for name in names:
            values[name].append(scores[name])
    out: Dict[str, object] = {name: float(np.mean(v)) if v else None for name, v in values.items()}
    out.update(num_utts=total, num_failed=failed)
    return out
