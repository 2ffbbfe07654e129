"""Recipe stage 8: a speech LM trained by ESPnet's own LM task on SNAC tokens, end to end.

The module fixture runs, in a temporary work directory on a few short demo utterances, with a
random-initialised tiny SNAC converted to an experiment by ``espnet-snac convert``:
stages 1-2 (data with transcripts), stage 6 (tokens), stage 8 with the tiny LM config
(lm_data, lm_train --collect_stats, lm_train, lm_inference, lm_decode), then stage 8 again.
The other tests check the pieces in-process. The text-prefixed LM runs end to end too, for one
epoch of two steps (the same stage-8 code, fewer LM updates).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs2" / "snac24k"
DEMO = REPO / "local" / "demo_corpus"
SNAC_CONFIG = REPO / "conf" / "tuning" / "train_snac24k_tiny.yaml"
LM_CONFIG = REPO / "conf" / "tuning" / "train_lm_snac_tiny.yaml"
SUBSET = {"train": 8, "dev": 2, "test": 2}
PROMPT_FRAMES, GEN_FRAMES = 6, 8
FRAME_SAMPLES = 2048  # 24 kHz model: 512 samples per code of the finest level, 4 of them per frame
LM_EXP = "lm_train_lm_snac_tiny"


def _kaldi(path: Path) -> Dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            key, _, rest = line.partition(" ")
            out[key] = rest
    return out


def _make_codec_experiment(exp: Path, tmp: Path) -> None:
    """A random-initialised tiny SNAC as an ESPnet experiment (what stages 4-6 would use)."""
    import torch
    import yaml

    from espnet_snac.cli import main as cli_main
    from espnet_snac.model.snac import SNAC

    params = yaml.safe_load(SNAC_CONFIG.read_text())["codec_conf"]["generator_params"]
    torch.manual_seed(0)
    SNAC(**params).save_pretrained(tmp / "official")
    cli_main(["convert", str(tmp / "official"), str(exp), "--config", str(SNAC_CONFIG)])


def _make_corpus(dst: Path) -> None:
    """The shortest demo files of each set, with the corpus' transcripts."""
    for part, count in SUBSET.items():
        files = sorted((DEMO / part).glob("*.flac"), key=lambda f: (sf.info(str(f)).frames, f.name))
        (dst / part).mkdir(parents=True)
        for f in files[:count]:
            shutil.copy(f, dst / part / f.name)
    shutil.copy(DEMO / "text", dst / "text")


