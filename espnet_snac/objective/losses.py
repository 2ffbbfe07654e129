"""Spectral reconstruction losses used to train SNAC (DAC recipe).

Adversarial and feature-matching losses come from ESPnet (``espnet2.gan_tts.hifigan.loss``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torchaudio.functional as AF
from torch import nn


def fp32(x: torch.Tensor):
    """Autocast off on ``x``'s device: in bf16 the mel filterbank matmul, ``log10`` of values near the
    1e-5 clamp and the norms lose most of their precision (bf16 keeps 8 bits of mantissa), and
    ``torch.stft`` has no bf16 kernel."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _magnitude(x: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor) -> torch.Tensor:
    """``(B, 1, T)`` or ``(B, T)`` -> ``(B, n_fft//2+1, frames)`` STFT magnitude (centred, reflect pad)."""
    x = x.reshape(-1, x.shape[-1])
    return torch.stft(x, n_fft, hop_length=hop, win_length=n_fft, window=window, center=True,
                      pad_mode="reflect", return_complex=True).abs()


class MultiScaleMelLoss(nn.Module):
    """DAC's mel loss: sum over scales of ``L1(log10(clamp(mel)))`` (+ optional linear-mel L1).

    Defaults: windows 32..2048 with hop ``w/4`` and 5..320 mel bands (slaney filters, magnitude
    spectrogram), clamp 1e-5. ``log_weight``/``mag_weight`` weight the log and linear terms.
    """

    def __init__(
        self,
        sampling_rate: int = 24000,
        window_lengths: Sequence[int] = (32, 64, 128, 256, 512, 1024, 2048),
        n_mels: Sequence[int] = (5, 10, 20, 40, 80, 160, 320),
        clamp_eps: float = 1e-5,
        log_weight: float = 1.0,
        mag_weight: float = 0.0,
        fmin: float = 0.0,
        fmax: Optional[float] = None,
    ):
        super().__init__()
        if len(window_lengths) != len(n_mels):
            raise ValueError("window_lengths and n_mels must have the same length")
        self.window_lengths = list(window_lengths)
        self.clamp_eps = clamp_eps
        self.log_weight = log_weight
        self.mag_weight = mag_weight
        for i, (w, m) in enumerate(zip(window_lengths, n_mels)):
            fb = AF.melscale_fbanks(w // 2 + 1, fmin, fmax or sampling_rate / 2, m, sampling_rate,
                                    norm="slaney", mel_scale="slaney")
            self.register_buffer(f"fbank{i}", fb, persistent=False)  # (freq, mels)
            self.register_buffer(f"window{i}", torch.hann_window(w), persistent=False)

    def mels(self, x: torch.Tensor, i: int) -> torch.Tensor:
        w = self.window_lengths[i]
        mag = _magnitude(x.float(), w, w // 4, getattr(self, f"window{i}"))
        return torch.matmul(mag.transpose(1, 2), getattr(self, f"fbank{i}"))  # (B, frames, mels)

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``y_hat``, ``y``: ``(B, 1, T)``; returns an fp32 scalar, also under bf16/fp16 autocast."""
        with fp32(y_hat):
            return self._forward(y_hat.float(), y.float())

    def _forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = y_hat.new_zeros(())
        for i in range(len(self.window_lengths)):
            m_hat, m = self.mels(y_hat, i), self.mels(y, i)
            if self.log_weight:
                log_hat = m_hat.clamp(min=self.clamp_eps).log10()
                log_ref = m.clamp(min=self.clamp_eps).log10()
                loss = loss + self.log_weight * (log_hat - log_ref).abs().mean()
            if self.mag_weight:
                loss = loss + self.mag_weight * (m_hat - m).abs().mean()
        return loss


class MultiResolutionSTFTLoss(nn.Module):
    """Spectral convergence + log-magnitude L1, averaged over resolutions (Parallel WaveGAN style)."""

    def __init__(
        self,
        fft_sizes: Sequence[int] = (2048, 1024, 512),
        hop_sizes: Optional[Sequence[int]] = None,
        eps: float = 1e-7,
    ):
        super().__init__()
        self.fft_sizes = list(fft_sizes)
        self.hop_sizes = list(hop_sizes) if hop_sizes else [n // 4 for n in fft_sizes]
        self.eps = eps
        for i, n in enumerate(self.fft_sizes):
            self.register_buffer(f"window{i}", torch.hann_window(n), persistent=False)

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor):
        """Returns ``(spectral_convergence, log_magnitude)`` fp32 scalars, also under autocast."""
        with fp32(y_hat):
            return self._forward(y_hat.float(), y.float())

    def _forward(self, y_hat: torch.Tensor, y: torch.Tensor):
        sc = y_hat.new_zeros(())
        mag = y_hat.new_zeros(())
        for i, (n, hop) in enumerate(zip(self.fft_sizes, self.hop_sizes)):
            window = getattr(self, f"window{i}")
            s_hat = _magnitude(y_hat.float(), n, hop, window).clamp(min=self.eps)
            s = _magnitude(y.float(), n, hop, window).clamp(min=self.eps)
            sc = sc + torch.linalg.norm(s - s_hat) / torch.linalg.norm(s)
            mag = mag + (s.log() - s_hat.log()).abs().mean()
        k = len(self.fft_sizes)
        return sc / k, mag / k
