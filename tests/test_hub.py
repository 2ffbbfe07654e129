"""Hugging Face repo ids: a hub cache built in a temp dir, loaded with HF_HUB_OFFLINE=1 (no network)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from espnet_snac.model import hub
from espnet_snac.model.checkpoints import CheckpointError, espnet_init_param
from espnet_snac.model.snac import SNAC

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
SMALL = dict(sampling_rate=24000, encoder_dim=4, encoder_rates=[2, 4, 8, 8], decoder_dim=16,
             decoder_rates=[8, 8, 4, 2], attn_window_size=None, codebook_size=64, codebook_dim=4,
             vq_strides=[4, 2, 1], noise=True, depthwise=True)
REPO_ID = "someone/snac_tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def build_cache(cache: Path, model_dir: Path, repo_id: str = REPO_ID, commit: str = COMMIT,
                files=("config.json", "pytorch_model.bin")) -> Path:
    """The layout huggingface_hub writes: models--owner--name/{blobs,snapshots/<commit>,refs/main}."""
    root = cache / ("models--" + repo_id.replace("/", "--"))
    snap = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(files):
        blob = root / "blobs" / f"{commit[:8]}{i:032x}"
        shutil.copyfile(model_dir / name, blob)
        os.symlink(os.path.relpath(blob, snap), snap / name)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snap


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return SNAC(**SMALL).save_pretrained(tmp_path_factory.mktemp("model") / "tiny", safetensors=True)


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def same_weights(a: SNAC, b: SNAC) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_repo_id_loads_from_local_cache_offline(tmp_path, model_dir, offline):
    build_cache(tmp_path / "hub", model_dir)
    model = SNAC.from_pretrained(REPO_ID, cache_dir=tmp_path / "hub")
    assert same_weights(model, SNAC.from_pretrained(model_dir))
    assert not model.training
    # a newer commit becomes main; the old one stays reachable by its hash
    torch.manual_seed(1)
    newer_dir = SNAC(**SMALL).save_pretrained(tmp_path / "newer")
    build_cache(tmp_path / "hub", newer_dir, commit="f" * 40)
    assert same_weights(SNAC.from_pretrained(REPO_ID, cache_dir=tmp_path / "hub"), SNAC.from_pretrained(newer_dir))
    pinned = SNAC.from_pretrained(REPO_ID, cache_dir=tmp_path / "hub", revision=COMMIT)
    assert same_weights(pinned, model)


def test_safetensors_preferred_and_matches_official(tmp_path, model_dir, offline):
    snac = pytest.importorskip("snac")
    snap = build_cache(tmp_path / "hub", model_dir, files=("config.json", "model.safetensors"))
    ours = SNAC.from_pretrained(REPO_ID, cache_dir=tmp_path / "hub")
    assert hub.resolve(REPO_ID, cache_dir=tmp_path / "hub") == snap
    official = snac.SNAC.from_pretrained(str(model_dir))
    x = torch.randn(1, 1, 4096, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert all(torch.equal(a, b) for a, b in zip(ours.encode(x), official.encode(x)))


def test_not_cached_offline_names_the_download_command(tmp_path, offline):
    (tmp_path / "hub").mkdir()
    with pytest.raises(CheckpointError) as err:
        SNAC.from_pretrained("hubertsiuzdak/snac_24khz", cache_dir=tmp_path / "hub")
    msg = str(err.value)
    assert "hf download hubertsiuzdak/snac_24khz" in msg and "HF_HUB_OFFLINE=1" in msg
    assert str(tmp_path / "hub") in msg


def test_cached_config_without_weights_is_reported(tmp_path, model_dir, offline):
    build_cache(tmp_path / "hub", model_dir, files=("config.json",))
    with pytest.raises(CheckpointError, match="model.safetensors or pytorch_model.bin not found"):
        SNAC.from_pretrained(REPO_ID, cache_dir=tmp_path / "hub")


def test_local_path_wins_and_paths_are_not_repo_ids(tmp_path, model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "someone").mkdir()
    shutil.copytree(model_dir, tmp_path / "someone" / "snac_tiny")
    assert not hub.looks_like_repo_id(REPO_ID)  # exists locally: a path
    assert same_weights(SNAC.from_pretrained(REPO_ID), SNAC.from_pretrained(model_dir))
    for spec in ("./a/b", "/abs/path", "a/b/c", "../x/y", "exp/latest.pth/x/y", "a", "exp/latest.pth", "m/pack.zip"):
        assert not hub.looks_like_repo_id(spec), spec
    assert hub.looks_like_repo_id("hubertsiuzdak/snac_24khz")
    with pytest.raises(CheckpointError, match="revision"):
        SNAC.from_pretrained(model_dir, revision="main")


def test_save_pretrained_writes_model_card(model_dir):
    card = (model_dir / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: espnet-snac")
    assert "24000 Hz" in card and "strides [4, 2, 1]" in card
    assert json.loads(card.split("```json\n")[1].split("```")[0]) == json.loads((model_dir / "config.json").read_text())


def test_push_to_hub_uploads_the_official_format(model_dir, monkeypatch):
    import huggingface_hub

    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls["create"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, commit_message, revision=None):
            calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            calls["card"] = (Path(folder_path) / "README.md").read_text()
            return type("Info", (), {"commit_url": f"https://hf.co/{repo_id}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = SNAC.from_pretrained(model_dir).push_to_hub("me/my_snac", private=True, token="t")
    assert url == "https://hf.co/me/my_snac/commit/1"
    assert calls["create"] == ("me/my_snac", True, True) and calls["token"] == "t"
    assert calls["files"] == ["README.md", "config.json", "model.safetensors", "pytorch_model.bin"]
    assert 'SNAC.from_pretrained("me/my_snac")' in calls["card"]


def test_init_param_helper_converts_repo_ids(tmp_path, model_dir, monkeypatch, offline):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    build_cache(tmp_path / "hub", model_dir)
    out = espnet_init_param(REPO_ID, tmp_path / "init")
    state = torch.load(out, weights_only=True)
    assert all(k.startswith("codec.generator.") for k in state)
    ref = SNAC.from_pretrained(model_dir).state_dict()
    assert all(torch.equal(state["codec.generator." + k], v) for k, v in ref.items())
    assert espnet_init_param(f"{out}:codec.generator:codec.generator", tmp_path / "x") == \
        f"{out}:codec.generator:codec.generator"


def test_extract_tokens_and_tokenizer_accept_repo_ids(tmp_path, model_dir, monkeypatch, offline):
    import huggingface_hub.constants as constants

    from espnet_snac.bin.extract_tokens import _load_model
    from espnet_snac.inference.tokenizer import SNACTokenizer

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    build_cache(tmp_path / "hub", model_dir)
    reference = SNAC.from_pretrained(model_dir)
    assert same_weights(_load_model(REPO_ID, torch.device("cpu")), reference)
    assert same_weights(SNACTokenizer(REPO_ID).codec, reference)
    with pytest.raises(SystemExit, match="hf download nobody/absent"):
        _load_model("nobody/absent", torch.device("cpu"))


def test_cli_accepts_repo_ids(tmp_path, model_dir):
    """The console entry point in a fresh process: HF_HUB_CACHE + HF_HUB_OFFLINE from the environment."""
    import numpy as np
    import soundfile as sf

    build_cache(tmp_path / "hub", model_dir)
    wav = tmp_path / "a.wav"
    sf.write(wav, 0.1 * np.sin(np.arange(6000) / 7.0), 24000)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"), OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "espnet_snac.cli", "encode", str(wav), str(tmp_path / "a.snac"),
                          "--model", REPO_ID, "--device", "cpu", "-q"], env=env, capture_output=True, text=True,
                         cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "a.snac").stat().st_size > 0
    run = subprocess.run([sys.executable, "-m", "espnet_snac.cli", "encode", str(wav), str(tmp_path / "b.snac"),
                          "--model", "nobody/not_cached", "--device", "cpu"], env=env, capture_output=True,
                         text=True, cwd=REPO)
    assert run.returncode == 1
    assert "hf download nobody/not_cached" in run.stderr and "Traceback" not in run.stderr