def _codec_sh(args: List[str], env: Dict[str, str]) -> str:
    proc = subprocess.run(["bash", "./codec.sh", *args], cwd=RECIPE, env=env, capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"codec.sh {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def _snapshot(root: Path) -> Dict[str, tuple]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in root.rglob("*") if p.is_file()}


def _lm_args(text_prefix: bool) -> List[str]:
    return ["--lm_config", str(LM_CONFIG), "--lm_num_prompts", "1", "--lm_gen_frames", str(GEN_FRAMES),
            "--lm_prompt_frames", "0" if text_prefix else str(PROMPT_FRAMES),
            "--lm_text_prefix", "true" if text_prefix else "false"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    if not (DEMO / "text").is_file():
        pytest.skip("local/demo_corpus/text is missing")
    tmp = tmp_path_factory.mktemp("lm_stage")
    work = tmp / "work"
    _make_corpus(tmp / "corpus")
    _make_codec_experiment(work / "exp" / "codec_tiny", tmp)
    env = dict(os.environ, DEMO_CORPUS=str(tmp / "corpus"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    common = ["--workdir", str(work), "--train_config", str(SNAC_CONFIG), "--tag", "tiny", "--nj", "1",
              "--inference_nj", "1", "--test_sets", "test", "--python", sys.executable]
    _codec_sh([*common, "--stage", "1", "--stop_stage", "2"], env)
    _codec_sh([*common, "--stage", "6", "--stop_stage", "6"], env)
    first = _codec_sh([*common, "--stage", "8", "--stop_stage", "8", *_lm_args(False)], env)
    before = _snapshot(work)
    second = _codec_sh([*common, "--stage", "8", "--stop_stage", "8", *_lm_args(False)], env)
    return {"work": work, "env": env, "common": common, "logs": (first, second),
            "snapshots": (before, _snapshot(work)), "exp": work / "exp" / LM_EXP}


def _gen_dir(run) -> Path:
    (gen,) = run["exp"].glob("generate_*_test")
    return gen


def test_stage1_writes_transcripts(run):
    corpus = _kaldi(DEMO / "text")
    for part in SUBSET:
        data = run["work"] / "data" / part
        text = _kaldi(data / "text")
        assert set(text) == set(_kaldi(data / "wav.scp"))
        assert all(text[u] == corpus[u] for u in text)


def test_lm_data(run):
    from espnet_snac.lm.vocab import parse_snac_name

    lm_data = run["work"] / "dump" / "lm_snac"
    tokens = (lm_data / "token_list").read_text().splitlines()
    assert tokens[:2] == ["<blank>", "<unk>"] and tokens[-3:] == ["<generatetext>", "<generatespeech>", "<sos/eos>"]
    assert tokens[2] == "snac_p0_0" and len(tokens) == 5 + 7 * 4096
    summary = json.loads((lm_data / "summary.json").read_text())
    for part, dset in (("train", "train"), ("valid", "dev"), ("prompt", "test")):
        s = summary["sets"][part]
        assert s["utterances"] == SUBSET[dset] == s["kept"] + s["rejected"]
    snac_text = _kaldi(run["work"] / "dump" / "tokens" / "train" / "text")
    lines = _kaldi(lm_data / "train" / "text")
    assert set(lines) == set(snac_text)
    for utt, line in lines.items():
        toks = line.split()
        assert toks[:2] == ["<sos/eos>", "<generatespeech>"]
        # The same ids as extract_tokens' text, shifted by the two leading specials.
        assert [tokens.index(t) - 2 for t in toks[2:12]] == [int(i) for i in snac_text[utt].split()[:10]]
        assert [parse_snac_name(t)[0] for t in toks[2:16]] == list(range(7)) * 2
    (prompt,) = _kaldi(lm_data / "prompt" / "text").values()
    assert len(prompt.split()) == 2 + PROMPT_FRAMES * 7


def test_training_loss_falls(run):
    log = (run["exp"] / "train.log").read_text(encoding="utf-8")
    losses = [float(x) for x in re.findall(r"epoch results: \[train\][^\[]* loss=([0-9.]+),", log)]
    assert len(losses) == 3, losses
    assert losses[-1] < losses[0], losses
    assert "train loss per epoch:" in run["logs"][0]
    config = (run["exp"] / "config.yaml").read_text()
    assert "model: lm_multitask" in config and "lm: transformer" in config


def test_generation_slot_check_counts_every_frame(run):
    gen = _gen_dir(run)
    report = json.loads((gen / "slot_check.json").read_text())
    prompts = _kaldi(run["work"] / "dump" / "lm_snac" / "prompt" / "text")
    outputs = _kaldi(gen / "lm_inference" / "1best_recog" / "token_int")
    assert set(outputs) == set(prompts) == set(report["utterances"])
    for utt, entry in report["utterances"].items():
        generated = len(outputs[utt].split()) - (len(prompts[utt].split()) - 1)
        assert entry["generated_tokens"] == generated == GEN_FRAMES * 7
        assert entry["valid_frames"] + entry["invalid_frames"] == entry["generated_frames"] == GEN_FRAMES
        assert entry["trailing_tokens"] == 0 and entry["missing_tokens"] == 0
        assert entry["prompt_frames"] == PROMPT_FRAMES
    t = report["totals"]
    assert t["valid_frames"] + t["invalid_frames"] == t["generated_frames"] == GEN_FRAMES
    assert f"{GEN_FRAMES} frames generated = {t['valid_frames']} valid + {t['invalid_frames']} invalid" in run["logs"][0]


def test_audio_written(run):
    gen = _gen_dir(run)
    report = json.loads((gen / "slot_check.json").read_text())
    wavs = _kaldi(gen / "wav.scp")
    assert set(wavs) == set(report["utterances"])
    for utt, path in wavs.items():
        audio, rate = sf.read(path)
        valid = report["utterances"][utt]["valid_frames"]
        assert rate == 24000 and len(audio) == (PROMPT_FRAMES + valid) * FRAME_SAMPLES
        assert np.isfinite(audio).all() and np.abs(audio).max() > 0
        if valid:
            cont, _ = sf.read(_kaldi(gen / "continuation.scp")[utt])
            assert len(cont) == valid * FRAME_SAMPLES


def test_rerun_skips_stage8(run):
    lines = [ln for ln in run["logs"][1].splitlines() if "Stage 8:" in ln]
    assert sum("skipping" in ln for ln in lines) == 4, lines
    before, after = run["snapshots"]
    assert before == after


# ------------------------------------------------------------------------------ in-process pieces

def test_check_slots_counts_wrong_slots_and_specials():
    from espnet_snac.lm.slots import check_slots

    good = [f"snac_p{k}_{k + 10}" for k in range(7)]
    shifted = good[1:] + good[:1]  # every id one slot off
    special = good[:3] + ["<generatespeech>"] + good[4:]
    tokens = good + shifted + special + good + good[:3]
    check = check_slots(tokens)
    assert (check.generated_frames, check.valid_frames, check.invalid_frames) == (4, 2, 2)
    assert check.trailing_tokens == 3 and check.generated_tokens == len(tokens)
    assert (check.wrong_slot_tokens, check.non_snac_tokens) == (7, 1)
    assert check.first_invalid == {"frame": 1, "position": 0, "token": "snac_p1_11"}
    assert check.frames.tolist() == [[k + 10 for k in range(7)]] * 2


def test_lm_decode_decodes_only_valid_frames(tmp_path):
    """A fabricated lm_inference output with a frame in the wrong slots, a special and trailing ids."""
    from espnet_snac.bin import lm_decode
    from espnet_snac.lm.vocab import build_token_list, write_token_list

    _make_codec_experiment(tmp_path / "codec", tmp_path)
    tokens = build_token_list()
    write_token_list(tmp_path / "token_list", tokens)
    idx = {t: i for i, t in enumerate(tokens)}
    rng = np.random.default_rng(0)

    def frame(shift: int = 0) -> List[str]:
        return [f"snac_p{(k + shift) % 7}_{int(c)}" for k, c in enumerate(rng.integers(0, 4096, 7))]

    prompt = ["<sos/eos>", "<generatespeech>", *frame(), *frame()]
    generated = [*frame(), *frame(1), *frame(), *frame()[:5], "<unk>", "<sos/eos>", *frame()[:2]]
    (tmp_path / "prompt").write_text("u1 " + " ".join(prompt) + "\n")
    (tmp_path / "token_int").write_text("u1 " + " ".join(str(idx[t]) for t in prompt[1:] + generated) + "\n")
    args = lm_decode.get_parser().parse_args([
        "--token_int", str(tmp_path / "token_int"), "--prompts", str(tmp_path / "prompt"),
        "--token_list", str(tmp_path / "token_list"), "--model", str(tmp_path / "codec"),
        "--output_dir", str(tmp_path / "out"), "--expected_tokens", "40"])
    entry = lm_decode.run(args)["utterances"]["u1"]
    assert (entry["generated_frames"], entry["valid_frames"], entry["invalid_frames"]) == (4, 2, 2)
    assert entry["trailing_tokens"] == 2 and entry["missing_tokens"] == 40 - 30
    assert entry["non_snac_tokens"] == 2 and entry["wrong_slot_tokens"] == 7
    audio, rate = sf.read(tmp_path / "out" / "wav" / "u1.wav")
    assert len(audio) == (2 + 2) * FRAME_SAMPLES
    cont, _ = sf.read(tmp_path / "out" / "continuation" / "u1.wav")
    assert len(cont) == 2 * FRAME_SAMPLES


def test_lm_decode_without_any_output_is_an_error(tmp_path, capsys):
    from espnet_snac.bin import lm_decode
    from espnet_snac.lm.vocab import build_token_list, write_token_list

    _make_codec_experiment(tmp_path / "codec", tmp_path)
    write_token_list(tmp_path / "token_list", build_token_list())
    (tmp_path / "prompt").write_text("u1 <sos/eos> <generatespeech> " + " ".join(f"snac_p{k}_1" for k in range(7)) + "\n")
    code = lm_decode.main(["--token_int", str(tmp_path / "missing"), "--prompts", str(tmp_path / "prompt"),
                           "--token_list", str(tmp_path / "token_list"), "--model", str(tmp_path / "codec"),
                           "--output_dir", str(tmp_path / "out")])
    assert code == 1 and "generated nothing" in capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "slot_check.json").read_text())
    assert report["totals"]["without_output"] == report["totals"]["prompts"] == 1


def test_lm_data_text_prefix(tmp_path):
    from espnet_snac.bin import lm_data

    def tokens_dir(name: str, utts: Dict[str, int]) -> Path:
        d = tmp_path / name
        d.mkdir()
        lines = [u + " " + " ".join(str(k * 4096 + (f + k) % 4096) for f in range(n) for k in range(7))
                 for u, n in utts.items()]
        (d / "text").write_text("\n".join(lines) + "\n")
        return d

    (tmp_path / "train.txt").write_text("a Press one.\nb Press  Two\n")
    (tmp_path / "valid.txt").write_text("c press 9\n")  # '9' is not in the training transcripts
    (tmp_path / "prompt.txt").write_text("d One two\n")  # e has no transcript
    out = tmp_path / "lm"
    code = lm_data.main([
        "--train_tokens", str(tokens_dir("tr", {"a": 3, "b": 2})), "--train_text", str(tmp_path / "train.txt"),
        "--valid_tokens", str(tokens_dir("va", {"c": 2})), "--valid_text", str(tmp_path / "valid.txt"),
        "--prompt_tokens", str(tokens_dir("pr", {"d": 4, "e": 4})), "--prompt_text", str(tmp_path / "prompt.txt"),
        "--output_dir", str(out), "--text_prefix", "true", "--prompt_frames", "1"])
    assert code == 0
    token_list = (out / "token_list").read_text().splitlines()
    chars = token_list[2 + 7 * 4096:-3]
    assert chars == sorted(set("pressonetwo.") | {"<space>"})
    line = _kaldi(out / "train" / "text")["b"].split()
    assert line[:11] == ["<sos/eos>", *"press", "<space>", *"two", "<generatespeech>"]
    assert line[line.index("<generatespeech>") + 1:][:7] == [f"snac_p{k}_{k}" for k in range(7)]
    assert _kaldi(out / "valid" / "text")["c"].split()[7] == "<unk>"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sets"]["valid"]["unknown_text_units"] == 1
    assert summary["sets"]["prompt"] == {"utterances": 2, "kept": 1, "rejected": 1, "lines": 1,
                                         "tokens": 1 + 7 + 1 + 7, "unknown_text_units": 0}
    assert "no transcript" in (out / "prompt" / "rejected.tsv").read_text()
    prompt = _kaldi(out / "prompt" / "text")["d"].split()
    assert prompt[-8] == "<generatespeech>" and len(prompt) == 1 + 7 + 1 + 7


def test_lm_data_rejects_bad_token_text(tmp_path):
    from espnet_snac.lm.lines import LMDataError, read_token_text

    (tmp_path / "text").write_text("a 0 4096 8192 12288 16384 20480 24576\nb 4096 0 8192 12288 16384 20480 24576\n")
    with pytest.raises(LMDataError, match=r"text:2: b: id 4096 at position 0 is outside slot 0"):
        read_token_text(tmp_path / "text")


def test_demo_corpus_transcripts_cover_every_file():
    files = {f.stem for part in ("train", "dev", "test") for f in (DEMO / part).glob("*.flac")}
    text = _kaldi(DEMO / "text")
    assert set(text) == files and all(text.values())


def test_text_prefixed_lm(run):
    """The Orpheus-style variant: transcript, <generatespeech>, speech; prompted by text alone. One
    epoch (two steps): the stage's data, training, generation and decoding, not the LM's quality."""
    out = _codec_sh([*run["common"], "--stage", "8", "--stop_stage", "8", *_lm_args(True),
                     "--lm_args", "--max_epoch 1"], run["env"])
    exp = run["work"] / "exp" / f"{LM_EXP}_text"
    line = next(iter(_kaldi(run["work"] / "dump" / "lm_snac_text" / "train" / "text").values())).split()
    assert "<space>" in line and line.index("<generatespeech>") > 2
    (gen,) = exp.glob("generate_*_test")
    report = json.loads((gen / "slot_check.json").read_text())
    t = report["totals"]
    assert t["valid_frames"] + t["invalid_frames"] == t["generated_frames"] == GEN_FRAMES
    assert "train loss per epoch:" in out
