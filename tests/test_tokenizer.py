"""``SNACTokenizer``: ESPnet codec-tokenizer surface, exact token round trips."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from espnet_snac.model.frames import codes_to_frames
from espnet_snac.model.snac import SNAC, SNAC_24KHZ
from espnet_snac.inference.tokenizer import SNACTokenizer
from espnet_snac.tokens.layout import frames_to_flat
from speech_samples import synthetic_speech


@pytest.fixture(scope="module")
def tok(tmp_path_factory, one_thread) -> SNACTokenizer:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tok") / "model"
    SNAC(**dict(SNAC_24KHZ, encoder_dim=8, decoder_dim=32)).save_pretrained(path)
    return SNACTokenizer(str(path), device="cpu", noise_seed=123)


@pytest.fixture(scope="module")
def wavs() -> torch.Tensor:
    a = synthetic_speech(24000, 0.5, seed=1)
    b = synthetic_speech(24000, 0.5, seed=2)
    return torch.from_numpy(np.stack([a, b]))[:, None]


def test_properties(tok):
    assert tok.vocab_size == 7 * 4096 and tok.n_codebook == 7 and tok.size_codebook == 4096
    assert tok.sample_rate == 24000 and tok.subsample == 2048
    assert tok.frame_rate == pytest.approx(24000 / 2048) and tok.token_rate == pytest.approx(7 * 24000 / 2048)
    assert tok.device == torch.device("cpu")


def test_encode_matches_model_and_tokens_round_trip(tok, wavs):
    codes = tok.encode(wavs)
    frames = math.ceil(wavs.shape[-1] / 2048)
    assert codes.shape == (2, frames, 7) and codes.dtype == torch.long
    with torch.no_grad():
        assert torch.equal(codes, codes_to_frames(tok.codec.encode(wavs)))
    flat, audio = tok(wavs)
    assert audio is None and flat.shape == (2, frames * 7) and flat.dtype == torch.int32
    assert torch.equal(flat.long(), frames_to_flat(codes))
    assert torch.equal(tok.tokens_to_codes(flat), codes)  # tokens -> codes is exact
    # detokenize(tokens) is decode(codes), batched or not
    wav = tok.decode(codes)
    assert wav.shape == (2, frames * 2048)
    assert torch.equal(tok.detokenize(flat), wav)
    assert torch.equal(tok.detokenize(flat[1]), tok.decode(codes[1:2])[0])
    assert tok.decode(codes, length=wavs.shape[-1]).shape == (2, wavs.shape[-1])


def test_dump_audio_and_continuous(tok, wavs):
    tok.dump_audio = True
    try:
        flat, audio = tok(wavs)
    finally:
        tok.dump_audio = False
    assert torch.equal(audio, tok.decode(tok.encode(wavs)))
    z = tok.encode_continuous(wavs)
    frames = math.ceil(wavs.shape[-1] / 2048)
    assert z.shape == (2, 4 * frames, tok.codec.latent_dim)
    assert torch.allclose(tok.decode_continuous(z), audio, atol=1e-5)


def test_encode_with_lengths_equals_each_row_alone(tok, wavs):
    lengths = torch.tensor([wavs.shape[-1], 5000])
    codes = tok.encode(wavs, lengths=lengths)
    assert torch.equal(codes[0], tok.encode(wavs[:1])[0])
    short = tok.encode(wavs[1:2, :, :5000])[0]
    assert torch.equal(codes[1, : len(short)], short) and (codes[1, len(short):] == -1).all()
    batch = tok.encode_batch([wavs[0, 0].numpy(), wavs[1, 0, :5000]], batch_size=2)
    assert np.array_equal(batch[1], short.numpy()) and np.array_equal(batch[0], codes[0].numpy())


def test_bad_input_is_refused(tok, wavs):
    with pytest.raises(ValueError, match=r"\(B, 1, T\)"):
        tok.encode(wavs[:, 0])
    with pytest.raises(ValueError, match="whole frames"):
        tok.detokenize(torch.arange(10))
    with pytest.raises(ValueError, match="codes must be in"):
        tok.decode(torch.full((1, 2, 7), 4096))
    with pytest.raises(ValueError, match="vq_strides"):
        SNACTokenizer(SNAC(**dict(SNAC_24KHZ, encoder_dim=8, decoder_dim=32, vq_strides=[2, 1])))
