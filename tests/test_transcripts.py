"""Transcripts through data preparation (HF columns, sidecar files, LJSpeech metadata, Kaldi text),
splits that fit small corpora, and the error messages of missing files and mismatched rates."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import soundfile as sf

from espnet_snac.bin.prepare_data import main as prepare_main
from espnet_snac.data.finalize import MIN_SPEAKERS_FOR_SPEAKER_SPLIT, FinalizeOptions, split_rows
from espnet_snac.data.transcripts import (clean_transcript, detect_text_column, is_ljspeech_metadata,
                                          read_ljspeech_metadata)
from own_corpus import TEXTS, expected_texts, write_folder, write_hf_dataset

os.environ.setdefault("OMP_NUM_THREADS", "1")


def read_kaldi(path: Path) -> Dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition(" ")
        out[key] = value
    return out


def all_sets(out: Path, name: str) -> Dict[str, str]:
    merged: Dict[str, str] = {}
    for part in ("train", "dev", "test"):
        merged.update(read_kaldi(out / part / name))
    return merged


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    return write_folder(root / "folder"), write_hf_dataset(root / "hfds")


def _check_prepared(out: Path, capsys) -> None:
    err = capsys.readouterr().err
    wav = all_sets(out, "wav.scp")
    text = all_sets(out, "text")
    want = expected_texts()
    assert len(wav) == len(want) == 27 and set(text) == set(wav)
    # every script survives byte for byte, each transcript with its own utterance
    for utt, transcript in text.items():
        spk = utt.split("-")[0]
        number = transcript.rsplit(" ", 1)[1]
        assert want[(spk, f"utt{number}")] == transcript
    assert {t.rsplit(" ", 1)[0] for t in text.values()} == set(TEXTS)
    # the corrupt file is rejected and counted: in = kept + rejected
    rejected = (out / "rejected.tsv").read_text(encoding="utf-8").splitlines()[1:]
    assert len(rejected) == 1 and "broken" in rejected[0] and "decode_error" in rejected[0]
    for part in ("dev", "test"):  # the hash left them empty; each got one whole speaker
        speakers = {u.split("-")[0] for u in read_kaldi(out / part / "wav.scp")}
        assert len(speakers) == 1, (part, speakers)
    assert "gets the speaker" in err


def test_hf_dataset_text_column_autodetected(corpus, tmp_path, capsys):
    _, hfds = corpus
    out = tmp_path / "data"
    rc = prepare_main(["--source", f"hf:{hfds}", "--output_dir", str(out), "--speaker_column", "speaker",
                       "--dev_fraction", "0.05", "--test_fraction", "0.05", "--no_progress"])
    assert rc == 0
    _check_prepared(out, capsys)


def test_folder_sidecar_transcripts(corpus, tmp_path, capsys):
    folder, _ = corpus
    out = tmp_path / "data"
    rc = prepare_main(["--source", f"folder:{folder}", "--output_dir", str(out), "--speaker_from_dir",
                       "--dev_fraction", "0.05", "--test_fraction", "0.05", "--no_progress"])
    assert rc == 0
    _check_prepared(out, capsys)
    # sidecars are transcripts, not "files that were not read"
    assert ".txt" not in capsys.readouterr().err


def _tone(path: Path, rate: int = 16000, seconds: float = 0.5) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(rate * seconds)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * 220 * t), rate)


def test_ljspeech_metadata_and_kaldi_text_kept(tmp_path):
    lj = tmp_path / "LJSpeech"
    for i in (1, 2):
        _tone(lj / "wavs" / f"LJ001-000{i}.wav")
    (lj / "metadata.csv").write_text(
        "LJ001-0001|Printing, in the only sense 1|Printing, in the only sense one\n"
        "LJ001-0002|in being comparatively modern.|\n", encoding="utf-8")
    assert is_ljspeech_metadata(str(lj / "metadata.csv"))
    out = tmp_path / "lj_data"
    assert prepare_main(["--source", f"folder:{lj}", "--output_dir", str(out), "--no_progress"]) == 0
    # the normalized text where given, else the text
    assert read_kaldi(out / "text") == {"wavs-LJ001-0001": "Printing, in the only sense one",
                                        "wavs-LJ001-0002": "in being comparatively modern."}
    # a Kaldi source keeps its text (stage 2 of the recipe reads data/<set> this way)
    again = tmp_path / "dump"
    assert prepare_main(["--source", f"kaldi:{out}", "--output_dir", str(again), "--no_progress"]) == 0
    assert read_kaldi(again / "text") == read_kaldi(out / "text")


def test_text_column_option_and_errors(corpus, tmp_path, capsys):
    _, hfds = corpus
    out = tmp_path / "x"
    rc = prepare_main(["--source", f"hf:{hfds}", "--output_dir", str(out), "--text_column", "sentence",
                       "--no_progress"])
    assert rc == 2 and "no column 'sentence' (--text_column)" in capsys.readouterr().err
    rc = prepare_main(["--source", f"hf:{hfds}", "--output_dir", str(out), "--text_column", "none", "--no_progress"])
    assert rc == 0 and not (out / "text").exists() and (out / "wav.scp").is_file()
    assert detect_text_column(["audio", "sentence", "client_id"], "auto", "x") == "sentence"
    assert detect_text_column(["audio", "text_normalized", "text_original"], None, "x") == "text_normalized"
    assert detect_text_column(["audio"], "auto", "x") is None
    assert clean_transcript(" two\nlines \t here ") == "two lines here" and clean_transcript("  ") is None
    bad = tmp_path / "bad.csv"
    bad.write_text("only-an-id\n|no id|\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 1"):
        read_ljspeech_metadata(str(bad))


def _rows(speakers: int, per_speaker: int):
    return [(f"s{s}-u{u}", f"s{s}", "ref", 24000) for s in range(speakers) for u in range(per_speaker)]


def test_split_fits_the_corpus(capsys):
    opts = FinalizeOptions(dev_fraction=0.05, test_fraction=0.05)
    # few speakers: by utterance, with a warning naming the option; dev and test still get one each
    groups, by = split_rows(_rows(3, 7), opts)
    assert by == "utterance" and "--split_by utterance" in capsys.readouterr().err
    assert len(groups["dev"]) >= 1 and len(groups["test"]) >= 1 and len(groups["train"]) >= 1
    assert sum(map(len, groups.values())) == 21
    # enough speakers: speaker-disjoint
    groups, by = split_rows(_rows(MIN_SPEAKERS_FOR_SPEAKER_SPLIT, 4), opts)
    spk = {name: {r[1] for r in rows} for name, rows in groups.items()}
    assert by == "speaker" and not (spk["train"] & spk["dev"]) and not (spk["train"] & spk["test"])
    assert spk["dev"] and spk["test"]
    capsys.readouterr()
    # no speakers at all, three utterances: one per set, no warning about speakers
    groups, by = split_rows([(f"u{i}", "", "ref", 1) for i in range(3)], opts)
    assert sorted(map(len, groups.values())) == [1, 1, 1]
    assert "too few for speaker-disjoint" not in capsys.readouterr().err
    # deterministic
    assert split_rows(_rows(3, 7), opts) == split_rows(_rows(3, 7), opts)


def test_missing_file_says_no_such_file(tmp_path):
    from espnet_snac.io.audio_io import AudioError, read_audio

    with pytest.raises(AudioError, match=f"no such file: {tmp_path}/gone.wav"):
        read_audio(tmp_path / "gone.wav")
    scp = tmp_path / "kaldi"
    scp.mkdir()
    (scp / "wav.scp").write_text(f"a {tmp_path}/gone.wav\n")
    out = tmp_path / "out"
    assert prepare_main(["--source", f"kaldi:{scp}", "--output_dir", str(out), "--no_progress"]) == 0
    assert f"no such file: {tmp_path}/gone.wav" in (out / "rejected.tsv").read_text()


def test_tokenizer_encode_batch_sampling_rate():
    import torch

    from espnet_snac.io.audio_io import resample
    from espnet_snac.model.snac import SNAC
    from espnet_snac.inference.tokenizer import SNACTokenizer
    from speech_samples import synthetic_speech

    torch.manual_seed(0)
    model = SNAC(sampling_rate=24000, encoder_dim=4, encoder_rates=[2, 4, 8, 8], decoder_dim=32,
                 decoder_rates=[8, 8, 4, 2], attn_window_size=None, codebook_size=4096, codebook_dim=8,
                 vq_strides=[4, 2, 1], noise=True, depthwise=True)
    tok = SNACTokenizer(model)
    x = synthetic_speech(22050, 1.0, seed=3)
    resampled = tok.encode_batch([x], sampling_rate=22050)[0]
    # exactly what the CLI does: soxr to the model rate, then encode
    assert np.array_equal(resampled, tok.encode_batch([resample(x, 22050, 24000)])[0])
    # read as 24 kHz it would be 0.92 s long: 11 frames instead of the 12 of one second
    assert resampled.shape == (12, 7) and tok.encode_batch([x])[0].shape == (11, 7)
    # stereo (T, 2) is averaged as the CLI does, not flattened
    stereo = np.stack([x, x], axis=1)
    assert np.array_equal(tok.encode_batch([stereo], sampling_rate=22050)[0], resampled)
    with pytest.raises(ValueError, match="22050 Hz but the model takes 24000 Hz"):
        tok.encode_batch([x], sampling_rate=22050, resample=False)
