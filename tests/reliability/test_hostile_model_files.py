"""Hostile model files: truncated, foreign, wrong-rate or code-carrying checkpoints and code files
are refused with a message naming the file; no weight file is unpickled as arbitrary objects."""
from __future__ import annotations

import re
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from fault_helpers import REPO, SMALL
from espnet_snac import cli
from espnet_snac.inference import codefile
from espnet_snac.bin import extract_tokens
from espnet_snac.model.checkpoints import CheckpointError
from espnet_snac.model.snac import SNAC, SNAC_32KHZ
from espnet_snac.inference.tokenizer import SNACTokenizer
from speech_samples import synthetic_speech


class _RunsCode:
    """Unpickling this calls ``Path.touch(marker)``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _cli(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def test_truncated_checkpoint_is_refused_naming_the_file(small_model_dir, tmp_path, capsys):
    bad = _copy(small_model_dir, tmp_path / "cut")
    weights = bad / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=re.escape(str(weights))):
        SNAC.from_pretrained(bad)
    sf.write(tmp_path / "in.wav", synthetic_speech(24000, 0.5), 24000)
    rc, err = _cli(["encode", tmp_path / "in.wav", tmp_path / "x.snac", "--model", bad, "--device", "cpu"], capsys)
    assert rc == 1 and str(weights) in err and "Traceback" not in err
    (tmp_path / "wav.scp").write_text(f"a {tmp_path / 'in.wav'}\n")
    with pytest.raises(SystemExit, match=re.escape(str(weights))):
        extract_tokens.main(["--model", str(bad), "--wav_scp", str(tmp_path / "wav.scp"), "--output_dir",
                             str(tmp_path / "tok"), "--num_workers", "0", "--no_progress"])


def test_pickle_with_code_is_never_executed(small_model_dir, tmp_path, capsys):
    """Through the library and through the CLI (``encode`` loads the model before it reads anything
    else, so the hostile file is really opened): refused naming the file, and the payload never runs."""
    marker = tmp_path / "code_ran"
    sf.write(tmp_path / "in.wav", synthetic_speech(24000, 0.5), 24000)
    evil_state = {"encoder.block.0.weight": _RunsCode(marker)}
    official = _copy(small_model_dir, tmp_path / "official")
    torch.save(evil_state, official / "pytorch_model.bin")
    exp = tmp_path / "exp"
    assert cli.main(["convert", str(small_model_dir), str(exp), "-q"]) == 0
    torch.save({"model": evil_state}, exp / cli.ESPNET_WEIGHTS_NAME)
    packed = tmp_path / "packed.zip"
    with zipfile.ZipFile(packed, "w") as zf:
        zf.write(exp / "config.yaml", "exp/config.yaml")
        zf.write(exp / cli.ESPNET_WEIGHTS_NAME, "exp/valid.mel_loss.best.pth")
    for model in (official, exp, exp / cli.ESPNET_WEIGHTS_NAME, packed):
        with pytest.raises(CheckpointError, match="cannot read weights safely") as info:
            SNAC.from_pretrained(model)
        assert str(model) in str(info.value) or str(model.parent) in str(info.value)
        assert not marker.exists(), f"unpickling {model} ran code"
        out = tmp_path / "x.snac"
        rc, err = _cli(["encode", tmp_path / "in.wav", out, "--model", model, "--device", "cpu"], capsys)
        assert rc == 1 and "cannot read weights safely" in err and "Traceback" not in err, err
        assert str(model) in err or str(model.parent) in err, err
        assert not out.exists()
        assert not marker.exists(), f"the CLI ran code unpickling {model}"


def test_every_torch_load_is_weights_only():
    """Source check: every ``torch.load`` in the package, recipe and tools passes weights_only=True."""
    calls = []
    for path in [*REPO.glob("espnet_snac/**/*.py"), *REPO.glob("local/**/*.py"), *REPO.glob("egs2/**/*.py")]:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"torch\.load\(", text):
            depth, end = 0, match.end() - 1
            for end in range(match.end() - 1, len(text)):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            calls.append((path, text[match.start():end + 1]))
    assert calls, "no torch.load found: the scan is broken"
    unsafe = [(str(p.relative_to(REPO)), c) for p, c in calls if "weights_only=True" not in c]
    assert not unsafe, unsafe


def test_weights_of_another_model_are_refused(small_model_dir, tmp_path):
    torch.manual_seed(0)
    foreign = _copy(small_model_dir, tmp_path / "foreign")
    torch.save(torch.nn.Linear(4, 4).state_dict(), foreign / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=re.escape(str(foreign)) + ".*missing keys.*unexpected keys"):
        SNAC.from_pretrained(foreign)
    # a 32 kHz-layout model's weights under the 24 kHz config: the shapes do not match
    other = SNAC(**dict(SNAC_32KHZ, **SMALL, attn_window_size=None)).save_pretrained(tmp_path / "snac32")
    mixed = _copy(small_model_dir, tmp_path / "mixed")
    shutil.copy(other / "pytorch_model.bin", mixed / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=re.escape(str(mixed)) + ": weights do not match"):
        SNAC.from_pretrained(mixed)
    # an ESPnet experiment of another codec
    exp = tmp_path / "dac_exp"
    exp.mkdir()
    (exp / "config.yaml").write_text("codec: dac\ncodec_conf: {}\n")
    shutil.copy(small_model_dir / "pytorch_model.bin", exp / "latest.pth")
    with pytest.raises(CheckpointError, match=re.escape(str(exp / "config.yaml")) + ".*codec 'dac', not 'snac'"):
        SNAC.from_pretrained(exp)


def test_wrong_sample_rate_model_and_code_file_are_refused(small_model_dir, tmp_path, capsys):
    torch.manual_seed(0)
    model32 = SNAC(**dict(SNAC_32KHZ, **SMALL)).save_pretrained(tmp_path / "snac32")
    sf.write(tmp_path / "in.wav", synthetic_speech(24000, 0.5), 24000)
    (tmp_path / "wav.scp").write_text(f"a {tmp_path / 'in.wav'}\n")
    with pytest.raises(SystemExit, match=re.escape(str(model32)) + ".*vq_strides"):
        extract_tokens.main(["--model", str(model32), "--wav_scp", str(tmp_path / "wav.scp"), "--output_dir",
                             str(tmp_path / "tok"), "--num_workers", "0", "--no_progress"])
    assert not (tmp_path / "tok" / "shards").exists()
    rc, _ = _cli(["encode", tmp_path / "in.wav", tmp_path / "x32.snac", "--model", model32, "--device", "cpu",
                  "-q"], capsys)
    assert rc == 0
    rc, err = _cli(["decode", tmp_path / "x32.snac", tmp_path / "y.wav", "--model", small_model_dir, "--device",
                    "cpu"], capsys)
    assert rc == 1 and "x32.snac: codes were made by a model with rate 32000 Hz" in err
    assert not (tmp_path / "y.wav").exists()


def _forge(cf: codefile.CodeFile, codebook_size: int) -> bytes:
    """A code file whose header claims ``codebook_size`` while its codes are larger (valid CRC)."""
    data = bytearray(codefile.to_bytes(cf)[:-4])
    struct.pack_into("<H", data, 6, codebook_size)
    return bytes(data) + struct.pack("<I", zlib.crc32(bytes(data)))


def test_out_of_range_code_ids_are_rejected_at_every_entry_point(small_model_dir, tmp_path, capsys):
    model = SNAC.from_pretrained(small_model_dir)
    frames = 3
    codes = [np.full(frames * 4 // s, 4000, np.int64) for s in model.vq_strides]
    cf = codefile.CodeFile(24000, list(model.vq_strides), 4096, codes, frames * 2048, 24000)
    forged = tmp_path / "forged.snac"
    forged.write_bytes(_forge(cf, 1024))
    with pytest.raises(codefile.CodeFileError, match=re.escape(str(forged)) + ": level 0 has codes outside"):
        codefile.read(forged)
    rc, err = _cli(["decode", forged, tmp_path / "y.wav", "--model", small_model_dir, "--device", "cpu"], capsys)
    assert rc == 1 and "forged.snac: level 0 has codes outside [0, 1024)" in err
    assert not (tmp_path / "y.wav").exists()

    bad = [torch.from_numpy(c)[None] for c in codes]
    bad[2][0, 5] = 4096
    with pytest.raises(ValueError, match=r"level 2 must be in \[0, 4096\).*max 4096"):
        model.decode(bad)
    bad[2][0, 5] = -1
    with pytest.raises(ValueError, match=r"level 2 must be in \[0, 4096\), got min -1"):
        model.decode(bad)
    with pytest.raises(ValueError, match="code levels must be"):
        model.decode([bad[0], bad[1], bad[2][:, :-1]])
    with pytest.raises(ValueError, match="must be integers"):
        model.decode([c.float() for c in bad])
    tokenizer = SNACTokenizer(model)
    with pytest.raises(ValueError, match=r"codes must be in \[0, 4096\)"):
        tokenizer.decode(torch.full((1, 2, 7), 5000))
    with pytest.raises(ValueError, match="outside the id range of that position"):
        tokenizer.detokenize(torch.full((14,), 7 * 4096))
