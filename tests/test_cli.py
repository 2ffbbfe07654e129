"""The espnet-snac command line (espnet_snac.cli) with a small randomly initialised SNAC."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from espnet_snac import cli
from espnet_snac.inference import codefile
from espnet_snac.io.audio_io import resample
from espnet_snac.model.snac import SNAC
from speech_samples import speech

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]
# Same topology as the 24 kHz release (hop 512, strides 4/2/1, 4096 codes), much narrower.
SMALL = dict(sampling_rate=24000, encoder_dim=8, encoder_rates=[2, 4, 8, 8], decoder_dim=32,
             decoder_rates=[8, 8, 4, 2], attn_window_size=None, codebook_size=4096, codebook_dim=8,
             vq_strides=[4, 2, 1], noise=True, depthwise=True)
BITRATE = 12 * 24000 / 512 * (1 / 4 + 1 / 2 + 1)  # 984.375 bit/s
SEED = 7


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return SNAC(**SMALL).save_pretrained(tmp_path_factory.mktemp("model") / "small")


@pytest.fixture(scope="module")
def model(model_dir) -> SNAC:
    return SNAC.from_pretrained(model_dir)


def run_cli(args, capsys):
    rc = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def write_input(path: Path, rate: int, channels: int, seconds: float = 1.7) -> np.ndarray:
    mono = speech(rate, seconds, index=rate % 7)
    data = np.stack([mono * (1.0 - 0.3 * c) for c in range(channels)], axis=1)
    sf.write(path, data, rate, subtype="PCM_16")
    return sf.read(path, dtype="float32", always_2d=True)[0]


@pytest.mark.parametrize("rate,channels", [(16000, 1), (24000, 1), (44100, 2), (48000, 2)])
def test_encode_decode_round_trip(tmp_path, capsys, model_dir, model, rate, channels):
    data = write_input(tmp_path / "in.wav", rate, channels)
    n = data.shape[0]

    rc, out, err = run_cli(["encode", tmp_path / "in.wav", tmp_path / "x.snac", "--model", model_dir,
                            "--device", "cpu"], capsys)
    assert rc == 0, err
    assert f"{BITRATE:.1f} bit/s" in out and "real-time factor" in out
    assert f"{16 * rate * channels / BITRATE:.1f}x vs 16-bit PCM" in out
    assert ("downmixed 2 channels to mono" in out) == (channels == 2)
    assert ("resampled" in out) == (rate != 24000)

    # the file holds exactly what the model produces for the downmixed, resampled input
    cf = codefile.read(tmp_path / "x.snac")
    assert (cf.input_rate, cf.input_length, cf.input_channels) == (rate, n, channels)
    mono24 = resample(data.mean(axis=1), rate, 24000)
    with torch.inference_mode():
        expected = model.encode(torch.from_numpy(mono24).view(1, 1, -1))
    assert cf.num_frames == math.ceil(mono24.size / 2048)
    for got, want in zip(cf.codes, expected):
        np.testing.assert_array_equal(got, want[0].numpy())

    rc, out, err = run_cli(["decode", tmp_path / "x.snac", tmp_path / "y.wav", "--model", model_dir,
                            "--device", "cpu", "--seed", SEED], capsys)
    assert rc == 0, err
    y, y_rate = sf.read(tmp_path / "y.wav", dtype="float32")
    target = -(-n * 24000 // rate)
    assert y_rate == 24000 and y.shape == (target,)
    assert "trimmed to the input length" in out and "model rate 24000 Hz" in out
    with torch.inference_mode():
        want = model.decode(expected, length=target, noise_seed=SEED)[0, 0].numpy()
    np.testing.assert_allclose(y, want, atol=1.5 / 32768)  # 16-bit PCM output

    # reconstruct = encode + decode, with the same seed the same samples
    rc, out, err = run_cli(["reconstruct", tmp_path / "in.wav", tmp_path / "r.wav", "--model", model_dir,
                            "--device", "cpu", "--seed", SEED], capsys)
    assert rc == 0, err
    r, r_rate = sf.read(tmp_path / "r.wav", dtype="float32")
    assert r_rate == 24000
    np.testing.assert_array_equal(r, y)


def test_reconstruct_can_write_at_the_input_rate(tmp_path, capsys, model_dir):
    data = write_input(tmp_path / "in.wav", 44100, 2)
    rc, out, err = run_cli(["reconstruct", tmp_path / "in.wav", tmp_path / "r.wav", "--model", model_dir,
                            "--output_rate", "input", "--no_noise", "--quiet"], capsys)
    assert rc == 0, err
    assert out == ""
    r, r_rate = sf.read(tmp_path / "r.wav", dtype="float32")
    assert r_rate == 44100 and r.shape == (data.shape[0],)


def test_decode_without_seed_is_random_and_no_noise_is_deterministic(tmp_path, capsys, model_dir):
    write_input(tmp_path / "in.wav", 24000, 1, seconds=1.0)
    assert run_cli(["encode", tmp_path / "in.wav", tmp_path / "x.snac", "--model", model_dir, "-q"], capsys)[0] == 0
    outs = {}
    for name, extra in [("a", []), ("b", []), ("c", ["--no_noise"]), ("d", ["--no_noise"])]:
        assert run_cli(["decode", tmp_path / "x.snac", tmp_path / f"{name}.wav", "--model", model_dir, "-q",
                        *extra], capsys)[0] == 0
        outs[name] = sf.read(tmp_path / f"{name}.wav")[0]
    assert not np.array_equal(outs["a"], outs["b"])
    np.testing.assert_array_equal(outs["c"], outs["d"])


def test_corrupted_and_foreign_code_files_are_refused(tmp_path, capsys, model_dir):
    write_input(tmp_path / "in.wav", 16000, 1, seconds=1.0)
    assert run_cli(["encode", tmp_path / "in.wav", tmp_path / "x.snac", "--model", model_dir, "-q"], capsys)[0] == 0
    data = bytearray((tmp_path / "x.snac").read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / "bad.snac").write_bytes(bytes(data))
    rc, _, err = run_cli(["decode", tmp_path / "bad.snac", tmp_path / "y.wav", "--model", model_dir], capsys)
    assert rc == 1 and "bad.snac: corrupted: checksum mismatch" in err
    (tmp_path / "cut.snac").write_bytes(bytes(data[:20]))
    rc, _, err = run_cli(["decode", tmp_path / "cut.snac", tmp_path / "y.wav", "--model", model_dir], capsys)
    assert rc == 1 and "cut.snac: truncated" in err
    rc, _, err = run_cli(["decode", tmp_path / "in.wav", tmp_path / "y.wav", "--model", model_dir], capsys)
    assert rc == 1 and "in.wav: not a SNAC code file" in err
    assert not (tmp_path / "y.wav").exists()


def test_codes_from_another_model_are_refused(tmp_path, capsys, model_dir):
    other = SNAC(**{**SMALL, "codebook_size": 1024}).save_pretrained(tmp_path / "other")
    write_input(tmp_path / "in.wav", 24000, 1, seconds=1.0)
    assert run_cli(["encode", tmp_path / "in.wav", tmp_path / "x.snac", "--model", model_dir, "-q"], capsys)[0] == 0
    rc, _, err = run_cli(["decode", tmp_path / "x.snac", tmp_path / "y.wav", "--model", other], capsys)
    assert rc == 1 and "codebook 4096" in err and "Decode with the model that encoded the file" in err


def test_bad_inputs_give_clear_errors(tmp_path, capsys, model_dir):
    rc, _, err = run_cli(["encode", tmp_path / "nope.wav", tmp_path / "x.snac", "--model", model_dir], capsys)
    assert rc == 1 and "nope.wav" in err
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    rc, _, err = run_cli(["encode", tmp_path / "junk.wav", tmp_path / "x.snac", "--model", model_dir], capsys)
    assert rc == 1 and "junk.wav: cannot decode audio" in err
    rc, _, err = run_cli(["encode", tmp_path / "junk.wav", tmp_path / "x.snac", "--model", tmp_path / "nomodel"],
                         capsys)
    assert rc == 1 and "--model" in err and "nomodel" in err
    (tmp_path / "broken_model").mkdir()
    (tmp_path / "broken_model" / "config.json").write_text('{"sampling_rate": 24000}')
    (tmp_path / "broken_model" / "pytorch_model.bin").write_bytes(b"\x80\x02junk")
    rc, _, err = run_cli(["reconstruct", tmp_path / "in.wav", tmp_path / "y.wav", "--model",
                          tmp_path / "broken_model"], capsys)
    assert rc == 1 and "--model" in err and "broken_model/pytorch_model.bin: cannot read weights" in err


def test_convert_official_to_espnet_and_back(tmp_path, capsys, model_dir, model):
    import yaml

    rc, out, err = run_cli(["convert", model_dir, tmp_path / "exp"], capsys)
    assert rc == 0, err
    config = yaml.safe_load((tmp_path / "exp" / "config.yaml").read_text())
    assert config["codec"] == "snac" and config["codec_conf"]["generator_params"] == model.config
    state = torch.load(tmp_path / "exp" / cli.ESPNET_WEIGHTS_NAME, weights_only=True)
    assert all(k.startswith("codec.generator.") for k in state)
    assert len(state) == len(model.state_dict())

    # the experiment works as --model, and converts back to identical official weights
    reloaded = SNAC.from_pretrained(tmp_path / "exp")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[k], v, rtol=0, atol=0)
    rc, _, err = run_cli(["convert", tmp_path / "exp", tmp_path / "official"], capsys)
    assert rc == 0, err
    back = torch.load(tmp_path / "official" / "pytorch_model.bin", weights_only=True)
    assert back.keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(back[k], v, rtol=0, atol=0)

    rc, _, err = run_cli(["convert", model_dir, tmp_path / "exp"], capsys)
    assert rc == 1 and "--force" in err


def test_experiment_and_packed_model_decode_like_the_official_dir(tmp_path, capsys, model_dir):
    import zipfile

    assert run_cli(["convert", model_dir, tmp_path / "exp", "-q"], capsys)[0] == 0
    with zipfile.ZipFile(tmp_path / "packed.zip", "w") as zf:  # the layout espnet2.bin.pack writes
        for name in ("config.yaml", cli.ESPNET_WEIGHTS_NAME):
            zf.write(tmp_path / "exp" / name, f"exp/snac/{name}")
    write_input(tmp_path / "in.wav", 16000, 1, seconds=1.0)
    outputs = []
    for i, spec in enumerate([model_dir, tmp_path / "exp", tmp_path / "exp" / cli.ESPNET_WEIGHTS_NAME,
                              tmp_path / "packed.zip"]):
        rc, _, err = run_cli(["reconstruct", tmp_path / "in.wav", tmp_path / f"{i}.wav", "--model", spec,
                              "--seed", SEED, "-q"], capsys)
        assert rc == 0, err
        outputs.append(sf.read(tmp_path / f"{i}.wav")[0])
    for o in outputs[1:]:
        np.testing.assert_array_equal(o, outputs[0])


def test_convert_keeps_a_training_config_template(tmp_path, capsys, model_dir):
    import yaml

    template = {"codec": "snac", "codec_conf": {"lambda_mel": 15.0, "generator_params": {"encoder_dim": 48}},
                "optim": "adamw", "model_conf": {}}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(template))
    rc, _, err = run_cli(["convert", model_dir, tmp_path / "exp", "--config", tmp_path / "train.yaml"], capsys)
    assert rc == 0, err
    config = yaml.safe_load((tmp_path / "exp" / "config.yaml").read_text())
    assert config["optim"] == "adamw" and config["codec_conf"]["lambda_mel"] == 15.0
    assert config["codec_conf"]["generator_params"]["encoder_dim"] == SMALL["encoder_dim"]


def test_module_entry_point_starts_without_espnet2():
    # `python -m espnet_snac --help`, then check that nothing imported espnet2 (slow) on the way
    code = ("import runpy, sys\n"
            "sys.argv = ['espnet-snac', '--help']\n"
            "try:\n    runpy.run_module('espnet_snac', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print('espnet2 imported:', 'espnet2' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "reconstruct" in proc.stdout and "convert" in proc.stdout
    assert proc.stdout.strip().endswith("espnet2 imported: False")
