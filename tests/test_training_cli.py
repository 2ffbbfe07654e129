"""ESPnet training through ``python -m espnet_snac.bin.gan_codec_train``: checkpoint, inference (resuming:
tests/reliability/test_interrupted_training.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from speech_samples import CONF, REPO, load_speech

TINY = CONF / "tuning" / "train_snac24k_tiny.yaml"


def _run(args, **kw):
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=900, **kw)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """24 kHz wav.scp + shape files for train/dev from real speech."""
    root = tmp_path_factory.mktemp("data")
    utts = load_speech(24000, n=4, split="dev")
    sets = {"train": utts[:3], "dev": utts[3:]}
    for name, items in sets.items():
        with open(root / f"{name}.scp", "w") as scp, open(root / f"{name}_shape", "w") as shape:
            for i, x in enumerate(items):
                path = root / f"{name}_{i}.wav"
                sf.write(path, x, 24000, subtype="PCM_16")
                scp.write(f"{name}_{i} {path}\n")
                shape.write(f"{name}_{i} {len(x)}\n")
    return root


def _train_cmd(data: Path, exp: Path, max_epoch: int):
    return ["-m", "espnet_snac.bin.gan_codec_train", "--config", str(TINY),
            "--train_data_path_and_name_and_type", f"{data}/train.scp,audio,sound",
            "--valid_data_path_and_name_and_type", f"{data}/dev.scp,audio,sound",
            "--train_shape_file", f"{data}/train_shape", "--valid_shape_file", f"{data}/dev_shape",
            "--output_dir", str(exp), "--ngpu", "0", "--resume", "true", "--max_epoch", str(max_epoch)]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    exp = tmp_path_factory.mktemp("exp") / "snac_tiny"
    first = _run(_train_cmd(data, exp, 1))
    assert (exp / "checkpoint.pth").is_file() and (exp / "1epoch.pth").is_file()
    assert "resumed" not in first.stderr
    (exp / "train.log").write_text(first.stderr)  # ESPnet logs to stderr; recipes keep it as train.log
    return exp


def test_training_writes_checkpoint_with_finite_losses(trained):
    ckpt = torch.load(trained / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert {"model", "optimizers", "schedulers", "reporter"} <= set(ckpt)
    assert len(ckpt["optimizers"]) == 2 and ckpt["reporter"]["epoch"] == 1
    state = torch.load(trained / "1epoch.pth", map_location="cpu", weights_only=True)
    assert any(k.startswith("codec.generator.quantizer.quantizers.0.codebook") for k in state)
    assert any(k.startswith("codec.discriminator.") for k in state)
    config = yaml.safe_load((trained / "config.yaml").read_text())
    assert config["codec"] == "snac" and config["scheduler"] == "exponentialdecay"
    log = (trained / "train.log").read_text()
    assert "1epoch results" in log
    for key in ("mel_loss", "discriminator_loss", "codebook_loss", "commitment_loss", "codebook_usage_0"):
        assert f"{key}=" in log, key
    line = next(ln for ln in log.splitlines() if "1epoch results" in ln)
    values = [float(tok.split("=")[1].rstrip(",")) for tok in line.split() if "_loss=" in tok]
    assert values and all(np.isfinite(values))


def test_audio_coding_and_from_pretrained_on_trained_model(trained, data):
    import espnet_snac  # noqa: F401
    from espnet2.bin.gan_codec_inference import AudioCoding

    from espnet_snac import SNAC

    model_file = sorted(trained.glob("*epoch.pth"))[-1]
    coder = AudioCoding(train_config=str(trained / "config.yaml"), model_file=str(model_file))
    x = torch.from_numpy(load_speech(24000, n=1)[0])
    out = coder(audio=x)
    frames = -(-len(x) // 2048)
    assert out["codes"].shape == (7, 1, frames)
    assert out["resyn_audio"].shape == (frames * 2048,)
    assert torch.isfinite(out["resyn_audio"]).all()
    assert coder.codec.meta_info()["num_streams"] == 7

    ours = SNAC.from_pretrained(model_file)
    ref = coder.codec.generator
    with torch.no_grad():
        assert torch.equal(torch.stack(ref.encode(x.view(1, 1, -1))[:1]), torch.stack(ours.encode(x.view(1, 1, -1))[:1]))
    assert SNAC.from_pretrained(trained).config == ref.config


def test_inference_cli_writes_trimmed_audio_and_codes(trained, data, tmp_path):
    out_dir = tmp_path / "decode"
    _run(["-m", "espnet_snac.bin.gan_codec_inference", "--ngpu", "0",
          "--data_path_and_name_and_type", f"{data}/dev.scp,audio,sound",
          "--train_config", str(trained / "config.yaml"), "--model_file", str(trained / "latest.pth"),
          "--output_dir", str(out_dir)])
    lines = (out_dir / "wav" / "wav.scp").read_text().splitlines()
    assert len(lines) == 1
    key, path = lines[0].split(maxsplit=1)
    ref, _ = sf.read(data / f"{key}.wav")
    hyp, sr = sf.read(path)
    assert sr == 24000 and len(hyp) == len(ref)
    codes = np.load(out_dir / "codec" / f"{key}.npy")
    assert codes.shape == (7, 1, -(-len(ref) // 2048)) and codes.max() < 4096


def test_finetune_init_param_loads_official_weights(tmp_path):
    """The fine-tuning config's init_param line loads an official checkpoint into codec.generator."""
    import espnet_snac  # noqa: F401
    from espnet2.tasks.gan_codec import GANCodecTask
    from espnet2.torch_utils.load_pretrained_model import load_pretrained_model

    from espnet_snac import SNAC

    tiny = yaml.safe_load(TINY.read_text())
    official_dir = tmp_path / "pretrained"
    torch.manual_seed(3)
    SNAC(**tiny["codec_conf"]["generator_params"]).save_pretrained(official_dir)
    finetune = yaml.safe_load((CONF / "tuning" / "finetune_snac24k.yaml").read_text())
    src, src_key, dst_key = finetune["init_param"][0].split(":")
    assert (src_key, dst_key) == ("", "codec.generator")

    parser = GANCodecTask.get_parser()
    args = parser.parse_args(["--codec", "snac", "--codec_conf", json.dumps(tiny["codec_conf"])])
    model = GANCodecTask.build_model(args)
    load_pretrained_model(f"{official_dir / 'pytorch_model.bin'}::{dst_key}", model, "cpu")
    official_state = torch.load(official_dir / "pytorch_model.bin", weights_only=True)
    for k, v in official_state.items():
        assert torch.equal(model.codec.generator.state_dict()[k], v), k
