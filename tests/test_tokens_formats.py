"""Speech-LM files of ``extract_tokens``, each read back by the library it is meant for.

``codec`` (Kaldi ark/scp of flat ids + ``codec_token_list``): kaldiio and ESPnet's dataset reader;
``datasets``: ``datasets.load_from_disk``; ``--frames floor``: ESPnet's codec-dump frame count.
"""
from __future__ import annotations

import json

import kaldiio
import numpy as np
import pytest
import soundfile as sf
import torch

from espnet_snac.bin.extract_tokens import main
from espnet_snac.model.snac import SNAC, SNAC_24KHZ
from espnet_snac.tokens.layout import frames_to_flat
from espnet_snac.tokens.merge import merge_shards
from espnet_snac.tokens.shards import ShardWriter, shard_dir
from speech_samples import demo_files, synthetic_speech

BASE = 128266
TRANSCRIPTS = {"a_real": "the birch canoe slid on the smooth planks", "b_exact": "glue the sheet",
               "c_short": "", "d_real": "it is easy to tell the depth of a well"}


@pytest.fixture(scope="module")
def data(tmp_path_factory, one_thread):
    """A small random 24 kHz-layout model and a Kaldi data dir (wav.scp + text): two demo-corpus
    utterances, one of exactly 5 frames and one shorter than a frame."""
    root = tmp_path_factory.mktemp("formats")
    torch.manual_seed(0)
    SNAC(**dict(SNAC_24KHZ, encoder_dim=8, decoder_dim=32)).eval().save_pretrained(root / "model")
    real = [f for f in demo_files() if "/test/" in f.as_posix()][:2]
    paths = {}
    for utt, n in (("b_exact", 5 * 2048), ("c_short", 1500)):
        paths[utt] = root / f"{utt}.wav"
        sf.write(paths[utt], synthetic_speech(24000, n / 24000 + 0.01, seed=len(utt))[:n], 24000, subtype="FLOAT")
    for utt, i in (("a_real", 0), ("d_real", 1)):
        if i < len(real):
            paths[utt] = real[i]
        else:
            paths[utt] = root / f"{utt}.wav"
            sf.write(paths[utt], synthetic_speech(16000, 1.3 + i, seed=i), 16000)
    d = root / "data"
    d.mkdir()
    (d / "wav.scp").write_text("".join(f"{u} {paths[u]}\n" for u in sorted(paths)))
    (d / "text").write_text("".join(f"{u} {t}\n" for u, t in sorted(TRANSCRIPTS.items())))
    return root


def _extract(root, out, *extra):
    return main(["--model", str(root / "model"), "--data_dir", str(root / "data"), "--output_dir", str(out),
                 "--num_workers", "0", "--batch_size", "2", "--no_progress", *extra])


def _lines(path):
    return dict(ln.split(maxsplit=1) for ln in path.read_text().splitlines())


def _check_outputs(out, expected_frames):
    """Every file of ``out`` holds ``expected_frames`` (utt -> (F, 7)) and nothing else."""
    from datasets import load_from_disk
    from espnet2.train.dataset import ESPnetDataset

    utts = sorted(expected_frames)
    codes = {k: np.asarray(v) for k, v in kaldiio.load_scp(str(out / "codes.scp")).items()}
    codec = {k: np.asarray(v) for k, v in kaldiio.load_scp(str(out / "codec.scp")).items()}
    assert sorted(codes) == sorted(codec) == utts
    espnet = ESPnetDataset([(str(out / "codec.scp"), "codec", "kaldi_ark"), (str(out / "text"), "ids", "text_int")])
    frames_file = {k: int(v) for k, v in _lines(out / "utt2num_frames").items()}
    for utt in utts:
        frames = expected_frames[utt]
        flat = frames_to_flat(frames)
        assert np.array_equal(codes[utt].reshape(-1, 7), frames)
        assert codec[utt].dtype == np.int32 and codec[utt].shape == (len(frames) * 7,)
        assert np.array_equal(codec[utt], flat)
        key, item = espnet[utt]
        assert key == utt and np.array_equal(item["codec"], flat) and np.array_equal(item["ids"], flat)
        assert frames_file[utt] == len(frames)

    ds = load_from_disk(str(out / "datasets"))
    assert ds.column_names == ["utt_id", "num_samples", "codes", "orpheus_ids", "text"]
    assert ds["utt_id"] == utts
    samples = {k: int(v) for k, v in _lines(out / "utt2num_samples").items()}
    for row in ds:
        frames = expected_frames[row["utt_id"]]
        assert np.array_equal(np.array(row["codes"]), frames)
        assert row["orpheus_ids"] == (frames_to_flat(frames) + BASE).tolist()
        assert row["text"] == TRANSCRIPTS[row["utt_id"]] and row["num_samples"] == samples[row["utt_id"]]


