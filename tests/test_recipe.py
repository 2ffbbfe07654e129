"""The recipe egs2/snac24k end to end (stages 1-6) on a subset of the demo corpus, tiny model.

One module-scoped run does, in a temporary work directory:
1. stages 1-4, killed (SIGKILL to the whole process group) once epoch 1 of 2 has been saved,
2. stages 1-6 again: stages 1-3 are skipped, training resumes from ``checkpoint.pth`` and runs
   epoch 2 only, then decoding, scoring and tokens,
3. the same command again: every stage is skipped and no file changes,
4. stage 7 (packing).
The tests then check each stage's outputs.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs2" / "snac24k"
DEMO = REPO / "local" / "demo_corpus"
TINY_CONFIG = "conf/tuning/train_snac24k_tiny.yaml"
TAG = "tiny"
SUBSET = {"train": 6, "dev": 2, "test": 3}
FS = 24000


def _run(args: List[str], env: Dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["bash", "./run.sh", *args], cwd=RECIPE, env=env, capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"run.sh {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _run_killed_after_first_epoch(args: List[str], env: Dict[str, str], exp: Path, log_path: Path) -> str:
    """Start run.sh and SIGKILL its process group as soon as epoch 1 is saved; returns its output."""
    with open(log_path, "w+") as log:
        proc = subprocess.Popen(["bash", "./run.sh", *args], cwd=RECIPE, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 600
        # 1epoch.pth is written after checkpoint.pth, so the checkpoint is complete by then.
        while not (exp / "1epoch.pth").exists():
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                log.seek(0)
                raise AssertionError(f"run.sh ended before epoch 1 was saved:\n{log.read()}")
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.seek(0)
        output = log.read()
    assert proc.returncode == -signal.SIGKILL, "the training finished before it could be killed"
    assert not (exp / "2epoch.pth").exists()
    return output


def _make_subset(dst: Path) -> None:
    """Copy a few demo files per set; the test set gets the shortest, a middle and the longest."""
    for part, count in SUBSET.items():
        files = sorted((DEMO / part).glob("*.flac"))
        if part == "test":
            by_len = sorted(files, key=lambda f: sf.info(str(f)).frames)
            chosen = [by_len[0], by_len[len(by_len) // 2], by_len[-1]]
        else:
            chosen = files[:count]
        (dst / part).mkdir(parents=True)
        for f in chosen:
            shutil.copy(f, dst / part / f.name)


def _snapshot(root: Path) -> Dict[str, Tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


def _scp(path: Path) -> Dict[str, str]:
    entries = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            key, value = line.split(maxsplit=1)
            entries[key] = value
    return entries


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    if not DEMO.is_dir():
        pytest.skip("local/demo_corpus is missing")
    tmp = tmp_path_factory.mktemp("recipe")
    corpus = tmp / "corpus"
    _make_subset(corpus)
    work = tmp / "work"
    # A private copy: the run must not see edits of the repository's config while it runs.
    config = tmp / "train_tiny.yaml"
    shutil.copy(RECIPE / TINY_CONFIG, config)
    env = dict(os.environ, DEMO_CORPUS=str(corpus), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    common = [
        "--workdir", str(work), "--train_config", str(config), "--tag", TAG,
        "--nj", "1", "--inference_nj", "1", "--test_sets", "test",
        "--plot_spectrograms", "2", "--python", sys.executable,
    ]
    exp = work / "exp" / f"codec_{TAG}"
    first = _run_killed_after_first_epoch([*common, "--stage", "1", "--stop_stage", "4"], env, exp,
                                         tmp / "killed_run.log")
    second = _run([*common, "--stage", "1", "--stop_stage", "6"], env)
    before = _snapshot(work)
    third = _run([*common, "--stage", "1", "--stop_stage", "6"], env)
    after = _snapshot(work)
    _run([*common, "--stage", "7", "--stop_stage", "7"], env)
    return {
        "work": work, "env": env, "common": common,
        "logs": (first, second.stdout + second.stderr, third.stdout + third.stderr),
        "snapshots": (before, after),
        "exp": exp,
    }


def test_stage1_data(recipe):
    for part, count in SUBSET.items():
        d = recipe["work"] / "data" / part
        assert len(_scp(d / "wav.scp")) == count
        assert len(_scp(d / "utt2spk")) == count


def test_stage2_dump(recipe):
    for part, count in SUBSET.items():
        d = recipe["work"] / "dump" / "raw" / part
        wavs = _scp(d / "wav.scp")
        lengths = {k: int(v) for k, v in _scp(d / "utt2num_samples").items()}
        assert len(wavs) == count and set(lengths) == set(wavs)
        assert (d / "rejected.tsv").is_file()
        for key, path in wavs.items():
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.frames) == (FS, 1, lengths[key])


def test_stage3_shapes(recipe):
    stats = recipe["work"] / "exp" / f"codec_stats_{FS}"
    train = _scp(stats / "train" / "audio_shape")
    valid = _scp(stats / "valid" / "audio_shape")
    assert set(train) == set(_scp(recipe["work"] / "dump" / "raw" / "train" / "wav.scp"))
    assert len(valid) == SUBSET["dev"]


def test_stage4_training_resumed_from_checkpoint(recipe):
    exp = recipe["exp"]
    first_log = (exp / "train.1.log").read_text(encoding="utf-8")
    second_log = (exp / "train.log").read_text(encoding="utf-8")
    assert "1/2epoch started" in first_log and "2epoch results" not in first_log
    # The second run continued the killed one: it resumed and trained only epoch 2.
    assert "resumed" in second_log.lower() and "checkpoint.pth" in second_log
    assert "2/2epoch started" in second_log and "1/2epoch started" not in second_log
    assert os.path.realpath(exp / "latest.pth").endswith("2epoch.pth")
    assert "resuming from" in recipe["logs"][1]


def test_stage5_decoding_and_scoring(recipe):
    exp = recipe["exp"]
    decode = next(exp.glob("decode_*"))
    ref = _scp(recipe["work"] / "dump" / "raw" / "test" / "wav.scp")
    hyp = _scp(decode / "test" / "wav.scp")
    assert set(hyp) == set(ref)
    for key, path in hyp.items():
        audio, sr = sf.read(path)
        assert sr == FS and audio.ndim == 1
        assert len(audio) == sf.info(ref[key]).frames  # trimmed to the input length
        assert np.isfinite(audio).all()
    results = json.loads((decode / "test" / "scoring" / "results.json").read_text())
    assert results["num_utts"] == SUBSET["test"] and results["num_failed"] == 0
    for key in ("mel_distance", "stft_distance", "si_snr", "pesq_wb", "stoi"):
        assert math.isfinite(results[key]), key
    assert (decode / "test" / "scoring" / "utt_results.tsv").is_file()
    pytest.importorskip("matplotlib")
    assert len(list((decode / "test" / "scoring" / "plots").glob("*.png"))) == 2
    text = (exp / "RESULTS.md").read_text(encoding="utf-8")
    assert "0.98 kbps" in text and "| test | 3 | 0 |" in text


def test_stage6_tokens_decode_back_to_audio(recipe):
    import kaldiio
    import torch

    from espnet_snac.model.frames import frames_to_codes
    from espnet_snac.model.snac import SNAC

    model = SNAC.from_pretrained(str(recipe["exp"] / "latest.pth"))
    for part, count in SUBSET.items():
        tokens = recipe["work"] / "dump" / "tokens" / part
        codes_scp = _scp(tokens / "codes.scp")
        wavs = _scp(recipe["work"] / "dump" / "raw" / part / "wav.scp")
        assert set(codes_scp) == set(wavs)
        assert len(_scp(tokens / "text")) == count
        assert (tokens / "token_list").is_file()
    # Tokens of one test utterance = the model's codes of its audio, and they decode to audio.
    key, path = sorted(_scp(recipe["work"] / "dump" / "raw" / "test" / "wav.scp").items())[0]
    flat = np.asarray(kaldiio.load_mat(_scp(recipe["work"] / "dump" / "tokens" / "test" / "codes.scp")[key]))
    frames = torch.from_numpy(flat.reshape(1, -1, 7).astype(np.int64))
    audio, _ = sf.read(path, dtype="float32")
    with torch.no_grad():
        expected = model.encode(torch.from_numpy(audio).view(1, 1, -1))
        codes = frames_to_codes(frames)
        for got, want in zip(codes, expected):
            assert torch.equal(got, want)
        wav = model.decode(codes, length=len(audio), noise_seed=0)
    assert wav.shape == (1, 1, len(audio)) and torch.isfinite(wav).all()


def test_stage7_packed_model_loads_in_official_package(recipe):
    import zipfile

    import torch

    snac = pytest.importorskip("snac")
    from espnet_snac.model.snac import SNAC

    packed = recipe["exp"] / "packed"
    with zipfile.ZipFile(packed / "model.zip") as zf:
        names = zf.namelist()
    assert "meta.yaml" in names and any(n.endswith("config.yaml") for n in names)
    official = snac.SNAC.from_pretrained(str(packed / "snac_24khz"))
    ours = SNAC.from_pretrained(str(recipe["exp"] / "latest.pth"))
    audio = torch.from_numpy(np.random.default_rng(0).standard_normal(4096 * 3).astype(np.float32) * 0.1)
    with torch.no_grad():
        for a, b in zip(official.encode(audio.view(1, 1, -1)), ours.encode(audio.view(1, 1, -1))):
            assert torch.equal(a, b)


def test_second_run_does_no_work(recipe):
    lines = recipe["logs"][2].splitlines()
    for stage in range(1, 7):
        stage_lines = [line for line in lines if f"Stage {stage}:" in line]
        assert stage_lines and all("skipping" in line for line in stage_lines), (stage, stage_lines)
    before, after = recipe["snapshots"]
    assert before == after


def test_options():
    env = dict(os.environ)
    help_text = subprocess.run(["bash", "./codec.sh", "--help"], cwd=RECIPE, env=env, capture_output=True,
                               text=True, check=True).stdout
    for opt in ("stage", "stop_stage", "ngpu", "nj", "inference_nj", "dataset", "train_config",
                "inference_model", "tag", "test_sets", "fs", "min_wav_duration", "max_wav_duration",
                "audio_format", "cmd_backend"):
        assert f"--{opt} " in help_text, opt
    bad = _run(["--no_such_option", "1"], env, check=False)
    assert bad.returncode != 0 and "unknown option '--no_such_option'" in bad.stderr
    bad = _run(["--num_nodes", "0", "--stop_stage", "1"], env, check=False)
    assert bad.returncode != 0 and "--num_nodes must be at least 1" in bad.stderr


FAKE_SRUN = """#!/usr/bin/env bash
# Records its options, then runs the command that follows them (as a one-task step would).
echo "srun $*" >> "$SRUN_LOG"
while [ $# -gt 0 ] && [ "${1#--}" != "$1" ]; do shift; done
exec "$@"
"""


def test_cmd_backends_split_jobs(tmp_path):
    """run_jobs runs NJ jobs with JOB substituted, locally and as Slurm steps (fake srun)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "srun").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SRUN_LOG=str(tmp_path / "srun.log"))
    for backend in ("local", "slurm"):
        out = tmp_path / backend
        script = (
            f"set -euo pipefail; cmd_backend={backend}; . ./cmd.sh; "
            f"run_jobs 3 {out}/log/job.JOB.log bash -c 'echo done JOB > {out}/out.JOB'; "
            f"! run_jobs 2 {out}/log/fail.JOB.log bash -c 'exit JOB'"
        )
        subprocess.run(["bash", "-c", script], cwd=RECIPE, env=env, check=True, capture_output=True)
        assert [(out / f"out.{n}").read_text().strip() for n in (1, 2, 3)] == ["done 1", "done 2", "done 3"]
        assert "exit code 0" in (out / "log" / "job.2.log").read_text()
        assert "exit code 2" in (out / "log" / "fail.2.log").read_text()
    srun_calls = (tmp_path / "srun.log").read_text().splitlines()
    assert len(srun_calls) == 5 and all("--ntasks=1" in call for call in srun_calls)
