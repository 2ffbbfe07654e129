"""DAC's batch pipeline: loudness with headroom, quiet excerpts, polarity, switches, determinism."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import lfilter

from espnet_snac.train.augment import BatchAugment, k_weighting_coefficients, loudness

FS = 24000
T = 20480


def _speechlike(batch: int, seed: int = 0, length: int = T) -> torch.Tensor:
    """Noise bursts shaped by a syllable-rate envelope, at levels from -50 to -5 dBFS RMS."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / FS
    env = 0.5 * (1 + torch.sin(2 * math.pi * 4 * t))
    x = torch.randn(batch, length, generator=g) * env
    x = x / x.pow(2).mean(1, keepdim=True).sqrt()
    levels = torch.linspace(-35, -5, batch)
    return x * torch.pow(10, levels / 20)[:, None]


def _loudness_time_domain(x: np.ndarray, fs: int) -> float:
    """Independent BS.1770 loudness (ungated): the two biquads applied as IIR filters."""
    y = x
    for b, a in k_weighting_coefficients(fs):
        y = lfilter(b, a, y)
    return -0.691 + 10 * math.log10(np.mean(y ** 2))


def test_k_filter_matches_bs1770_at_48k_and_a_sine():
    (b1, a1), (b2, a2) = k_weighting_coefficients(48000)
    np.testing.assert_allclose(b1, [1.53512485958697, -2.69169618940638, 1.19839281085285], rtol=1e-6)
    np.testing.assert_allclose(a1, [1.0, -1.69065929318241, 0.73248077421585], rtol=1e-6)
    np.testing.assert_allclose(np.array(b2) / b2[0], [1.0, -2.0, 1.0], rtol=1e-9)
    np.testing.assert_allclose(a2, [1.0, -1.99004745483398, 0.99007225036621], rtol=1e-6)
    sine = torch.sin(2 * math.pi * 1000 * torch.arange(FS) / FS)[None]
    assert loudness(sine, FS).item() == pytest.approx(-3.01, abs=0.05)


def test_loudness_reaches_target_without_clipping():
    x = _speechlike(16)
    x[3] = x[3] / x[3].abs().max() * 0.01  # very peaky: the headroom must win over the target
    x[3, ::2000] = 0.9
    aug = BatchAugment(sampling_rate=FS, random_polarity=False, reject_quiet=False)
    y, stats = aug(x)
    assert y.shape == x.shape
    measured = np.array([_loudness_time_domain(row, FS) for row in y.double().numpy()])
    peaks_db = 20 * torch.log10(y.abs().amax(1))
    assert (peaks_db <= -1.0 + 1e-4).all()  # headroom: nothing above -1 dBFS
    limited = (peaks_db > -1.0 - 1e-3).numpy()
    # Unlimited excerpts reach -16 LUFS (the FFT measure vs the IIR one: edge effects only).
    assert np.abs(measured[~limited] + 16.0).max() < 0.3
    assert (measured[limited] < -16.0 + 0.3).all() and limited.any()
    assert stats["augment_peak_limited"] == pytest.approx(limited.mean())


def test_quiet_and_nonfinite_excerpts_are_dropped_and_counted():
    x = _speechlike(8)
    x[1] = 0.0                                 # silence
    x[4] = x[4] / x[4].abs().max() * 1e-3      # about -65 LUFS
    x[6, 10] = float("nan")
    aug = BatchAugment(sampling_rate=FS, random_polarity=False)
    y, stats = aug(x)
    assert y.shape == (5, T)
    assert stats["augment_quiet"] == 2 and stats["augment_nonfinite"] == 1 and stats["augment_dropped"] == 3
    assert torch.isfinite(y).all()
    # Batch of nothing but silence: B' = 0.
    y, stats = aug(torch.zeros(4, T))
    assert y.shape == (0, T) and stats["augment_dropped"] == 4
    # "replace" keeps the batch size with copies of loud excerpts.
    x = _speechlike(8)
    x[2] = 0.0
    y, stats = BatchAugment(sampling_rate=FS, random_polarity=False, quiet="replace")(x)
    assert y.shape == x.shape and stats["augment_replaced"] == 1 and stats["augment_dropped"] == 0
    assert any(torch.equal(y[2], y[j]) for j in range(8) if j != 2)


def test_polarity_flips_about_half_and_is_deterministic():
    x = _speechlike(4000, length=64).abs() + 1e-3  # all positive: the sign shows the flip
    aug = BatchAugment(sampling_rate=FS, normalize_loudness=False, reject_quiet=False, seed=5)
    y, stats = aug(x)
    flipped = (y[:, 0] < 0).float().mean().item()
    assert abs(flipped - 0.5) < 0.03 and stats["augment_polarity_flipped"] == pytest.approx(flipped)
    torch.testing.assert_close(y.abs(), x)
    again, _ = BatchAugment(sampling_rate=FS, normalize_loudness=False, reject_quiet=False, seed=5)(x)
    assert torch.equal(again, y)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(aug(x, generator=g1)[0], aug(x, generator=g2)[0])
    state = aug.state_dict()
    a, _ = aug(x)
    aug.load_state_dict(state)
    b, _ = aug(x)
    assert torch.equal(a, b)


def test_switched_off_is_identity():
    x = _speechlike(6)
    x[0] = 0.0
    aug = BatchAugment(normalize_loudness=False, reject_quiet=False, random_polarity=False)
    y, stats = aug(x)
    assert y is x and stats == {}
    y, _ = BatchAugment(normalize_loudness=False, quiet="keep", random_polarity=False)(x)
    assert y is x


@pytest.mark.parametrize("conf, word", [
    ({"target_loudness": -16}, "unknown key 'target_loudness'"),
    ({"random_polarity": "yes"}, "augment_conf.random_polarity must be bool"),
    ({"quiet": "skip"}, "augment_conf.quiet"),
    ({"peak_db": 1.0}, "peak_db"),
])
def test_bad_augment_conf_names_the_key(conf, word):
    with pytest.raises(ValueError, match=word):
        BatchAugment(**conf)
