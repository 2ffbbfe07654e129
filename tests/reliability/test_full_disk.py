"""Full disk (an injected ``OSError(ENOSPC)``) while writing dumps, tokens and models: a clear
error, nothing left that a later stage would read as complete, and a re-run after freeing space
completes with the output of an undisturbed run."""
from __future__ import annotations

import errno
import io
import os
from pathlib import Path
from typing import Callable, List

import numpy as np
import pytest
import soundfile as sf
import torch

from espnet_snac import cli
from espnet_snac.bin import extract_tokens, prepare_data
from espnet_snac.data import audio_writers
from espnet_snac.model.snac import SNAC
from espnet_snac.tokens import shards
from speech_samples import synthetic_speech

REAL_FSYNC = os.fsync


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fsync_fails_for(marker: str) -> Callable[[int], None]:
    """An ``os.fsync`` that fails like a full disk for files whose name contains ``marker``."""
    def fsync(fd: int) -> None:
        if marker in os.path.basename(os.readlink(f"/proc/self/fd/{fd}")):
            raise _enospc()
        REAL_FSYNC(fd)
    return fsync


def _fail_on_call(n: int, write_part: Callable, original: Callable) -> Callable:
    """Call ``original`` until the ``n``-th call, which writes part of its data and then fails."""
    calls: List[int] = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            write_part(*args, **kwargs)
            raise _enospc()
        return original(*args, **kwargs)
    return wrapper


def _inputs(root: Path, n: int = 6) -> Path:
    root.mkdir()
    for i in range(n):
        sf.write(root / f"a{i}.wav", synthetic_speech(16000, 0.5 + 0.1 * i, seed=i), 16000)
    (root / "junk.wav").write_bytes(b"junk")
    return root


def _normalized(directory: Path, name: str) -> str:
    return (directory / name).read_text().replace(str(directory), "<out>")


