"""``python -m espnet_snac.bin.extract_tokens``: formats, ESPnet loading, resume, bad input, torchrun."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import soundfile as sf
import torch

from espnet_snac.io.audio_io import load_mono, resample
from espnet_snac.bin.extract_tokens import main
from espnet_snac.model.frames import codes_to_frames, frames_to_codes
from espnet_snac.model.snac import SNAC, SNAC_24KHZ
from espnet_snac.tokens.bpe import UnitBPE
from espnet_snac.tokens.layout import flat_to_frames, frames_to_flat
from speech_samples import demo_files, synthetic_speech

REPO = Path(__file__).resolve().parents[1]
N_GOOD = 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    """A small random 24 kHz-layout model on disk and a wav.scp of real speech plus bad entries."""
    root = tmp_path_factory.mktemp("extract")
    torch.manual_seed(0)
    model = SNAC(**dict(SNAC_24KHZ, encoder_dim=8, decoder_dim=32)).eval()
    model.save_pretrained(root / "model")
    files = [f for f in demo_files() if "/test/" in f.as_posix()][:N_GOOD]
    lines = []
    for i in range(N_GOOD):
        if i < len(files):
            lines.append(f"utt{i} {files[i]}")
        else:
            path = root / f"synth{i}.wav"
            sf.write(path, synthetic_speech(16000, 1.0 + 0.3 * i, seed=i), 16000)
            lines.append(f"utt{i} {path}")
    sf.write(root / "empty.wav", np.zeros(0, np.float32), 16000)
    nan = synthetic_speech(16000, 0.5)
    nan[100] = np.nan
    sf.write(root / "nan.wav", nan, 16000, subtype="FLOAT")
    (root / "garbage.wav").write_bytes(b"not audio at all")
    lines += [f"bad_empty {root / 'empty.wav'}", f"bad_nan {root / 'nan.wav'}",
              f"bad_garbage {root / 'garbage.wav'}", f"bad_missing {root / 'missing.flac'}"]
    (root / "wav.scp").write_text("\n".join(lines) + "\n")
    return root, model


def _run(setup, out, *extra, scp=None):
    root, _ = setup
    return main(["--model", str(root / "model"), "--wav_scp", str(scp or root / "wav.scp"),
                 "--output_dir", str(out), "--num_workers", "0", "--batch_size", "3", "--no_progress",
                 *extra])


def _alone(model, path) -> np.ndarray:
    audio = load_mono(path, 24000)[0]
    with torch.no_grad():
        return codes_to_frames(model.encode(torch.from_numpy(audio)[None, None]))[0].numpy()


def test_formats_are_exact_and_load_with_kaldiio_and_espnet(setup, tmp_path):
    root, model = setup
    out = tmp_path / "out"
    assert _run(setup, out, "--formats", "ark,text,orpheus,npy", "--orpheus_base", "1000") == 0
    wav = dict(line.split(maxsplit=1) for line in (root / "wav.scp").read_text().splitlines())

    codes = {k: np.asarray(v) for k, v in kaldiio.load_scp(str(out / "codes.scp")).items()}
    assert sorted(codes) == [f"utt{i}" for i in range(N_GOOD)]
    for utt, flat in codes.items():
        assert flat.dtype == np.int32 and flat.ndim == 1
        frames = flat.reshape(-1, 7)
        assert np.array_equal(frames, _alone(model, wav[utt]))  # batched run == each encoded alone
        n = int(dict(line.split() for line in (out / "utt2num_samples").read_text().splitlines())[utt])
        assert len(frames) == -(-n // 2048)

    text = {ln.split()[0]: np.array(ln.split()[1:], dtype=np.int64) for ln in (out / "text").read_text().splitlines()}
    orpheus = {ln.split()[0]: np.array(ln.split()[1:], dtype=np.int64)
               for ln in (out / "text_orpheus").read_text().splitlines()}
    assert len((out / "token_list").read_text().splitlines()) == 7 * 4096
    for utt, flat in codes.items():
        frames = flat.reshape(-1, 7)
        assert np.array_equal(flat_to_frames(text[utt]), frames)  # flattened text round-trips
        assert np.array_equal(orpheus[utt], frames_to_flat(frames) + 1000)
        levels = frames_to_codes(torch.from_numpy(frames.astype(np.int64))[None])
        for i in range(3):
            assert np.array_equal(np.load(out / "levels" / f"L{i}" / f"{utt}.npy"), levels[i][0].numpy())

    from espnet2.train.dataset import ESPnetDataset

    ds = ESPnetDataset([(str(out / "codes.scp"), "codes", "kaldi_ark"), (str(out / "text"), "tokens", "text_int"),
                        (str(out / "level2.scp"), "fine", "npy")])
    for utt, flat in codes.items():
        key, item = ds[utt]
        assert key == utt
        assert np.array_equal(item["codes"], flat)
        assert np.array_equal(item["tokens"], frames_to_flat(flat.reshape(-1, 7)))
        assert np.array_equal(item["fine"], frames_to_codes(torch.from_numpy(flat.reshape(1, -1, 7)))[2][0].numpy())

    # bad audio is skipped and reported; counts in = written + rejected
    stats = json.loads((out / "stats.json").read_text())
    rejected = dict(ln.split("\t") for ln in (out / "rejected.tsv").read_text().splitlines())
    assert sorted(rejected) == ["bad_empty", "bad_garbage", "bad_missing", "bad_nan"]
    assert "zero_length" in rejected["bad_empty"] and "non_finite" in rejected["bad_nan"]
    assert stats["utterances_in"] == N_GOOD + 4 == stats["written"] + stats["rejected"]
    assert stats["missing"] == 0
    # per level, the codes written: frame positions [0], [1, 4], [2, 3, 5, 6] (SNAC-24k layout)
    frames = np.concatenate([v.reshape(-1, 7) for v in codes.values()])
    for level, cols in enumerate(([0], [1, 4], [2, 3, 5, 6])):
        counts = np.bincount(frames[:, cols].reshape(-1), minlength=4096)
        p = counts[counts > 0] / counts.sum()
        entry = stats["levels"][level]
        assert entry["codes"] == counts.sum() == len(frames) * len(cols)
        assert entry["used"] == int((counts > 0).sum())
        assert entry["perplexity"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-6)


def test_resume_skips_written_utterances(setup, tmp_path):
    root, model = setup
    out = tmp_path / "out"
    lines = (root / "wav.scp").read_text().splitlines()
    (tmp_path / "first.scp").write_text("\n".join(lines[:2]) + "\n")
    assert _run(setup, out, scp=tmp_path / "first.scp") == 0
    shard_scp = out / "shards" / "part-0000" / "codes.scp"
    # simulate a crash while the next entry was being committed: a partial last line
    with open(shard_scp, "a") as f:
        f.write("utt2 " + str(out / "shards" / "part-0000" / "codes.a"))
    assert _run(setup, out) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["this_run"]["per_rank"][0]["utterances"] == len(lines) - 2  # utt0, utt1 skipped
    assert stats["written"] == N_GOOD
    keys = [ln.split()[0] for ln in shard_scp.read_text().splitlines()]
    assert sorted(keys) == [f"utt{i}" for i in range(N_GOOD)]  # each once, partial line dropped
    wav = dict(line.split(maxsplit=1) for line in lines)
    for utt, flat in kaldiio.load_scp(str(out / "codes.scp")).items():
        assert np.array_equal(np.asarray(flat).reshape(-1, 7), _alone(model, wav[utt]))
    # a third run has nothing left to encode but still reports the whole set
    assert _run(setup, out) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["this_run"]["per_rank"][0]["written"] == 0 and stats["written"] == N_GOOD


def test_bpe_trained_on_one_set_applies_to_another(setup, tmp_path):
    train, dev = tmp_path / "train", tmp_path / "dev"
    assert _run(setup, train, "--bpe_nunits", "300") == 0
    assert _run(setup, dev, "--bpe_model", str(train / "bpe" / "bpe.model")) == 0
    bpe = UnitBPE(train / "bpe" / "bpe.model")
    ids = {ln.split()[0]: ln.split()[1:] for ln in (train / "text").read_text().splitlines()}
    for name in (train, dev):
        for ln in (name / "text_bpe").read_text().splitlines():
            utt, *pieces = ln.split()
            assert len(pieces) <= len(ids[utt])
            assert bpe.decode(pieces).tolist() == [int(i) for i in ids[utt]]
    assert (train / "bpe_token_list").read_text().splitlines() == bpe.pieces()


def test_torchrun_two_cpu_ranks_equal_one_process(setup, tmp_path):
    root, _ = setup
    one, two = tmp_path / "one", tmp_path / "two"
    assert _run(setup, one, "--formats", "ark,text") == 0
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "espnet_snac.bin.extract_tokens", "--model", str(root / "model"), "--wav_scp", str(root / "wav.scp"),
           "--output_dir", str(two), "--num_workers", "0", "--batch_size", "3", "--no_progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (two / "shards" / "part-0000" / "codes.scp").stat().st_size > 0
    assert (two / "shards" / "part-0001" / "codes.scp").stat().st_size > 0
    a = {k: np.asarray(v) for k, v in kaldiio.load_scp(str(one / "codes.scp")).items()}
    b = {k: np.asarray(v) for k, v in kaldiio.load_scp(str(two / "codes.scp")).items()}
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert (one / "text").read_text() == (two / "text").read_text()
    assert (one / "rejected.tsv").read_text() == (two / "rejected.tsv").read_text()
    stats = json.loads((two / "stats.json").read_text())
    assert stats["this_run"]["ranks"] == 2 and stats["written"] + stats["rejected"] == stats["utterances_in"]


def test_data_dir_with_segments_and_ark_audio(setup, tmp_path):
    root, model = setup
    first = next(iter(ln.split()[1] for ln in (root / "wav.scp").read_text().splitlines()))
    audio16, _ = sf.read(first, dtype="int16")
    data = tmp_path / "data"
    data.mkdir()
    kaldiio.save_ark(str(data / "audio.ark"), {"rec_ark": (16000, audio16)}, scp=str(data / "ark.scp"))
    ark_value = (data / "ark.scp").read_text().split()[1]
    (data / "wav.scp").write_text(f"rec_file {first}\nrec_ark {ark_value}\n")
    half = len(audio16) / 2 / 16000
    (data / "segments").write_text(f"a_seg1 rec_file 0.0 {half:.3f}\na_seg2 rec_file {half:.3f} -1\n"
                                   f"b_seg1 rec_ark 0.5 1.25\n")
    out = tmp_path / "out"
    assert main(["--model", str(root / "model"), "--data_dir", str(data), "--output_dir", str(out),
                 "--num_workers", "0", "--no_progress"]) == 0
    codes = {k: np.asarray(v).reshape(-1, 7) for k, v in kaldiio.load_scp(str(out / "codes.scp")).items()}
    assert sorted(codes) == ["a_seg1", "a_seg2", "b_seg1"]
    lo = int(round(half * 16000))
    pieces = {"a_seg1": audio16[:lo], "a_seg2": audio16[lo:], "b_seg1": audio16[8000:20000]}
    for utt, pcm in pieces.items():
        x = resample(pcm.astype(np.float32) / 32768, 16000, 24000)
        with torch.no_grad():
            expected = codes_to_frames(model.encode(torch.from_numpy(x)[None, None]))[0].numpy()
        assert np.array_equal(codes[utt], expected), utt