def test_codec_ark_datasets_and_both_frame_rules(data, tmp_path):
    out = tmp_path / "out"
    formats = ["--formats", "ark,text,codec,datasets"]
    assert _extract(data, out, *formats) == 0
    ceil = {k: np.asarray(v).reshape(-1, 7) for k, v in kaldiio.load_scp(str(out / "codes.scp")).items()}
    samples = {k: int(v) for k, v in _lines(out / "utt2num_samples").items()}
    assert sorted(ceil) == sorted(TRANSCRIPTS)
    assert all(len(ceil[u]) == -(-samples[u] // 2048) for u in ceil)
    names = (out / "codec_token_list").read_text().splitlines()
    assert len(names) == 7 * 4096 and names[0] == "<codec_layer0_code0>"
    assert names[3 * 4096 + 17] == "<codec_layer3_code17>" and names[-1] == "<codec_layer6_code4095>"
    _check_outputs(out, ceil)

    # ESPnet's convention from the same shards: floor(T / 2048) frames; a sub-frame utterance is rejected
    assert _extract(data, out, *formats, "--frames", "floor", "--merge_only") == 0
    floor = {u: f[: samples[u] // 2048] for u, f in ceil.items() if samples[u] >= 2048}
    assert sorted(floor) == ["a_real", "b_exact", "d_real"] and len(floor["b_exact"]) == 5
    assert any(len(floor[u]) < len(ceil[u]) for u in floor)  # the real utterances lose their last frame
    _check_outputs(out, floor)
    rejected = _lines(out / "rejected.tsv")
    assert list(rejected) == ["c_short"] and "shorter_than_one_frame (1500 samples < 2048" in rejected["c_short"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["utterances_in"] == 4 and stats["written"] == 3 and stats["rejected"] == 1
    assert stats["frame_rule"] == "floor" and stats["frames"] == sum(len(f) for f in floor.values())
    assert (out / "codes.ark").is_file()  # the shortened vectors; the shards keep every frame

    assert _extract(data, out, *formats, "--merge_only") == 0  # back to ceil
    _check_outputs(out, ceil)
    assert not (out / "codes.ark").exists() and (out / "rejected.tsv").read_text() == ""


def test_merge_of_several_shards_writes_the_new_formats(tmp_path):
    rng = np.random.default_rng(0)
    lengths = {"u1": 3 * 2048 + 5, "u2": 2048, "u3": 700, "u4": 4 * 2048 - 1}
    full = {u: rng.integers(0, 4096, size=(-(-n // 2048), 7)).astype(np.int32) for u, n in lengths.items()}
    for rank, utts in enumerate((["u1", "u3"], ["u2", "u4"])):
        with ShardWriter(shard_dir(tmp_path, rank), str(shard_dir(tmp_path, rank) / "codes.ark")) as w:
            for u in utts:
                w.write(u, full[u], lengths[u])
    result = merge_shards(tmp_path, sorted(lengths), formats=("ark", "text", "codec", "datasets"),
                          orpheus_base=BASE, frames="floor", frame_samples=2048,
                          transcripts={u: f"words of {u}" for u in lengths})
    assert result.written == ["u1", "u2", "u4"] and list(result.rejected) == ["u3"] and not result.missing
    codec = {k: np.asarray(v) for k, v in kaldiio.load_scp(str(tmp_path / "codec.scp")).items()}
    from datasets import load_from_disk

    ds = load_from_disk(str(tmp_path / "datasets"))
    assert ds["utt_id"] == result.written and ds["text"] == [f"words of {u}" for u in result.written]
    for u, row in zip(result.written, ds):
        kept = full[u][: lengths[u] // 2048]
        assert np.array_equal(codec[u], frames_to_flat(kept)) and np.array_equal(np.array(row["codes"]), kept)


def test_missing_transcript_stops_before_encoding(data, tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "wav.scp").write_text((data / "data" / "wav.scp").read_text())
    (d / "text").write_text("a_real hello\n")
    with pytest.raises(SystemExit, match=r"text: no transcript for 3 utterance\(s\) \(e.g. b_exact c_short d_real\)"):
        main(["--model", str(data / "model"), "--data_dir", str(d), "--output_dir", str(tmp_path / "out"),
              "--formats", "ark,datasets", "--num_workers", "0", "--no_progress"])
    assert not (tmp_path / "out").exists()