def test_prepare_data(tmp_path, monkeypatch, capsys):
    src = _inputs(tmp_path / "in")
    args = ["--source", f"folder:{src}", "--shard_size", "3", "--no_progress", "--output_dir"]
    clean, full = tmp_path / "clean", tmp_path / "full"
    assert prepare_data.main(args + [str(clean)]) == 0

    # the disk fills while the second shard writes its audio
    def write_part(self, utt, samples):
        Path(self.directory, f"{utt}.flac").write_bytes(b"fLaC\x00")
    monkeypatch.setattr(audio_writers.FlacShardWriter, "write",
                        _fail_on_call(5, write_part, audio_writers.FlacShardWriter.write))
    capsys.readouterr()
    assert prepare_data.main(args + [str(full)]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "re-run the same command to resume" in err
    assert not (full / "wav.scp").exists() and not (full / ".prep" / "complete.json").exists()
    assert (full / ".prep" / "shards" / "shard-00000.json").exists()
    assert not (full / ".prep" / "shards" / "shard-00001.json").exists()
    monkeypatch.undo()

    # ... and again while the data directory is written: no wav.scp, no temporary file left
    monkeypatch.setattr(os, "fsync", _fsync_fails_for(".wav.scp."))
    assert prepare_data.main(args + [str(full)]) == 1
    assert f"writing {full / 'wav.scp'}" in capsys.readouterr().err
    assert not (full / "wav.scp").exists() and not list(full.rglob("*.tmp"))
    monkeypatch.undo()

    assert prepare_data.main(args + [str(full)]) == 0
    for name in ("wav.scp", "utt2num_samples", "utt2spk", "rejected.tsv"):
        assert _normalized(clean, name) == _normalized(full, name), name
    assert (full / "wav.scp").read_text().count("\n") == 6


@pytest.fixture()
def scp(tmp_path) -> Path:
    src = _inputs(tmp_path / "in")
    lines = [f"{p.stem} {p}" for p in sorted(src.iterdir())]
    (tmp_path / "wav.scp").write_text("\n".join(lines) + "\n")
    return tmp_path / "wav.scp"


def test_extract_tokens(small_model_dir, scp, tmp_path, monkeypatch, capsys):
    args = ["--model", str(small_model_dir), "--wav_scp", str(scp), "--output_dir", "out", "--num_workers", "0",
            "--no_progress", "--formats", "ark,text"]
    clean, full = tmp_path / "clean", tmp_path / "full"
    clean.mkdir(), full.mkdir()
    monkeypatch.chdir(clean)
    assert extract_tokens.main(args) == 0

    # the disk fills in the middle of the third ark record
    def write_part(fd, array, *a, **k):
        buf = io.BytesIO()
        shards.write_array(buf, array)
        fd.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    real_write_array = shards.write_array
    monkeypatch.chdir(full)
    monkeypatch.setattr(shards, "write_array", _fail_on_call(3, write_part, real_write_array))
    with pytest.raises(SystemExit, match="No space left on device.*re-run the same command"):
        extract_tokens.main(args)
    monkeypatch.setattr(shards, "write_array", real_write_array)
    part = full / "out" / "shards" / "part-0000"
    assert (part / "codes.scp").read_text().count("\n") == 2 and not (full / "out" / "codes.scp").exists()

    # ... and while the merged files are written: no merged scp, the merge is not marked finished
    monkeypatch.setattr(os, "fsync", _fsync_fails_for(".text."))
    with pytest.raises(SystemExit, match="No space left on device"):
        extract_tokens.main(args)
    monkeypatch.setattr(os, "fsync", REAL_FSYNC)
    assert not (full / "out" / "codes.scp").exists() and not (full / "out" / "stats.json").exists()
    assert not list(full.rglob("*.tmp"))

    capsys.readouterr()
    assert extract_tokens.main(args) == 0
    for name in ("codes.scp", "text", "utt2num_frames", "rejected.tsv", "shards/part-0000/codes.ark",
                 "shards/part-0000/codes.scp", "shards/part-0000/utt2num_samples"):
        assert (clean / "out" / name).read_bytes() == (full / "out" / name).read_bytes(), name


def test_model_files(small_model_dir, tmp_path, monkeypatch, capsys):
    real_save = torch.save

    def half_save(obj, f, *a, **k):
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise _enospc()
    exp, official = tmp_path / "exp", tmp_path / "official"
    monkeypatch.setattr(torch, "save", half_save)
    assert cli.main(["convert", str(small_model_dir), str(exp), "-q"]) == 1
    assert cli.main(["convert", str(small_model_dir), str(official), "--to", "official", "-q"]) == 1
    err = capsys.readouterr().err
    assert f"writing {exp / cli.ESPNET_WEIGHTS_NAME}" in err and f"writing {official / 'pytorch_model.bin'}" in err
    assert "No space left on device" in err
    assert not (exp / cli.ESPNET_WEIGHTS_NAME).exists() and not (official / "pytorch_model.bin").exists()
    monkeypatch.undo()

    sf.write(tmp_path / "in.wav", synthetic_speech(24000, 0.5), 24000)
    monkeypatch.setattr(os, "fsync", _fsync_fails_for("x.snac"))
    assert cli.main(["encode", str(tmp_path / "in.wav"), str(tmp_path / "x.snac"), "--model", str(small_model_dir),
                     "--device", "cpu", "-q"]) == 1
    assert "No space left on device" in capsys.readouterr().err and not (tmp_path / "x.snac").exists()
    monkeypatch.undo()
    assert not list(tmp_path.rglob("*.tmp"))

    assert cli.main(["convert", str(small_model_dir), str(exp), "-q"]) == 0
    assert cli.main(["convert", str(small_model_dir), str(official), "--to", "official", "-q"]) == 0
    reference = SNAC.from_pretrained(small_model_dir).state_dict()
    for model in (exp, official):
        state = SNAC.from_pretrained(model).state_dict()
        assert all(torch.equal(state[k], reference[k]) for k in reference)


@pytest.fixture()
def small_disk(tmp_path):
    """A 2 MiB tmpfs (needs root and mount; skipped elsewhere: the tests above inject ENOSPC)."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` up to ``leave`` free bytes with one file (delete it to free the space)."""
    st = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def test_real_full_disk(small_disk, small_model_dir, scp, tmp_path, monkeypatch, capsys):
    """The same on a really full file system: libsndfile's and Python's write errors."""
    src = tmp_path / "loud"
    src.mkdir()
    for i in range(4):
        sf.write(src / f"n{i}.wav", 0.3 * np.random.default_rng(i).standard_normal(48000), 24000)
    args = ["--source", f"folder:{src}", "--no_progress", "--shard_size", "2", "--output_dir"]
    clean = tmp_path / "clean"
    assert prepare_data.main(args + [str(clean)]) == 0
    filler = _fill(small_disk, 150_000)  # room for about one and a half of the four outputs
    capsys.readouterr()
    assert prepare_data.main(args + [str(small_disk / "data")]) == 1
    err = capsys.readouterr().err
    assert "is the disk full?" in err or "No space left on device" in err, err
    assert not (small_disk / "data" / "wav.scp").exists()
    filler.unlink()
    assert prepare_data.main(args + [str(small_disk / "data")]) == 0
    for name in ("wav.scp", "utt2num_samples"):
        assert _normalized(clean, name) == _normalized(small_disk / "data", name)

    tok = ["--model", str(small_model_dir), "--wav_scp", str(scp), "--output_dir", "out", "--num_workers", "0",
           "--no_progress"]
    (tmp_path / "tclean").mkdir()
    monkeypatch.chdir(tmp_path / "tclean")
    assert extract_tokens.main(tok) == 0
    monkeypatch.chdir(small_disk)
    filler = _fill(small_disk, 3000)
    with pytest.raises(SystemExit, match="No space left on device"):
        extract_tokens.main(tok)
    assert not (small_disk / "out" / "stats.json").exists()
    filler.unlink()
    assert extract_tokens.main(tok) == 0
    for name in ("codes.scp", "text", "shards/part-0000/codes.ark"):
        assert (tmp_path / "tclean" / "out" / name).read_bytes() == (small_disk / "out" / name).read_bytes(), name
