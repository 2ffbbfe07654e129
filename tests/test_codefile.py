"""The compact .snac code file (espnet_snac.inference.codefile)."""
from __future__ import annotations

import numpy as np
import pytest

from espnet_snac.inference import codefile
from espnet_snac.inference.codefile import CodeFile, CodeFileError


def make_codes(num_frames: int = 13, strides=(4, 2, 1), codebook_size: int = 4096, seed: int = 0) -> CodeFile:
    rng = np.random.default_rng(seed)
    codes = [rng.integers(0, codebook_size, size=num_frames * strides[0] // s) for s in strides]
    if num_frames >= 2:
        codes[0][:2] = [0, codebook_size - 1]  # extremes of the 12-bit range
    return CodeFile(24000, list(strides), codebook_size, codes, input_length=12345, input_rate=44100,
                    input_channels=2)


@pytest.mark.parametrize("count", [0, 1, 2, 7, 100])
def test_pack12_round_trip(count):
    values = np.random.default_rng(count).integers(0, 4096, size=count)
    packed = codefile.pack12(values)
    assert len(packed) == (count + 1) // 2 * 3
    np.testing.assert_array_equal(codefile.unpack12(packed, count), values)


@pytest.mark.parametrize("num_frames,strides", [(13, (4, 2, 1)), (5, (8, 4, 2, 1)), (0, (4, 2, 1))])
def test_round_trip_preserves_everything(tmp_path, num_frames, strides):
    cf = make_codes(num_frames, strides)
    path = tmp_path / "x.snac"
    size = codefile.write(path, cf)
    assert size == path.stat().st_size
    n_codes = num_frames * sum(strides[0] // s for s in strides)
    assert size == 30 + len(strides) + (n_codes + 1) // 2 * 3 + 4  # header, strides, 12-bit codes, CRC
    back = codefile.read(path)
    assert (back.sample_rate, back.vq_strides, back.codebook_size) == (24000, list(strides), 4096)
    assert (back.input_length, back.input_rate, back.input_channels) == (12345, 44100, 2)
    assert back.num_frames == num_frames
    for a, b in zip(cf.codes, back.codes):
        np.testing.assert_array_equal(a, b)
    assert back.output_length == -(-12345 * 24000 // 44100)


def test_from_model_codes_accepts_batch_of_one():
    import torch

    codes = [torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 6, dtype=torch.long),
             torch.full((1, 12), 4095, dtype=torch.long)]
    cf = codefile.from_model_codes(codes, 24000, [4, 2, 1], 4096, input_length=6000, input_rate=16000)
    assert cf.num_codes == 21 and cf.input_channels == 1
    with pytest.raises(CodeFileError, match="one signal"):
        codefile.from_model_codes([c.repeat(2, 1) for c in codes], 24000, [4, 2, 1], 4096, 6000, 16000)


@pytest.fixture
def good_bytes() -> bytes:
    return codefile.to_bytes(make_codes())


def test_foreign_file_is_refused(tmp_path):
    path = tmp_path / "song.snac"
    path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(100))
    with pytest.raises(CodeFileError, match=r"song\.snac: not a SNAC code file"):
        codefile.read(path)
    path.write_bytes(b"")
    with pytest.raises(CodeFileError, match="not a SNAC code file"):
        codefile.read(path)


@pytest.mark.parametrize("keep", [3, 10, 33, -1, -4, -5])
def test_truncated_file_is_refused(tmp_path, good_bytes, keep):
    path = tmp_path / "cut.snac"
    path.write_bytes(good_bytes[:keep])
    with pytest.raises(CodeFileError, match=r"cut\.snac: .*(truncated|not a SNAC)"):
        codefile.read(path)


def test_trailing_data_is_refused(good_bytes):
    with pytest.raises(CodeFileError, match="trailing data"):
        codefile.from_bytes(good_bytes + b"\x00", label="x.snac")


@pytest.mark.parametrize("offset", [8, 20, 35, 60, -1])
def test_any_flipped_bit_is_detected(tmp_path, good_bytes, offset):
    data = bytearray(good_bytes)
    data[offset] ^= 0x10
    path = tmp_path / "flip.snac"
    path.write_bytes(bytes(data))
    with pytest.raises(CodeFileError, match=r"flip\.snac: "):
        codefile.read(path)


def test_newer_format_version_is_refused(good_bytes):
    data = bytearray(good_bytes)
    data[4] = 99
    with pytest.raises(CodeFileError, match="unsupported format version 99"):
        codefile.from_bytes(bytes(data), label="v.snac")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CodeFileError, match=r"absent\.snac: cannot read"):
        codefile.read(tmp_path / "absent.snac")


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(codebook_size=8192), "12 bits"),
        (dict(vq_strides=[4, 3, 1]), "divide"),
        (dict(input_rate=0), "invalid input"),
    ],
)
def test_writer_refuses_invalid_content(change, message):
    cf = make_codes()
    for k, v in change.items():
        setattr(cf, k, v)
    with pytest.raises(CodeFileError, match=message):
        codefile.to_bytes(cf)


def test_writer_refuses_out_of_range_and_misshaped_codes():
    cf = make_codes()
    cf.codes[1] = cf.codes[1].copy()
    cf.codes[1][0] = 4096
    with pytest.raises(CodeFileError, match="outside"):
        codefile.to_bytes(cf)
    cf = make_codes()
    cf.codes[2] = cf.codes[2][:-1]
    with pytest.raises(CodeFileError, match="level lengths"):
        codefile.to_bytes(cf)
