"""Batched and windowed encoding give the codes of the single-utterance path (24 kHz model)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from espnet_snac.io.audio_io import load_mono
from espnet_snac.model.frames import codes_to_frames
from espnet_snac.model.snac import SNAC, SNAC_24KHZ
from espnet_snac.tokens.batching import BatchEncoder, encode_exact
from speech_samples import demo_files, synthetic_speech

# Mixed lengths, none a multiple of 2048 samples, so every utterance has a padded last frame.
LENGTHS = [8400, 21900, 31000, 15001]


@pytest.fixture(scope="module")
def model(one_thread) -> SNAC:
    torch.manual_seed(0)
    return SNAC(**SNAC_24KHZ).eval()


@pytest.fixture(scope="module")
def speech() -> list:
    files = [f for f in demo_files() if "/dev/" in f.as_posix()] or demo_files()
    out = []
    for i, n in enumerate(LENGTHS):
        if files:
            audio = load_mono(files[i % len(files)], 24000)[0]
            start = min(4800, max(0, len(audio) - n))  # skip the leading silence
            out.append(audio[start:start + n])
        else:
            out.append(synthetic_speech(24000, n / 24000 + 0.01, seed=i)[:n])
    return out


def _alone(model, audio: np.ndarray):
    with torch.no_grad():
        return model.encode(torch.from_numpy(audio)[None, None])


def test_mixed_length_batch_equals_single_utterance_codes(model, speech):
    single = [_alone(model, a) for a in speech]
    batched = encode_exact(model, [torch.from_numpy(a) for a in speech])
    for i, (s, b) in enumerate(zip(single, batched)):
        assert [c.shape[1] for c in s] == [c.shape[0] for c in b]
        for level in range(3):
            assert torch.equal(s[level][0], b[level]), f"utterance {i} level {level}"

    # The test is sensitive: a plain zero-padded batch changes codes near the shorter ends.
    longest = max(len(a) for a in speech)
    plain = torch.stack([torch.nn.functional.pad(torch.from_numpy(a), (0, longest - len(a))) for a in speech])
    with torch.no_grad():
        naive = model.encode(plain[:, None])
    differs = [not torch.equal(naive[0][i, : s[0].shape[1]], s[0][0]) or
               not torch.equal(naive[2][i, : s[2].shape[1]], s[2][0])
               for i, s in enumerate(single) if len(speech[i]) < longest - 2048]
    assert any(differs)


def test_batch_encoder_frames_equal_single(model, speech):
    frames = BatchEncoder(model, batch_size=3).encode(speech)
    for a, f in zip(speech, frames):
        expected = codes_to_frames(_alone(model, a))[0].numpy()
        assert f.dtype == np.int32 and f.shape == (-(-len(a) // 2048), 7)
        assert np.array_equal(f, expected)


def test_windows_with_context_equal_whole_file_and_without_differ_only_at_joins(model, speech):
    long = np.concatenate(speech + speech[:1])  # 3.5 s
    whole = codes_to_frames(_alone(model, long))[0].numpy()
    windowed = BatchEncoder(model, batch_size=4, window_seconds=0.5, context_seconds=0.25).encode([long])[0]
    assert np.array_equal(windowed, whole)

    enc = BatchEncoder(model, batch_size=4, window_seconds=0.5, context_seconds=0.0)
    no_context = enc.encode([long])[0]
    assert no_context.shape == whole.shape
    bad_frames = np.nonzero((no_context != whole).any(axis=1))[0]
    joins = np.arange(enc.window_frames, len(whole), enc.window_frames)
    assert len(bad_frames) > 0
    assert all(np.min(np.abs(joins - f - 0.5)) <= 2.5 for f in bad_frames)  # within 2 frames of a join
