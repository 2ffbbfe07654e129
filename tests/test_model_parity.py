"""Checkpoint and numerical parity with the official ``snac`` package (reference only)."""
from __future__ import annotations

import json

import pytest
import torch

from espnet_snac import SNAC, SNAC_24KHZ, SNAC_32KHZ
from espnet_snac.model.checkpoints import CheckpointError
from speech_samples import load_speech


@pytest.fixture(scope="module")
def official():
    """The official ``snac`` package (the reference); only the tests that compare with it need it."""
    return pytest.importorskip("snac")


def _save_official(official, cfg, directory, seed=0):
    torch.manual_seed(seed)
    ref = official.SNAC(**cfg).eval()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg))
    torch.save(ref.state_dict(), directory / "pytorch_model.bin")
    return ref


def _batch(utts):
    """Zero-pad utterances of different lengths into ``(B, 1, T)``."""
    out = torch.zeros(len(utts), 1, max(len(u) for u in utts))
    for i, u in enumerate(utts):
        out[i, 0, : len(u)] = torch.from_numpy(u)
    return out


@pytest.mark.parametrize(
    "cfg,n_params,n_tensors",
    [(SNAC_24KHZ, 19_842_914, 269), (SNAC_32KHZ, 54_546_338, 286)],
    ids=["24khz", "32khz"],
)
def test_official_checkpoint_parity(official, tmp_path, cfg, n_params, n_tensors):
    ref = _save_official(official, cfg, tmp_path / "official")
    ours = SNAC.from_pretrained(tmp_path / "official")
    assert sum(p.numel() for p in ours.parameters()) == n_params
    assert sum(p.numel() for p in ref.parameters()) == n_params
    assert len(ours.state_dict()) == n_tensors
    # Every official key exists with the same shape (strict load already ran in from_pretrained).
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}

    n = 3 if cfg["sampling_rate"] == 24000 else 1
    audio = _batch(load_speech(cfg["sampling_rate"], n=n))
    with torch.no_grad():
        codes_ref, codes_ours = ref.encode(audio), ours.encode(audio)
        assert len(codes_ours) == len(cfg["vq_strides"])
        for a, b in zip(codes_ref, codes_ours):
            assert a.dtype == b.dtype == torch.long
            assert torch.equal(a, b)
        torch.manual_seed(123)
        wav_ref = ref.decode(codes_ref)
        torch.manual_seed(123)
        wav_ours = ours.decode(codes_ours)
    assert wav_ours.shape == wav_ref.shape
    assert (wav_ours - wav_ref).abs().max().item() < 1e-5


def test_24khz_code_rates_and_padding(speech24k):
    model = SNAC(**SNAC_24KHZ).eval()
    assert model.hop_length == 512 and model.pad_multiple == 2048
    assert [round(r, 2) for r in model.frame_rates] == [11.72, 23.44, 46.88]
    x = torch.from_numpy(speech24k[0]).view(1, 1, -1)
    with torch.no_grad():
        codes = model.encode(x)
    t0 = -(-x.shape[-1] // 2048)
    assert [c.shape[-1] for c in codes] == [t0, 2 * t0, 4 * t0] == model.num_frames(x.shape[-1])
    assert all(int(c.max()) < 4096 and int(c.min()) >= 0 for c in codes)


def test_decode_trim_and_noise_control(speech24k):
    model = SNAC(**SNAC_24KHZ).eval()
    x = torch.from_numpy(speech24k[1]).view(1, 1, -1)
    with torch.no_grad():
        codes = model.encode(x)
        full = model.decode(codes, noise_seed=7)
        trimmed = model.decode(codes, length=x.shape[-1], noise_seed=7)
        again = model.decode(codes, length=x.shape[-1], noise_seed=7)
        other = model.decode(codes, length=x.shape[-1], noise_seed=8)
        quiet1 = model.decode(codes, add_noise=False)
        quiet2 = model.decode(codes, add_noise=False)
        hat, _ = model(x)
    assert full.shape[-1] == codes[0].shape[-1] * 2048 and trimmed.shape[-1] == x.shape[-1]
    assert torch.equal(trimmed, full[..., : x.shape[-1]])
    assert torch.equal(trimmed, again)
    assert not torch.equal(trimmed, other)  # the seed matters: noise is really applied
    assert torch.equal(quiet1, quiet2)
    assert hat.shape == x.shape
    # Defaults draw from the global RNG like the official model, and restore the blocks afterwards.
    from espnet_snac.model.layers import NoiseBlock

    blocks = [m for m in model.decoder.modules() if isinstance(m, NoiseBlock)]
    assert blocks and all(m.seed is None and m.enabled for m in blocks)


def test_save_pretrained_loads_in_official_package(official, tmp_path):
    ours = SNAC(**SNAC_24KHZ).eval()
    ours.save_pretrained(tmp_path / "export")
    ref = official.SNAC.from_pretrained(str(tmp_path / "export"))
    x = torch.randn(1, 1, 6000) * 0.1
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(ref.encode(x), ours.encode(x)))


def test_safetensors_directory(official, tmp_path):
    from safetensors.torch import save_file

    ref = _save_official(official, SNAC_24KHZ, tmp_path / "bin")
    st = tmp_path / "st"
    st.mkdir()
    (st / "config.json").write_text(json.dumps(SNAC_24KHZ))
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(st / "model.safetensors"))
    ours = SNAC.from_pretrained(st)
    for k, v in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v)


def test_mismatched_keys_are_named(official, tmp_path):
    ref = _save_official(official, SNAC_24KHZ, tmp_path / "m")
    state = ref.state_dict()
    removed = "decoder.model.0.parametrizations.weight.original0"
    state.pop(removed)
    state["encoder.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as err:
        SNAC.from_pretrained(tmp_path / "m")
    assert removed in str(err.value) and "encoder.extra.weight" in str(err.value)

    wrong = tmp_path / "wrong"
    _save_official(official, SNAC_24KHZ, wrong)
    (wrong / "config.json").write_text(json.dumps(dict(SNAC_24KHZ, decoder_dim=512)))
    with pytest.raises(CheckpointError, match="do not match"):
        SNAC.from_pretrained(wrong)
    with pytest.raises(CheckpointError, match="no such model"):
        SNAC.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a SNAC model directory"):
        SNAC.from_pretrained(tmp_path / "empty")
