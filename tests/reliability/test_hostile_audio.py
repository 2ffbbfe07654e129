"""Hostile audio through data preparation (folder and Kaldi sources) and token extraction: no
crash, every bad file in the rejected report with its reason, every good one kept, and
counts in = kept + rejected. A one-hour file is prepared in bounded memory."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import soundfile as sf

from fault_helpers import subprocess_env
from espnet_snac.bin import extract_tokens, prepare_data
from espnet_snac.io.scp import load_scp_audio
from speech_samples import synthetic_speech

# name -> prepare_data's verdict: None = kept, else the reason code in rejected.tsv
PREP: Dict[str, str | None] = {
    "good": None, "good_flac": None,
    "square_clipped": None,  # full-scale square wave: kept, scaled below full scale if resampling overshoots
    "eight_channels": None,  # downmixed
    "rate_8k": None,  # resampled to 24 kHz
    "flac_named_wav": None,  # the content decides the format, not the extension
    "corrupt": "decode_error", "text_named_wav": "decode_error", "empty": "empty_file",
    "truncated": "truncated", "nan": "non_finite", "inf": "non_finite", "silent": "silent",
    "shorter_than_a_frame": "too_short",
}
# extraction keeps what is valid audio (silence, a fraction of a frame: padded to one frame)
EXTRACT_REJECTS = {"corrupt": "cannot decode", "text_named_wav": "cannot decode", "empty": "cannot decode",
                   "truncated": "truncated", "nan": "non_finite", "inf": "non_finite"}


def _write_hostile(root: Path) -> Dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    speech = synthetic_speech(24000, 1.0, seed=1)
    paths = {name: root / f"{name}.wav" for name in PREP}
    paths["good_flac"] = root / "good_flac.flac"
    sf.write(paths["good"], speech, 24000)
    sf.write(paths["good_flac"], synthetic_speech(16000, 0.8, seed=2), 16000)
    t = np.arange(16000) / 16000
    sf.write(paths["square_clipped"], np.where(np.sin(2 * np.pi * 440 * t) >= 0, 1.0, -1.0), 16000, subtype="FLOAT")
    sf.write(paths["eight_channels"], np.stack([speech * (c + 1) / 9 for c in range(8)], axis=1), 24000)
    sf.write(paths["rate_8k"], synthetic_speech(8000, 1.0, seed=3), 8000)
    sf.write(paths["flac_named_wav"], speech, 24000, format="FLAC")
    paths["corrupt"].write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + np.random.default_rng(0).bytes(3000))
    paths["text_named_wav"].write_text("this is a transcript, not audio\n")
    paths["empty"].write_bytes(b"")
    sf.write(paths["truncated"], speech, 24000)
    data = paths["truncated"].read_bytes()
    paths["truncated"].write_bytes(data[: len(data) // 2])
    for name, bad in (("nan", np.nan), ("inf", np.inf)):
        x = speech.copy()
        x[1000:1100] = bad
        sf.write(paths[name], x, 24000, subtype="FLOAT")
    sf.write(paths["silent"], np.zeros(24000, np.float32), 24000)
    sf.write(paths["shorter_than_a_frame"], speech[:300], 24000)  # 300 samples < one 2048-sample frame
    return paths


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Dict[str, Path]:
    return _write_hostile(tmp_path_factory.mktemp("hostile") / "audio")


def _rejected(path: Path) -> Dict[str, str]:
    rows = path.read_text().splitlines()[1:]
    return {row.split("\t")[0]: row.split("\t")[2] for row in rows}


def _check_prep(out: Path, ids: Dict[str, str]) -> None:
    """``ids``: utterance id in the output -> hostile file name."""
    summary = json.loads((out / "summary.json").read_text())
    kept = {ln.split()[0] for ln in (out / "wav.scp").read_text().splitlines()}
    rejected = _rejected(out / "rejected.tsv")
    assert summary["read"] == len(ids) == summary["kept"] + summary["rejected"] == len(kept) + len(rejected)
    for utt, name in ids.items():
        if PREP[name] is None:
            assert utt in kept, (name, rejected.get(utt))
        else:
            assert rejected.get(utt, "").startswith(PREP[name] + " ("), (name, rejected.get(utt))
    lengths = dict(ln.split() for ln in (out / "utt2num_samples").read_text().splitlines())
    for utt, ref in (ln.split(maxsplit=1) for ln in (out / "wav.scp").read_text().splitlines()):
        audio, rate = load_scp_audio(ref if os.path.isabs(ref) else str(out / ref))
        assert rate == 24000 and audio.shape == (int(lengths[utt]), 1)
        assert np.isfinite(audio).all() and np.abs(audio).max() < 1.0


def test_prepare_data_folder_source(hostile, tmp_path, capsys):
    out = tmp_path / "folder"
    assert prepare_data.main(["--source", f"folder:{hostile['good'].parent}", "--output_dir", str(out),
                              "--no_progress"]) == 0
    capsys.readouterr()
    _check_prep(out, {p.stem: name for name, p in hostile.items()})


def test_prepare_data_kaldi_source(hostile, tmp_path, capsys):
    src = tmp_path / "kaldi_in"
    src.mkdir()
    lines = [f"{name} {path}" for name, path in sorted(hostile.items())]
    lines.append(f"missing {tmp_path / 'nowhere.wav'}")
    (src / "wav.scp").write_text("\n".join(lines) + "\n")
    out = tmp_path / "kaldi"
    assert prepare_data.main(["--source", f"kaldi:{src}", "--output_dir", str(out), "--audio_format", "ark",
                              "--no_progress"]) == 0
    capsys.readouterr()
    PREP["missing"] = "missing_audio"
    try:
        _check_prep(out, {**{name: name for name in hostile}, "missing": "missing"})
    finally:
        del PREP["missing"]


def test_extraction(hostile, small_model_dir, tmp_path, capsys):
    long = tmp_path / "long.wav"  # longer than a window: encoded in windows
    sf.write(long, np.tile(synthetic_speech(24000, 1.0, seed=4), 12), 24000)
    entries = {**hostile, "long": long}
    (tmp_path / "wav.scp").write_text("".join(f"{n} {p}\n" for n, p in sorted(entries.items())))
    out = tmp_path / "tokens"
    assert extract_tokens.main(["--model", str(small_model_dir), "--wav_scp", str(tmp_path / "wav.scp"),
                                "--output_dir", str(out), "--num_workers", "0", "--window_seconds", "4",
                                "--no_progress"]) == 0
    capsys.readouterr()
    stats = json.loads((out / "stats.json").read_text())
    rejected = dict(ln.split("\t", 1) for ln in (out / "rejected.tsv").read_text().splitlines())
    frames = dict(ln.split() for ln in (out / "utt2num_frames").read_text().splitlines())
    assert stats["utterances_in"] == len(entries) == stats["written"] + stats["rejected"] and stats["missing"] == 0
    assert set(rejected) == set(EXTRACT_REJECTS)
    for name, reason in EXTRACT_REJECTS.items():
        assert reason in rejected[name] and str(hostile[name]) in rejected[name], rejected[name]
    assert set(frames) == set(entries) - set(EXTRACT_REJECTS)
    assert frames["shorter_than_a_frame"] == "1" and frames["long"] == str(-(-12 * 24000 // 2048))


def _one_hour(path: Path, rate: int = 24000) -> None:
    """One hour of a quiet tone, written minute by minute (cheap to make, 173 MB of 16-bit PCM)."""
    minute = (0.1 * np.sin(2 * np.pi * 220 * np.arange(60 * rate) / rate)).astype(np.float32)
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16") as fh:
        for _ in range(60):
            fh.write(minute)


def test_one_hour_file_is_prepared_in_bounded_memory(tmp_path, capsys):
    src = tmp_path / "long_in"
    src.mkdir()
    _one_hour(src / "hour.wav")
    sf.write(src / "short.wav", synthetic_speech(24000, 1.0), 24000)
    out = tmp_path / "out"
    tracemalloc.start()
    try:
        assert prepare_data.main(["--source", f"folder:{src}", "--output_dir", str(out), "--no_progress"]) == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    capsys.readouterr()
    pcm_float = 3600 * 24000 * 4
    print(f"one-hour file: peak traced memory {peak / 2**20:.1f} MiB (the signal as float32: {pcm_float / 2**20:.0f} MiB)")
    assert peak < 64 * 2**20
    info = sf.info(str(out / "audio" / "shard-00000" / "hour.flac"))
    assert info.frames == 3600 * 24000 and info.samplerate == 24000
    assert json.loads((out / "summary.json").read_text())["kept"] == 2


def test_long_file_is_extracted_in_default_windows(small_model_dir, tmp_path, monkeypatch):
    """CI's short version of the one-hour test below: a 61 s file through ``extract_tokens`` at its
    default settings (30 s windows, 0.5 s context) reaches the encoder as three windows, none longer
    than a window plus both contexts, and its codes equal those of the whole file encoded at once."""
    import kaldiio

    from espnet_snac.model.snac import SNAC
    from espnet_snac.tokens import batching

    rate, seconds = 24000, 61.0
    audio = synthetic_speech(rate, seconds)
    sf.write(tmp_path / "long.wav", audio, rate, subtype="FLOAT")
    (tmp_path / "wav.scp").write_text(f"long {tmp_path / 'long.wav'}\n")
    encoded = []  # samples of each signal the encoder is given
    real = batching.encode_exact

    def spy(model, signals, *args, **kwargs):
        encoded.extend(int(x.shape[-1]) for x in signals)
        return real(model, signals, *args, **kwargs)

    monkeypatch.setattr(batching, "encode_exact", spy)
    assert extract_tokens.main(["--model", str(small_model_dir), "--wav_scp", str(tmp_path / "wav.scp"),
                                "--output_dir", str(tmp_path / "tok"), "--num_workers", "0", "--no_progress"]) == 0
    window = int(30 * rate) // 2048 * 2048
    context = -(-rate // 2 // 2048) * 2048
    assert len(encoded) == 3 and max(encoded) <= window + 2 * context, encoded
    codes = np.asarray(kaldiio.load_scp(str(tmp_path / "tok" / "codes.scp"))["long"]).reshape(-1, 7)
    assert len(codes) == -(-int(rate * seconds) // 2048)
    model = SNAC.from_pretrained(small_model_dir).eval()
    whole = batching.BatchEncoder(model, batch_size=1, window_seconds=0).encode([audio])[0]
    assert np.array_equal(codes, whole)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SNAC_SLOW_TESTS") != "1",
                    reason="encodes one hour of audio (minutes on CPU); set SNAC_SLOW_TESTS=1")
def test_one_hour_file_is_extracted_in_windows(small_model_dir, tmp_path):
    _one_hour(tmp_path / "hour.wav")
    (tmp_path / "wav.scp").write_text(f"hour {tmp_path / 'hour.wav'}\n")
    code = ("import resource, sys\nfrom espnet_snac.bin.extract_tokens import main\n"
            "print('base_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nrc = main(sys.argv[1:])\n"
            "print('peak_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code, "--model", str(small_model_dir), "--wav_scp",
                           str(tmp_path / "wav.scp"), "--output_dir", str(tmp_path / "tok"), "--num_workers", "0",
                           "--no_progress"], env=subprocess_env(), capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-3000:]
    base, peak = (int(proc.stdout.split(key)[1].split()[0]) * 1024 for key in ("base_kib", "peak_kib"))
    signal_bytes = 3600 * 24000 * 4
    print(f"one-hour extraction: peak RSS {peak / 2**20:.0f} MiB, {(peak - base) / 2**20:.0f} MiB above the "
          f"process after imports; the signal as float32 is {signal_bytes / 2**20:.0f} MiB")
    # the samples are held (decoded once, plus transient copies); the encoder sees one window at a
    # time: one full-length activation of its first layer alone would take 8 x the signal
    assert peak - base < 3 * signal_bytes
    frames = (tmp_path / "tok" / "utt2num_frames").read_text().split()
    assert frames == ["hour", str(3600 * 24000 // 2048 + (3600 * 24000 % 2048 > 0))]
