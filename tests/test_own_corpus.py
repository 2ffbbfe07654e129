"""Your own corpus end to end: the quick start of docs/data.md, run as written, on a small
multilingual corpus with transcripts (tests/own_corpus.py) as a Hugging Face dataset saved to disk,
then a folder with sidecar transcripts tokenized with the codec it trained.

One module-scoped run (about two minutes on 2 cores): the five quick-start commands (stages 1-6 with
the tiny config, 2 steps, no split options), then the two commands that tokenize the folder.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from own_corpus import TEXTS, expected_texts, write_folder, write_hf_dataset

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs2" / "snac24k"
DOC = REPO / "docs" / "data.md"
SECTION = "## Quick start: your own corpus"


def quick_start_blocks() -> List[List[str]]:
    """The command lines of the bash blocks of the quick-start section, in order."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start:end if end > 0 else None]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [[line for line in b.splitlines() if line.strip() and not line.startswith("#")] for b in blocks]


def _localize(line: str, paths: Dict[str, Path]) -> str:
    """The documented paths -> this test's temporary ones (the placeholder datasets first)."""
    line = line.replace("/data/my_corpus", str(paths["hf"])).replace("/data/my_wavs", str(paths["folder"]))
    for name in ("my_corpus", "my_wavs"):
        line = re.sub(rf"(?<![\w/.-]){name}(?=[/\s'\"]|$)", str(paths["work"] / name), line)
    return line


def _run_block(lines: List[str], paths: Dict[str, Path], env: Dict[str, str], cwd: Path) -> str:
    script = f"set -euo pipefail\ncd {cwd}\n" + "\n".join(_localize(l, paths) for l in lines) + "\n"
    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"quick start failed ({proc.returncode}):\n{script}\n{output[-6000:]}"
    return output


def _kaldi(path: Path) -> Dict[str, str]:
    return dict(line.split(" ", 1) for line in path.read_text(encoding="utf-8").splitlines())


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("own_corpus")
    paths = {"hf": write_hf_dataset(tmp / "hfds"), "folder": write_folder(tmp / "wavs"), "work": tmp / "work"}
    paths["work"].mkdir()
    # "python" of the commands is this interpreter; run.sh finds the checkout's .venv by itself
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    blocks = quick_start_blocks()
    assert len(blocks) == 2 and len(blocks[0]) == 5, blocks
    assert all("--num_iters" in l for l in blocks[0] if "run.sh" in l)
    # the first block starts at the repository root and moves into the recipe; the second goes on there
    outputs = [_run_block(blocks[0], paths, env, REPO), _run_block(blocks[1], paths, env, RECIPE)]
    return {"paths": paths, "outputs": outputs, "work": paths["work"]}


def _rows(export: Path) -> List[dict]:
    import datasets

    return list(datasets.load_from_disk(str(export)))


def test_hf_quick_start_gives_token_datasets_with_transcripts(quick_start):
    out = quick_start["outputs"][0]
    work = quick_start["work"] / "my_corpus"
    want = set(expected_texts().values())
    total = 0
    for part in ("train", "dev", "test"):
        texts = _kaldi(work / "data" / part / "text")
        assert set(_kaldi(work / "dump" / "raw" / part / "text").items()) == set(texts.items())
        rows = _rows(work / "dump" / "tokens" / part / "datasets")
        assert {r["utt_id"]: r["text"] for r in rows} == texts
        assert set(texts.values()) <= want
        for r in rows:  # Orpheus ids: 7 per frame, above the base offset
            assert len(r["orpheus_ids"]) == 7 * len(r["codes"]) > 0 and min(r["orpheus_ids"]) >= 128266
        assert (work / "dump" / "tokens" / part / "text_orpheus").is_file()
        total += len(rows)
    assert total == len(want) == 27  # 28 rows in, the corrupt one rejected and counted
    assert "rejected 1 (decode_error 1), read 28" in out
    assert "datasets export" in out and "dump/tokens/train/datasets" in out
    # the quick start's own checks printed the transcripts and the first row
    first = _rows(work / "dump" / "tokens" / "train" / "datasets")[0]
    assert first["text"] in out and str(first["orpheus_ids"][:7]) in out
    assert any(t in out for t in TEXTS)  # Unicode survives the console too


