"""Shared clusters: every file the tools write gets the mode the user's umask gives any new file."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import soundfile as sf

from espnet_snac import cli
from espnet_snac.bin import extract_tokens, prepare_data, score
from speech_samples import synthetic_speech


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_written_files_follow_the_umask(umask, small_model_dir, tmp_path, capsys):
    expected = 0o666 & ~umask
    audio = tmp_path / "in"
    audio.mkdir()
    for i in range(2):
        sf.write(audio / f"a{i}.wav", synthetic_speech(16000, 1.5, seed=i), 16000)
    (audio / "bad.wav").write_bytes(b"not audio")

    data = tmp_path / "data"
    assert prepare_data.main(["--source", f"folder:{audio}", "--output_dir", str(data), "--no_progress"]) == 0
    tokens = tmp_path / "tokens"
    assert extract_tokens.main(["--model", str(small_model_dir), "--data_dir", str(data), "--output_dir",
                                str(tokens), "--formats", "ark,text,orpheus,npy,codec", "--num_workers", "0",
                                "--no_progress"]) == 0
    assert cli.main(["encode", str(audio / "a0.wav"), str(tmp_path / "a0.snac"), "--model",
                     str(small_model_dir), "--device", "cpu", "-q"]) == 0
    assert cli.main(["decode", str(tmp_path / "a0.snac"), str(tmp_path / "a0.out.wav"), "--model",
                     str(small_model_dir), "--device", "cpu", "-q", "--seed", "0"]) == 0
    assert cli.main(["convert", str(small_model_dir), str(tmp_path / "exp"), "-q"]) == 0
    assert cli.main(["convert", str(tmp_path / "exp"), str(tmp_path / "official"), "-q"]) == 0
    (tmp_path / "hyp.scp").write_text(f"a0 {audio / 'a0.wav'}\n")  # scoring needs speech, not random-model output
    (tmp_path / "ref.scp").write_text(f"a0 {audio / 'a0.wav'}\n")
    assert score.main(["--ref_scp", str(tmp_path / "ref.scp"), "--hyp_scp", str(tmp_path / "hyp.scp"),
                       "--output_dir", str(tmp_path / "scoring")]) == 0
    capsys.readouterr()

    checked = [
        data / "wav.scp", data / "utt2spk", data / "spk2utt", data / "utt2num_samples", data / "rejected.tsv",
        data / "summary.json", tokens / "codes.scp", tokens / "text", tokens / "text_orpheus",
        tokens / "token_list", tokens / "utt2num_frames", tokens / "rejected.tsv", tokens / "stats.json",
        tokens / "level0.scp", tokens / "codec.scp", tokens / "codec.ark", tokens / "codec_token_list",
        tokens / "shards" / "part-0000" / "codes.ark",
        tmp_path / "a0.snac", tmp_path / "a0.out.wav",
        tmp_path / "exp" / "config.yaml", tmp_path / "exp" / cli.ESPNET_WEIGHTS_NAME,
        tmp_path / "official" / "config.json", tmp_path / "official" / "pytorch_model.bin",
        tmp_path / "scoring" / "results.json", tmp_path / "scoring" / "results.md",
        tmp_path / "scoring" / "utt_results.tsv",
    ]
    checked += sorted((data / ".prep").rglob("*.*")) + sorted((data / "audio").rglob("*.flac"))
    checked += sorted((tokens / "levels").rglob("*.npy"))
    wrong = {str(p.relative_to(tmp_path)): oct(_mode(p)) for p in checked if _mode(p) != expected}
    assert not wrong, f"expected {oct(expected)} under umask {oct(umask)}: {wrong}"
    assert "a1" in (data / "wav.scp").read_text() and "bad" in (data / "rejected.tsv").read_text()
    leftovers = [p for p in tmp_path.rglob("*.tmp")]
    assert not leftovers, leftovers
