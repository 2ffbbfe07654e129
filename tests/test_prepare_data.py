"""Data preparation: sources, conversion, rejection reasons, splits, resumption and sharding.

Every dataset is built here, offline, from numpy + soundfile.
"""
import io
import json
import os
import re
from typing import Dict, List, Tuple

import numpy as np
import pytest
import soundfile as sf

from espnet_snac.bin.prepare_data import main as prepare_main
from espnet_snac.data import pipeline
from espnet_snac.data.utt_ids import assign_subset, make_utt_id, sanitize

os.environ.setdefault("OMP_NUM_THREADS", "1")


def tone(sr: int, seconds: float, channels: int = 1, amp: float = 0.3, freq: float = 220.0) -> np.ndarray:
    """(T, C) float32 sine, channel c at freq * (c + 1)."""
    t = np.arange(int(round(sr * seconds))) / sr
    cols = [amp * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)]
    return np.stack(cols, axis=1).astype(np.float32)


def encode(samples: np.ndarray, sr: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def write(path: str, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def truncated_wav(sr: int = 16000, seconds: float = 1.0) -> bytes:
    data = encode(tone(sr, seconds), sr, subtype="PCM_16")
    return data[: len(data) // 2]


def nan_wav(sr: int = 16000) -> bytes:
    x = tone(sr, 0.5)
    x[100] = np.nan
    return encode(x, sr, subtype="FLOAT")


# name -> (bytes, expected outcome): an int = samples kept at 24 kHz, a str = rejection reason
def mixed_files() -> Dict[str, Tuple[bytes, object]]:
    return {
        "good_16k.wav": (encode(tone(16000, 1.0), 16000), 24000),
        "spk1/stereo_48k.flac": (encode(tone(48000, 0.5, channels=2), 48000, "FLAC"), 12000),
        "spk1/low_8k.ogg": (encode(tone(8000, 0.5), 8000, "OGG", "VORBIS"), 12000),
        "spk2/hi_96k_4ch.wav": (encode(tone(96000, 0.5, channels=4), 96000, subtype="PCM_24"), 12000),
        "spk2/loud_22k.wav": (encode(np.sign(tone(22050, 0.5, amp=1.0)) * 0.99997, 22050), 12000),
        "too_high_192k.wav": (encode(tone(192000, 0.5), 192000), "unsupported_rate"),
        "empty.wav": (b"", "empty_file"),
        "corrupt.flac": (b"fLaC" + bytes(range(256)) * 4, "decode_error"),
        "notaudio.wav": (b"this is a text file, not a wave file\n" * 20, "decode_error"),
        "truncated.wav": (truncated_wav(), "truncated"),
        "zero.wav": (encode(np.zeros((0, 1), np.float32), 16000), "zero_length"),
        "nan.wav": (nan_wav(), "non_finite"),
        "short.wav": (encode(tone(16000, 0.05), 16000), "too_short"),
        "silent.wav": (encode(np.zeros((16000, 1), np.float32), 16000), "silent"),
    }


def read_table(path: str, sep: str | None = None) -> List[List[str]]:
    with open(path, encoding="utf-8") as fh:
        return [line.rstrip("\n").split(sep, 1 if sep is None else -1) for line in fh if line.strip()]


def run(*argv: str) -> int:
    return prepare_main(list(argv) + ["--no_progress"])


def load_dir(d: str) -> Dict[str, Dict[str, str]]:
    """The Kaldi files of a data directory as dicts."""
    out = {}
    for name in ("wav.scp", "utt2spk", "utt2num_samples"):
        out[name] = dict(read_table(os.path.join(d, name)))
    out["spk2utt"] = dict(read_table(os.path.join(d, "spk2utt")))
    return out


def rejected(d: str) -> Dict[str, str]:
    """utt id -> reason code, from rejected.tsv (header skipped)."""
    rows = read_table(os.path.join(d, "rejected.tsv"), sep="\t")
    assert rows[0] == ["utt_id", "origin", "reason"]
    return {r[0]: r[2].split(" ", 1)[0] for r in rows[1:]}


def summary(d: str) -> dict:
    with open(os.path.join(d, "summary.json")) as fh:
        return json.load(fh)


def check_kaldi_dir(d: str) -> Dict[str, Dict[str, str]]:
    """Consistency every data directory must have; returns its files."""
    k = load_dir(d)
    utts = list(k["wav.scp"])
    assert utts == sorted(utts) and list(k["utt2spk"]) == utts and list(k["utt2num_samples"]) == utts
    assert all(" " not in u and sanitize(u) == u for u in utts)
    spk2utt = {s: v.split() for s, v in k["spk2utt"].items()}
    assert sorted(u for us in spk2utt.values() for u in us) == utts
    assert all(k["utt2spk"][u] == s for s, us in spk2utt.items() for u in us)
    return k


@pytest.fixture()
def hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


# -- units ------------------------------------------------------------------------------------
def test_ids_and_hash_split_are_stable():
    assert sanitize("a b/c:d") == "a_b_c_d"
    assert make_utt_id("1272", "1272-128104-0000") == "1272-128104-0000"
    assert make_utt_id("p225", "p225_001") == "p225_001"
    assert make_utt_id("spk A", "x y") == "spk_A-x_y"
    assert make_utt_id(None, "x") == "x"
    subsets = [assign_subset(f"u{i}", 0.1, 0.2) for i in range(4000)]
    assert subsets == [assign_subset(f"u{i}", 0.1, 0.2) for i in range(4000)]
    assert abs(subsets.count("dev") / 4000 - 0.1) < 0.02 and abs(subsets.count("test") / 4000 - 0.2) < 0.03


# -- folder source: every kind of bad input ---------------------------------------------------
def test_folder_mixed_rates_channels_formats_and_broken_files(tmp_path):
    src = tmp_path / "corpus"
    files = mixed_files()
    for name, (data, _) in files.items():
        write(str(src / name), data)
    write(str(src / "README.txt"), b"not audio, not read")
    out = tmp_path / "out"
    assert run("--source", f"folder:{src}", "--output_dir", str(out), "--speaker_from_dir", "--shard_size", "4") == 0

    k = check_kaldi_dir(str(out))
    want_kept = {n: v for n, (_, v) in files.items() if isinstance(v, int)}
    want_rej = {n: v for n, (_, v) in files.items() if isinstance(v, str)}
    key = lambda n: make_utt_id(os.path.dirname(n) or None, os.path.splitext(n)[0].replace("/", "-"))
    assert set(k["wav.scp"]) == {key(n) for n in want_kept}
    assert rejected(str(out)) == {key(n): r for n, r in want_rej.items()}
    for name, n_samples in want_kept.items():
        utt = key(name)
        assert int(k["utt2num_samples"][utt]) == n_samples
        path = k["wav.scp"][utt]
        assert os.path.isabs(path) and path.endswith(".flac")
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (24000, 1, n_samples, "PCM_16")
    assert k["utt2spk"][key("spk1/stereo_48k.flac")] == "spk1"
    # downmix by averaging: the 48 kHz stereo file holds 220 Hz and 440 Hz at 0.3 each
    audio, _ = sf.read(k["wav.scp"][key("spk1/stereo_48k.flac")])
    spectrum = np.abs(np.fft.rfft(audio)) / len(audio) * 2
    freqs = np.fft.rfftfreq(len(audio), 1 / 24000)
    for f in (220, 440):
        assert abs(spectrum[np.argmin(abs(freqs - f))] - 0.15) < 0.01
    # a full-scale square wave overshoots when resampled: scaled, never clipped
    loud, _ = sf.read(k["wav.scp"][key("spk2/loud_22k.wav")], dtype="int16")
    assert np.abs(loud.astype(np.int32)).max() < 32767
    s = summary(str(out))
    assert s["read"] == len(files) == s["kept"] + s["rejected"]
    assert s["kept"] == len(want_kept)
    assert abs(s["hours"] - sum(want_kept.values()) / 24000 / 3600) < 1e-9
    assert s["reasons"]["decode_error"] == 2


def test_audio_check_on_arrays_and_segments():
    from espnet_snac.data.audio_check import AudioLimits, convert
    from espnet_snac.data.items import Rejected, SourceItem

    limits = AudioLimits()
    pcm = (tone(16000, 1.0)[:, 0] * 32767).astype(np.int16)
    out = convert(SourceItem("a", None, "row 0", (pcm, 16000)), limits)
    assert out.samples.shape == (24000,) and abs(np.abs(out.samples).max() - 0.3) < 0.01
    cut = convert(SourceItem("a", None, "row 0", (pcm, 16000), start=0.25, end=0.75), limits)
    assert cut.samples.shape == (12000,)
    for payload, reason in [((pcm, None), "unsupported_rate"), ((np.array(["x"]), 16000), "decode_error"),
                            (None, "missing_audio"), ("/nonexistent/file.wav", "missing_audio")]:
        with pytest.raises(Rejected) as err:
            convert(SourceItem("a", None, "row 0", payload), limits)
        assert err.value.reason == reason
    with pytest.raises(Rejected) as err:
        convert(SourceItem("a", None, "row 0", (pcm, 16000), start=0.5, end=2.0), limits)
    assert err.value.reason == "truncated"


# -- Hugging Face sources ---------------------------------------------------------------------
def hf_rows(n_speakers: int = 6, per_speaker: int = 3) -> Tuple[dict, int]:
    """Columns for a Dataset with {bytes, path} audio; the last two rows are broken."""
    audio, spk, ids = [], [], []
    for s in range(n_speakers):
        for u in range(per_speaker):
            sr = (16000, 22050, 44100)[u % 3]
            audio.append({"bytes": encode(tone(sr, 0.5, channels=1 + u % 2), sr, "FLAC"), "path": f"s{s}_{u}.flac"})
            spk.append(f"spk{s}")
            ids.append(f"spk{s}_utt{u}")
    audio.append({"bytes": b"RIFF\x00\x00garbage", "path": "bad.wav"})
    spk.append("spk0")
    ids.append("spk0_bad")
    audio.append(None)
    spk.append("spk1")
    ids.append("spk1_none")
    return {"audio": audio, "speaker": spk, "id": ids}, n_speakers * per_speaker


def test_hf_save_to_disk_with_dev_test_split_and_workers(tmp_path, hf_cache):
    import datasets

    columns, n_good = hf_rows()
    ds = datasets.Dataset.from_dict(columns).cast_column("audio", datasets.Audio())
    ds.save_to_disk(str(tmp_path / "disk"))
    out = tmp_path / "data"
    args = ["--source", f"hf:{tmp_path / 'disk'}", "--output_dir", str(out), "--speaker_column", "speaker",
            "--dev_fraction", "0.2", "--test_fraction", "0.2", "--shard_size", "5"]
    assert run(*args, "--nj", "2") == 0
    s = summary(str(out))
    assert (s["read"], s["kept"], s["rejected"]) == (n_good + 2, n_good, 2)
    assert rejected(str(out)) == {"spk0_bad": "decode_error", "spk1_none": "missing_audio"}
    subsets = {name: check_kaldi_dir(str(out / name)) for name in ("train", "dev", "test") if (out / name).exists()}
    all_utts = [u for k in subsets.values() for u in k["wav.scp"]]
    assert sorted(all_utts) == sorted(columns["id"][:n_good])
    speakers = [set(k["spk2utt"]) for k in subsets.values()]
    assert sum(len(x) for x in speakers) == len(set.union(*speakers))  # speaker-disjoint
    for name, k in subsets.items():
        spk = next(iter(k["spk2utt"]))
        expected = {"train": "train", "dev": "dev", "test": "test"}[assign_subset(spk, 0.2, 0.2)]
        assert expected == name
        for utt, n in k["utt2num_samples"].items():
            assert int(n) == 12000 and sf.info(k["wav.scp"][utt]).samplerate == 24000
    assert not (out / "wav.scp").exists()  # with fractions the subsets are the data directories


def test_hf_array_struct_column(tmp_path, hf_cache):
    import datasets

    arrays = [tone(16000, 1.0)[:, 0], (tone(8000, 0.5)[:, 0] * 32767).astype(np.int16).astype(np.float32) / 32768,
              np.full(8000, np.inf, np.float32), np.zeros(0, np.float32)]
    ds = datasets.Dataset.from_dict({"audio": [{"array": a, "sampling_rate": 16000 if i != 1 else 8000}
                                               for i, a in enumerate(arrays)]})
    ds.save_to_disk(str(tmp_path / "arr"))
    out = tmp_path / "out"
    assert run("--source", f"hf:{tmp_path / 'arr'}", "--output_dir", str(out), "--id_column", "none") == 0
    k = check_kaldi_dir(str(out))
    assert k["utt2num_samples"] == {"utt000000000": "24000", "utt000000001": "12000"}
    assert rejected(str(out)) == {"utt000000002": "non_finite", "utt000000003": "zero_length"}


def test_hf_parquet_streaming_caps_and_no_cache(tmp_path, hf_cache):
    import datasets

    columns, n_good = hf_rows(n_speakers=4, per_speaker=3)  # 12 good + 2 broken rows
    ds = datasets.Dataset.from_dict(columns).cast_column("audio", datasets.Audio())
    ds.select(range(0, 7)).to_parquet(str(tmp_path / "pq" / "part-0.parquet"))
    ds.select(range(7, len(ds))).to_parquet(str(tmp_path / "pq" / "part-1.parquet"))

    capped = tmp_path / "capped"
    assert run("--source", f"hf:{tmp_path / 'pq'}", "--streaming", "--output_dir", str(capped),
               "--speaker_column", "speaker", "--max_utts", "5", "--audio_format", "ark") == 0
    s = summary(str(capped))
    assert s["kept"] == 5 and s["read"] == s["kept"] + s["rejected"] and s["capped"]
    k = check_kaldi_dir(str(capped))
    import kaldiio

    loaded = kaldiio.load_scp(str(capped / "wav.scp"))
    for utt in k["wav.scp"]:
        rate, audio = loaded[utt]
        assert rate == 24000 and audio.shape == (int(k["utt2num_samples"][utt]),) and 0.25 < np.abs(audio).max() < 0.35
    assert all(re.fullmatch(r"/.+/audio/shard-0000[01]\.ark:\d+", v) for v in k["wav.scp"].values())

    full = tmp_path / "full"
    assert run("--source", f"hf:parquet:{tmp_path / 'pq' / '*.parquet'}", "--streaming", "--output_dir", str(full),
               "--speaker_column", "speaker", "--max_hours", "1") == 0
    s = summary(str(full))
    assert (s["read"], s["kept"], s["rejected"]) == (n_good + 2, n_good, 2)
    assert abs(s["hours"] - n_good * 0.5 / 3600) < 1e-9
    cached = [f for _, _, fs in os.walk(hf_cache) for f in fs if not f.endswith(".lock")]
    assert cached == []  # streaming wrote nothing into the datasets cache
    assert sorted(os.listdir(full / "audio")) == ["shard-00000", "shard-00001"]  # written shard by shard


def test_hf_jsonl_with_relative_paths(tmp_path, hf_cache):
    base = tmp_path / "jl"
    write(str(base / "clips" / "a.wav"), encode(tone(16000, 0.5), 16000))
    write(str(base / "clips" / "b.mp3"), b"ID3 not really an mp3")
    with open(base / "rows.jsonl", "w") as fh:
        fh.write(json.dumps({"audio": "clips/a.wav", "speaker": "x", "key": "k1"}) + "\n")
        fh.write(json.dumps({"audio": "clips/b.mp3", "speaker": "x", "key": "k2"}) + "\n")
        fh.write(json.dumps({"audio": "clips/missing.wav", "speaker": "y", "key": "k3"}) + "\n")
    out = tmp_path / "out"
    assert run("--source", f"hf:{base / 'rows.jsonl'}", "--streaming", "--output_dir", str(out),
               "--speaker_column", "speaker") == 0
    assert check_kaldi_dir(str(out))["utt2num_samples"] == {"x-k1": "12000"}
    assert rejected(str(out)) == {"x-k2": "decode_error", "y-k3": "missing_audio"}
    assert run("--source", f"hf:{base / 'rows.jsonl'}", "--output_dir", str(tmp_path / "o2"),
               "--speaker_column", "nope") == 2


def test_hf_audiofolder_with_metadata(tmp_path):
    root = tmp_path / "af"
    write(str(root / "train" / "a.wav"), encode(tone(44100, 0.5, channels=2), 44100))
    write(str(root / "train" / "sub" / "b.flac"), encode(tone(32000, 0.5), 32000, "FLAC"))
    with open(root / "train" / "metadata.csv", "w") as fh:
        fh.write("file_name,speaker\na.wav,alice\nsub/b.flac,bob\n")
    out = tmp_path / "out"
    assert run("--source", f"hf:audiofolder:{root}", "--split", "train", "--output_dir", str(out),
               "--speaker_column", "speaker") == 0
    k = check_kaldi_dir(str(out))
    assert k["utt2spk"] == {"alice-a": "alice", "bob-sub-b": "bob"}
    assert set(k["utt2num_samples"].values()) == {"12000"}


# -- Kaldi source -----------------------------------------------------------------------------
def test_kaldi_dir_with_segments_pipes_and_ark_output(tmp_path):
    audio = tmp_path / "audio"
    rec1 = write(str(audio / "rec1.wav"), encode(tone(16000, 2.0), 16000))
    rec2 = write(str(audio / "rec2.flac"), encode(tone(48000, 1.0, channels=2), 48000, "FLAC"))
    src = tmp_path / "kaldi"
    src.mkdir()
    (src / "wav.scp").write_text(
        f"rec1 {rec1}\nrec2 cat {rec2} |\nrec3 {audio / 'missing.wav'}\nrec4 false |\n")
    (src / "segments").write_text(
        "A-rec1-0 rec1 0.0 1.0\nA-rec1-1 rec1 1.0 -1\nB-rec2-0 rec2 0.0 0.5\nB-rec2-1 rec2 0.5 3.0\n"
        "C-rec3-0 rec3 0 1\nC-rec4-0 rec4 0 1\n")
    (src / "utt2spk").write_text("A-rec1-0 A\nA-rec1-1 A\nB-rec2-0 B\nB-rec2-1 B\nC-rec3-0 C\nC-rec4-0 C\n")
    out = tmp_path / "out"
    assert run("--source", f"kaldi:{src}", "--output_dir", str(out), "--audio_format", "ark",
               "--shard_size", "2") == 0
    k = check_kaldi_dir(str(out))
    assert k["utt2num_samples"] == {"A-rec1-0": "24000", "A-rec1-1": "24000", "B-rec2-0": "12000"}
    assert k["utt2spk"]["B-rec2-0"] == "B"
    assert rejected(str(out)) == {"B-rec2-1": "truncated", "C-rec3-0": "missing_audio", "C-rec4-0": "decode_error"}
    assert sorted(os.listdir(out / "audio")) == ["shard-00000.ark", "shard-00001.ark"]
    # the output is itself a valid Kaldi source
    again = tmp_path / "again"
    assert run("--source", f"kaldi:{out}", "--output_dir", str(again)) == 0
    assert check_kaldi_dir(str(again))["utt2num_samples"] == k["utt2num_samples"]


# -- re-runs, interruptions, multi-machine ----------------------------------------------------
def _small_folder(root, n: int = 6) -> None:
    for i in range(n):
        write(str(root / f"f{i}.wav"), encode(tone(16000, 0.5), 16000))
    write(str(root / "broken.wav"), b"RIFF....WAVEjunk")


def test_rerun_is_noop_and_interruption_resumes(tmp_path, monkeypatch, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    _small_folder(src)
    args = ["--source", f"folder:{src}", "--output_dir", str(out), "--shard_size", "2"]
    real = pipeline.process_shard
    calls: List[int] = []

    def flaky(source, index, opts, budget):
        calls.append(index)
        if index == 2 and calls.count(2) == 1:
            raise KeyboardInterrupt  # the run dies in the middle of shard 2
        return real(source, index, opts, budget)

    monkeypatch.setattr(pipeline, "process_shard", flaky)
    with pytest.raises(KeyboardInterrupt):
        run(*args)
    assert not (out / "wav.scp").exists() and not (out / ".prep" / "complete.json").exists()
    assert run(*args) == 0  # resumes: shards 0 and 1 are not redone
    assert calls == [0, 1, 2, 2, 3]
    first = (out / "wav.scp").read_text()
    assert summary(str(out))["kept"] == 6 and rejected(str(out)) == {"broken": "decode_error"}
    mtime = os.path.getmtime(out / "wav.scp")
    capsys.readouterr()
    assert run(*args) == 0  # no-op
    assert calls == [0, 1, 2, 2, 3] and os.path.getmtime(out / "wav.scp") == mtime
    assert "already complete" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--overwrite"):
        run(*args, "--fs", "16000")
    assert (out / "wav.scp").read_text() == first
    assert run(*args, "--fs", "16000", "--overwrite") == 0
    assert set(check_kaldi_dir(str(out))["utt2num_samples"].values()) == {"8000"}


def test_multi_machine_shards_and_merge(tmp_path):
    src, out, ref = tmp_path / "src", tmp_path / "out", tmp_path / "ref"
    _small_folder(src, n=7)
    args = ["--source", f"folder:{src}", "--shard_size", "2", "--dev_fraction", "0.5"]
    assert run(*args, "--output_dir", str(out), "--num_shards", "2", "--shard_index", "0") == 0
    assert not (out / "train").exists()
    with pytest.raises(SystemExit, match="not done"):
        run(*args, "--output_dir", str(out), "--merge_only")
    assert run(*args, "--output_dir", str(out), "--num_shards", "2", "--shard_index", "1") == 0
    assert not (out / "train").exists()
    assert run(*args, "--output_dir", str(out), "--merge_only") == 0
    assert run(*args, "--output_dir", str(ref)) == 0
    for name in ("train", "dev"):
        mine, theirs = check_kaldi_dir(str(out / name)), check_kaldi_dir(str(ref / name))
        assert mine["utt2num_samples"] == theirs["utt2num_samples"] and mine["utt2spk"] == theirs["utt2spk"]
    assert summary(str(out))["read"] == summary(str(ref))["read"] == 8


def test_local_preset_with_split_mapping(tmp_path, hf_cache):
    import datasets

    columns, n_good = hf_rows(n_speakers=2, per_speaker=2)
    ds = datasets.Dataset.from_dict(columns).cast_column("audio", datasets.Audio())
    datasets.DatasetDict({"tr": ds.select(range(3)), "va": ds.select(range(3, len(ds)))}).save_to_disk(
        str(tmp_path / "dd"))
    preset = tmp_path / "mine.yaml"
    preset.write_text(f"name: mine\nsource: hf:{tmp_path / 'dd'}\nspeaker_column: speaker\n"
                      "splits:\n  train: tr\n  dev: va\n")
    out = tmp_path / "data"
    assert run("--preset", str(preset), "--output_dir", str(out)) == 0
    assert len(check_kaldi_dir(str(out / "train"))["wav.scp"]) == 3
    assert len(check_kaldi_dir(str(out / "dev"))["wav.scp"]) == n_good - 3
    assert rejected(str(out / "dev")) == {"spk0_bad": "decode_error", "spk1_none": "missing_audio"}


def test_source_spec_parsing(tmp_path):
    from espnet_snac.data.folder_source import FolderSource
    from espnet_snac.data.hf_source import HFSource
    from espnet_snac.data.source_base import SourceError
    from espnet_snac.data.source_spec import make_source

    hub = make_source("hf:openslr/librispeech_asr:all", split="test.clean")
    assert isinstance(hub, HFSource) and (hub.kind, hub.target, hub.config) == ("hub", "openslr/librispeech_asr", "all")
    write(str(tmp_path / "clips" / "a.wav"), encode(tone(16000, 0.5), 16000))
    assert isinstance(make_source(f"hf:{tmp_path / 'clips'}"), FolderSource)  # local audio-only dir
    for bad, message in [("librispeech", "expected"), ("s3:x", "unknown kind"),
                         (f"hf:parquet:{tmp_path}/*.parquet", "no files match"),
                         (f"hf:{tmp_path}/nothing_here", "does not exist")]:
        with pytest.raises(SourceError, match=message):
            make_source(bad)
