"""ONNX export (espnet_snac.inference.onnx_export, ``espnet-snac export``) run with ONNX Runtime.

Narrow random models: the 24 kHz release topology (strides 2/4/8/8, levels 4/2/1); a 32 kHz model with
windowed attention and levels 8/4/2/1, two encoder blocks in CI (the release's four with
SNAC_SLOW_TESTS=1). An export of the full depth takes ~25 s on 2 cores, a shallow one ~12 s.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
snac = pytest.importorskip("snac")

from espnet_snac import cli  # noqa: E402
from espnet_snac.model.snac import SNAC  # noqa: E402
from espnet_snac.inference.onnx_export import OnnxSNAC, OnnxStreamingDecoder, export_onnx, fold_weight_norm  # noqa: E402
from speech_samples import load_speech  # noqa: E402

torch.set_num_threads(1)
S24 = dict(sampling_rate=24000, encoder_dim=4, encoder_rates=[2, 4, 8, 8], decoder_dim=32,
           decoder_rates=[8, 8, 4, 2], attn_window_size=None, codebook_size=256, codebook_dim=8,
           vq_strides=[4, 2, 1], noise=True, depthwise=True)
S32 = dict(sampling_rate=32000, encoder_dim=4, encoder_rates=[2, 3, 8, 8], decoder_dim=128,
           decoder_rates=[8, 8, 3, 2], attn_window_size=32, codebook_size=256, codebook_dim=8,
           vq_strides=[8, 4, 2, 1], noise=True, depthwise=True)
# shallow: only the noise wiring is under test there
SHALLOW = dict(S24, encoder_rates=[8, 8], decoder_rates=[8, 8], encoder_dim=8, decoder_dim=16)
S32_SHALLOW = dict(S32, encoder_rates=[4, 8], decoder_rates=[8, 4], encoder_dim=16, decoder_dim=64)
slow = pytest.mark.skipif(os.environ.get("SNAC_SLOW_TESTS") != "1", reason="slow: set SNAC_SLOW_TESTS=1")


def _model(config, seed=0) -> SNAC:
    torch.manual_seed(seed)
    return SNAC(**config).eval()


@pytest.fixture(scope="module")
def exported24(tmp_path_factory):
    """The 24 kHz model exported through the command line, as a user would."""
    root = tmp_path_factory.mktemp("onnx24")
    model_dir = _model(S24).save_pretrained(root / "model")
    out = root / "onnx"
    assert cli.main(["export", str(model_dir), str(out), "--format", "onnx", "-q"]) == 0
    return model_dir, out


def _official(model_dir: Path):
    return snac.SNAC.from_pretrained(str(model_dir)).eval()


def test_cli_writes_the_files_and_refuses_overwrite(exported24, capsys):
    model_dir, out = exported24
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "decoder.onnx", "encoder.onnx"]
    session = OnnxSNAC(out, threads=1)
    assert [i.name for i in session.encoder.get_inputs()] == ["audio"]
    assert session.code_names == ["codes_0", "codes_1", "codes_2"]
    assert [i.name for i in session.decoder.get_inputs()] == session.code_names
    assert session.config["onnx"]["noise"] is False and session.config["sampling_rate"] == 24000
    assert cli.main(["export", str(model_dir), str(out)]) == 1
    assert "--force" in capsys.readouterr().err


def test_one_file_serves_every_length_and_batch(exported24):
    model_dir, out = exported24
    official, ours, session = _official(model_dir), SNAC.from_pretrained(model_dir), OnnxSNAC(out, threads=1)
    gen = torch.Generator().manual_seed(3)
    for batch, length in ((1, 1), (1, 2047), (1, 2048), (2, 5000), (3, 30001)):
        audio = 0.1 * torch.randn(batch, 1, length, generator=gen)
        with torch.inference_mode():
            ref = official.encode(audio)
            ours_audio = ours.decode(ref, add_noise=False)
        codes = session.encode(audio.numpy())
        assert [c.dtype for c in codes] == [np.int64] * 3
        assert [c.shape for c in codes] == [tuple(r.shape) for r in ref], length
        assert all(np.array_equal(c, r.numpy()) for c, r in zip(codes, ref)), length
        decoded = session.decode(codes)
        assert decoded.dtype == np.float32 and decoded.shape == tuple(ours_audio.shape)
        assert np.abs(decoded - ours_audio.numpy()).max() < 1e-3


def test_official_codes_on_real_speech(exported24):
    model_dir, out = exported24
    official, session = _official(model_dir), OnnxSNAC(out, threads=1)
    for utt in load_speech(24000, n=3):
        audio = torch.from_numpy(utt).view(1, 1, -1)
        with torch.inference_mode():
            ref = official.encode(audio)
        codes = session.encode(audio.numpy())
        assert all(np.array_equal(c, r.numpy()) for c, r in zip(codes, ref))


def _stream(session: OnnxSNAC, codes, chunk: int) -> np.ndarray:
    """Push ``codes`` ``chunk`` coarse frames at a time through an OnnxStreamingDecoder."""
    stream = OnnxStreamingDecoder(None, session=session)
    per = [codes[0].shape[1] and c.shape[1] // codes[0].shape[1] for c in codes]
    pieces = [stream.push([c[:, f * p:(f + chunk) * p] for c, p in zip(codes, per)])
              for f in range(0, codes[0].shape[1], chunk)]
    return np.concatenate(pieces + [stream.flush()], axis=-1)


def test_streaming_decoder_step_equals_the_full_decode(exported24):
    model_dir, out = exported24
    session = OnnxSNAC(out, threads=1)
    audio = torch.from_numpy(load_speech(24000, n=1)[0]).view(1, 1, -1)
    codes = session.encode(audio.numpy())
    full = session.decode(codes)
    for chunk in (1, 3):
        streamed = _stream(session, codes, chunk)
        assert streamed.shape == full.shape
        assert np.abs(streamed - full).max() < 1e-4, chunk
    stream = OnnxStreamingDecoder(out, threads=1)
    assert stream.push([c[:, :0] for c in codes]).shape == (1, 1, 0)
    first = stream.push([c[:, : 4 * c.shape[1] // codes[0].shape[1]] for c in codes])
    assert first.shape[-1] == (4 - stream.lookahead_frames) * stream.samples_per_frame  # 3 frames held back


@pytest.mark.parametrize("config", [pytest.param(S32_SHALLOW, id="shallow"),
                                    pytest.param(S32, id="release_depth", marks=[pytest.mark.slow, slow])])
def test_32khz_with_attention(tmp_path, config):
    model = _model(config, seed=1)
    export_onnx(model, tmp_path, example_seconds=0.2)
    official = snac.SNAC(**config).eval()
    official.load_state_dict(model.state_dict())
    session = OnnxSNAC(tmp_path, threads=1)
    gen = torch.Generator().manual_seed(4)
    for batch, length in ((1, 3000), (2, 40000)):
        audio = 0.1 * torch.randn(batch, 1, length, generator=gen)
        with torch.inference_mode():
            ref = official.encode(audio)
            ours_audio = model.decode(ref, add_noise=False)
        codes = session.encode(audio.numpy())
        assert len(codes) == 4 and all(np.array_equal(c, r.numpy()) for c, r in zip(codes, ref))
        assert np.abs(session.decode(codes) - ours_audio.numpy()).max() < 1e-3
    # streaming across attention windows (align 32 latent frames = 4 coarse frames)
    assert np.abs(_stream(session, codes, 3) - session.decode(codes)).max() < 1e-4


def test_noise_true_keeps_the_noise_blocks(tmp_path):
    import onnx

    model = _model(SHALLOW, seed=2)
    export_onnx(model, tmp_path, noise=True, example_seconds=0.1)
    graph = onnx.load(str(tmp_path / "decoder.onnx")).graph
    random_ops = [n for n in graph.node if n.op_type.startswith("RandomNormal")]
    assert len(random_ops) == len(model.noise_blocks()) == 2
    session = OnnxSNAC(tmp_path, threads=1)
    codes = session.encode(0.1 * np.random.default_rng(0).standard_normal((1, 1, 8192), dtype=np.float32))
    first, second = session.decode(codes), session.decode(codes)
    assert np.isfinite(first).all() and not np.array_equal(first, second)  # fresh noise on every call
    with torch.inference_mode():
        quiet = model.decode([torch.from_numpy(c) for c in codes], add_noise=False).numpy()
    assert np.abs(first - quiet).max() > 1e-3


def test_fold_weight_norm_leaves_the_model_intact():
    model = _model(SHALLOW)
    x = 0.1 * torch.randn(1, 1, 4096, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        before = model.encode(x)
        folded = fold_weight_norm(model)
        after = model.encode(x)  # the original still has its weight-norm parametrization
        assert all(torch.equal(a, b) for a, b in zip(before, after))
        assert not any("parametrizations" in k for k in folded.state_dict())
        assert torch.allclose(folded.encoder(model.preprocess(x)), model.encoder(model.preprocess(x)), atol=1e-6)