def test_small_corpus_split_without_options(quick_start):
    out = quick_start["outputs"][0]
    work = quick_start["work"] / "my_corpus" / "data"
    speakers = {part: {u.split("-")[0] for u in _kaldi(work / part / "wav.scp")} for part in ("train", "dev", "test")}
    assert speakers["dev"] and speakers["test"] and not (speakers["train"] & (speakers["dev"] | speakers["test"]))
    assert "the hash split left" in out and "must give the sets" not in out


def test_collapse_is_loud_in_stage5_stage6_and_results(quick_start):
    out = quick_start["outputs"][0]
    results = (quick_start["work"] / "my_corpus" / "exp" / "codec_train_snac24k_tiny" / "RESULTS.md").read_text()
    # two optimizer steps of the tiny config: a collapsed codec, and everybody says so
    assert "## Codebook use" in results and "**collapsed**" in results, results
    assert "WARNING: CODEBOOK COLLAPSE in the codes of the" in results
    assert "Stage 5: dev: codes in use per level" in out
    assert "WARNING: CODEBOOK COLLAPSE in the tokens of" in out  # stage 6, on the console
    assert re.search(r"Stage 6: train: codes in use per level: \d+/\d+/\d+ of 4096; distinct frames", out)


def test_console_is_free_of_import_noise(quick_start):
    for out in quick_start["outputs"]:
        assert "nltk_data" not in out and "Flash Attention" not in out and "Traceback" not in out


def test_folder_with_sidecars_tokenized_with_the_trained_codec(quick_start):
    out = quick_start["outputs"][1]
    work = quick_start["work"] / "my_wavs"
    want = expected_texts()
    total = 0
    for part in ("train", "dev", "test"):
        rows = _rows(work / "dump" / "tokens" / part / "datasets")
        for r in rows:  # utt ids are <speaker>-<file>: the transcript of that file's sidecar
            spk, name = r["utt_id"].split("-", 1)
            assert r["text"] == want[(spk, name)]
        total += len(rows)
    assert total == 27 and "broken" in (work / "data" / "rejected.tsv").read_text()
    assert "Stage 4" not in out and "Stage 6: train: datasets export" in out


def test_run_sh_names_the_interpreter_option(tmp_path):
    proc = subprocess.run(["bash", "./run.sh", "--python", str(tmp_path / "no-python"), "--stage", "1"],
                          cwd=RECIPE, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "--python PATH" in proc.stderr and "make demo VENV=PATH" in proc.stderr


def test_run_sh_says_when_the_config_sets_the_step_count():
    tiny = ["--train_config", "conf/tuning/train_snac24k_tiny.yaml", "--help"]
    quiet = subprocess.run(["bash", "./run.sh", *tiny[:2], "--num_iters", "5", "--help"], cwd=RECIPE,
                           capture_output=True, text=True, timeout=60)
    loud = subprocess.run(["bash", "./run.sh", *tiny], cwd=RECIPE, capture_output=True, text=True, timeout=60)
    assert quiet.returncode == loud.returncode == 0
    assert "no --num_iters" in loud.stderr and "Give --num_iters N" in loud.stderr
    assert "no --num_iters" not in quiet.stderr


def test_readme_quick_start_is_the_tested_one():
    """README's own-data journey shows the very command lines this module runs from docs/data.md."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = [[l for l in b.splitlines() if l.strip() and not l.startswith("#")]
              for b in re.findall(r"```bash\n(.*?)```", readme, flags=re.S)]
    assert quick_start_blocks()[0] in blocks
