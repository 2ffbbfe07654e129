"""Streaming decoding (espnet_snac.inference.streaming) against the full decode, and noise drawn by position."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from espnet_snac import cli
from espnet_snac.model.frames import codes_to_frames
from espnet_snac.model.layers import NoiseBlock, positional_noise
from espnet_snac.model.snac import SNAC, SNAC_24KHZ, SNAC_32KHZ
from espnet_snac.inference.streaming import StreamingDecoder, receptive_field
from speech_samples import load_speech

pytestmark = pytest.mark.usefixtures("one_thread")
# Same topologies as the releases, narrow enough for CPU tests.
SMALL_24K = dict(SNAC_24KHZ, encoder_dim=8, decoder_dim=32)
SMALL_32K = dict(SNAC_32KHZ, encoder_dim=8, decoder_dim=128)  # LocalMHA with 2 heads of 64
TOL = 1e-4


def _model(cfg) -> SNAC:
    torch.manual_seed(0)
    return SNAC(**cfg).eval()


def _random_codes(model: SNAC, frames: int, batch: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s0 = model.vq_strides[0]
    return [torch.randint(0, model.codebook_size, (batch, frames * s0 // s), generator=g) for s in model.vq_strides]


def _stream(model, codes, chunk: int, **kwargs) -> torch.Tensor:
    frames = codes_to_frames(codes)
    decoder = StreamingDecoder(model, **kwargs)
    pieces = [decoder.push(frames[:, i: i + chunk]) for i in range(0, frames.shape[1], chunk)]
    pieces.append(decoder.flush())
    assert all(p.shape[:2] == (frames.shape[0], 1) for p in pieces)
    return torch.cat(pieces, dim=-1)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def small24() -> SNAC:
    return _model(SMALL_24K)


def test_receptive_field_of_the_released_topologies():
    # 24 kHz: 10 latent frames each side (first conv k7, upsampling and dilated residual units) ->
    # 3 coarse frames (256 ms) of lookahead; 32/44 kHz: attention windows of 32 latent frames add one
    # whole window to the right in the worst phase.
    assert receptive_field(_model(SMALL_24K)) == (10, 3, 1)
    assert StreamingDecoder.exact_lookahead_frames(_model(SMALL_24K)) == 3
    field = receptive_field(_model(SMALL_32K))
    assert field.align == 32 and field.lookahead_frames == 5 and field.left >= 32


@pytest.mark.parametrize("cfg,frames,changed", [(SMALL_24K, 14, 10), (SMALL_32K, 16, 12)], ids=["24k", "32k"])
def test_exact_lookahead_is_the_reach_of_a_frame_into_the_past(cfg, frames, changed):
    # Changing frame f changes the full decode back to frame f - lookahead, and not before: the
    # derived lookahead is both needed and enough. For 32 kHz, f = 12 opens an attention window and
    # reaches frame 7, the last frame of the window before the previous one.
    model = _model(cfg)
    codes = _random_codes(model, frames)
    other = [c.clone() for c in codes]
    for level, c in enumerate(other):
        n = model.vq_strides[0] // model.vq_strides[level]
        c[:, changed * n: (changed + 1) * n] = (c[:, changed * n: (changed + 1) * n] + 1) % model.codebook_size
    with torch.inference_mode():
        diff = (model.decode(codes, add_noise=False) - model.decode(other, add_noise=False)).abs()
    per_frame = diff.view(frames, -1).amax(-1)
    reach = changed - StreamingDecoder.exact_lookahead_frames(model)
    assert per_frame[reach] > 2e-6
    assert per_frame[:reach].max() < 1e-7


@pytest.mark.parametrize("noise", [True, False], ids=["noise", "no_noise"])
def test_small_24k_stream_equals_full_decode(small24, noise):
    codes = _random_codes(small24, frames=14, batch=2)
    with torch.inference_mode():
        full = small24.decode(codes, noise_seed=11, add_noise=noise)
    exact = StreamingDecoder.exact_lookahead_frames(small24)
    exact_errors = [_max_err(_stream(small24, codes, chunk, noise_seed=11, add_noise=noise), full)
                    for chunk in (1, 3, 14)]
    assert max(exact_errors) < TOL
    # one frame less misses a part of the receptive field (small here, in the tails of random
    # weights, but far above float rounding); lookahead 0 cuts into the main lobe
    errors = [_max_err(_stream(small24, codes, 1, lookahead_frames=la, noise_seed=11, add_noise=noise), full)
              for la in range(exact)]
    assert errors[-1] > 1e-6
    assert errors[0] > 1e-2 and errors[0] > errors[-1]
    # a larger lookahead than needed is exact too
    assert _max_err(_stream(small24, codes, 2, lookahead_frames=exact + 2, noise_seed=11, add_noise=noise),
                    full) < TOL


def test_unseeded_stream_reports_its_seed(small24):
    codes = _random_codes(small24, frames=6)
    decoder = StreamingDecoder(small24, noise_seed=None)
    frames = codes_to_frames(codes)
    out = torch.cat([decoder.push(frames), decoder.flush()], dim=-1)
    with torch.inference_mode():
        assert _max_err(out, small24.decode(codes, noise_seed=decoder.noise_seed)) < TOL


def test_released_24k_architecture_on_real_speech():
    model = _model(SNAC_24KHZ)
    audio = torch.from_numpy(load_speech(24000, n=1)[0][: 24000 * 3 // 4]).view(1, 1, -1)
    with torch.inference_mode():
        codes = model.encode(audio)
        full = model.decode(codes, noise_seed=3)
    assert codes[0].shape[-1] == 9
    assert _max_err(_stream(model, codes, 2, noise_seed=3), full) < TOL


def test_attention_model_32k_stream_equals_full_decode():
    model = _model(SMALL_32K)
    codes = _random_codes(model, frames=16)  # four attention windows
    exact = StreamingDecoder.exact_lookahead_frames(model)
    for noise in (True, False):
        with torch.inference_mode():
            full = model.decode(codes, noise_seed=5, add_noise=noise)
        assert _max_err(_stream(model, codes, 1, noise_seed=5, add_noise=noise), full) < TOL
    assert _max_err(_stream(model, codes, 3, noise_seed=5), model.decode(codes, noise_seed=5)) < TOL
    assert _max_err(_stream(model, codes, 1, lookahead_frames=exact - 1, add_noise=False),
                    model.decode(codes, add_noise=False)) > TOL


@pytest.mark.parametrize("lookahead", [None, 1], ids=["exact", "approximate"])
def test_work_per_push_does_not_grow_with_history(small24, lookahead):
    codes = _random_codes(small24, frames=40)
    frames = codes_to_frames(codes)
    with torch.inference_mode():
        full = small24.decode(codes, add_noise=False)
    decoder = StreamingDecoder(small24, lookahead_frames=lookahead, add_noise=False)
    field = receptive_field(small24)
    la = decoder.lookahead_frames
    windows, buffered, pieces = [], [], []
    for i in range(frames.shape[1]):
        pieces.append(decoder.push(frames[:, i: i + 1]))
        assert pieces[-1].shape[-1] == (2048 if i >= la else 0)
        if i >= la + 3:  # the left context is complete from the 4th emitted frame on
            windows.append(decoder.last_window_frames)
            if decoder._stages is None:
                buffered.append(decoder._buffer.shape[1])
            else:
                buffered.append(tuple(stage.buffer.shape[-1] for stage in decoder._stages))
    # what one push decodes and keeps is the same for the 7th push as for the 40th
    assert len(set(windows)) == 1 and len(set(buffered)) == 1
    assert windows[0] <= field.left + 4 * (1 + la)
    pieces.append(decoder.flush())
    assert pieces[-1].shape[-1] == la * 2048
    err = _max_err(torch.cat(pieces, dim=-1), full)
    assert err < TOL if lookahead is None else err > TOL


def test_positional_noise_is_a_function_of_position():
    whole = positional_noise(9, 2, 0, 2, 9000, torch.device("cpu"))
    assert whole.shape == (2, 1, 9000)
    part = positional_noise(9, 2, 3001, 2, 4000, torch.device("cpu"))
    assert torch.equal(part, whole[..., 3001:7001])
    assert not torch.equal(positional_noise(9, 3, 0, 2, 9000, torch.device("cpu")), whole)  # block index
    assert not torch.equal(positional_noise(8, 2, 0, 2, 9000, torch.device("cpu")), whole)  # seed
    assert 0.9 < whole.std().item() < 1.1


def test_seeded_decode_restores_the_default_global_rng_noise(small24):
    codes = _random_codes(small24, frames=2)
    with torch.inference_mode():
        small24.decode(codes, noise_seed=1)
        blocks = [m for m in small24.decoder.modules() if isinstance(m, NoiseBlock)]
        assert len(blocks) == 4 and all(b.seed is None and b.offset == 0 and b.enabled for b in blocks)
        torch.manual_seed(4)
        a = small24.decode(codes)
        torch.manual_seed(4)
        b = small24.decode(codes)
        c = small24.decode(codes)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_pushes_are_refused(small24):
    decoder = StreamingDecoder(small24)
    with pytest.raises(ValueError, match=r"shape \(B, F, 7\)"):
        decoder.push(torch.zeros(1, 3, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"codes must be in \[0, 4096\)"):
        decoder.push(torch.full((1, 2, 7), 4096))
    with pytest.raises(ValueError, match="integer codes"):
        decoder.push(torch.zeros(1, 2, 7))
    decoder.push(torch.zeros(1, 2, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="batch size changed"):
        decoder.push(torch.zeros(2, 2, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="lookahead_frames"):
        StreamingDecoder(small24, lookahead_frames=-1)


def test_cli_stream_decode_matches_full_decode(tmp_path, capsys, small24):
    small24.save_pretrained(tmp_path / "model")
    sf.write(tmp_path / "in.wav", load_speech(24000, n=1)[0][:20000], 24000, subtype="PCM_16")
    model_args = ["--model", str(tmp_path / "model"), "--device", "cpu"]
    assert cli.main(["encode", str(tmp_path / "in.wav"), str(tmp_path / "x.snac"), "-q", *model_args]) == 0
    for extra in (["--seed", "7"], ["--no_noise"]):
        assert cli.main(["decode", str(tmp_path / "x.snac"), str(tmp_path / "full.wav"), "-q", *model_args,
                         *extra]) == 0
        assert cli.main(["decode", str(tmp_path / "x.snac"), str(tmp_path / "stream.wav"), *model_args, *extra,
                         "--stream", "--chunk_frames", "2"]) == 0
        out = capsys.readouterr().out
        assert "streaming: 5 pushes of 2 frame(s)" in out and "lookahead 3 frame(s) = 256.0 ms (exact)" in out
        full, stream = sf.read(tmp_path / "full.wav")[0], sf.read(tmp_path / "stream.wav")[0]
        assert full.shape == stream.shape == (20000,)
        np.testing.assert_allclose(stream, full, atol=1.5 / 32768)  # 16-bit PCM rounding
    assert cli.main(["decode", str(tmp_path / "x.snac"), str(tmp_path / "s.wav"), *model_args, "--stream",
                     "--lookahead_frames", "1", "--no_noise"]) == 0
    assert "exact needs 3; approximate" in capsys.readouterr().out
