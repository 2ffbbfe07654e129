"""Kaldi list readers shared by data preparation, scoring and token extraction."""
from __future__ import annotations

import pytest

from espnet_snac.io.scp import ScpError, read_scp, read_segments


def test_read_segments_keeps_order_and_values(tmp_path):
    path = tmp_path / "segments"
    path.write_text("b rec1 0.5 1.25\n\na rec2 0 -1\n")
    assert list(read_segments(path).items()) == [("b", ("rec1", 0.5, 1.25)), ("a", ("rec2", 0.0, -1.0))]


@pytest.mark.parametrize(
    "text,message",
    [
        ("u1 rec 0 1\nu1 rec 1 2\n", "segments:2: duplicate utterance id 'u1'"),
        ("u1 rec 0\n", "segments:1: expected 'utt recording start end'"),
        ("u1 rec zero 1\n", "segments:1: start/end must be numbers"),
    ],
)
def test_read_segments_refuses_bad_files(tmp_path, text, message):
    path = tmp_path / "segments"
    path.write_text(text)
    with pytest.raises(ScpError, match=message):
        read_segments(path)


def test_read_scp_refuses_duplicates_and_missing_files(tmp_path):
    path = tmp_path / "wav.scp"
    path.write_text("u1 /a.wav\nu1 /b.wav\n")
    with pytest.raises(ScpError, match="wav.scp:2: duplicate utterance id 'u1'"):
        read_scp(path)
    with pytest.raises(ScpError, match="cannot read"):
        read_segments(tmp_path / "missing")
