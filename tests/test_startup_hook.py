"""The start-up hook installed with the package: stock ESPnet tools see ``snac`` without importing it.

The wheels are built from a copy of the sources (as ``pip wheel --no-build-isolation`` and
``pip install -e`` do) and installed with pip into throwaway virtual environments, whose fresh
interpreters then run the stock ``espnet2.bin`` modules. torch, espnet2 and the rest come from this
test environment through a path-only ``.pth`` (it runs no code, so the test environment's own
installation of this package stays out).
"""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from espnet_snac import cli
from espnet_snac.model.snac import SNAC
from speech_samples import synthetic_speech

REPO = Path(__file__).resolve().parents[1]
HOOK = "espnet_snac_hook.pth"
SITE = f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"
TINY = dict(sampling_rate=24000, encoder_dim=4, encoder_rates=[2, 4, 8, 8], decoder_dim=16,
            decoder_rates=[8, 8, 4, 2], attn_window_size=None, codebook_size=4096, codebook_dim=8,
            vq_strides=[4, 2, 1], noise=True, depthwise=True)

# Runs in a fresh interpreter of the throwaway environment: what start-up loaded, then stock modules.
SCRIPT = r"""
import json, runpy, sys
report = {"at_startup": sorted(m for m in ("torch", "espnet2", "espnet_snac.objective.codec") if m in sys.modules),
          "hooks": [type(f).__name__ for f in sys.meta_path if type(f).__name__ == "_RegisterAfterImport"]}
for argv in json.loads(sys.argv[1]):
    sys.argv = list(argv)
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
import espnet_snac
from espnet2.tasks.gan_codec import codec_choices
report["codec"] = codec_choices.classes["snac"].__module__
report["package"] = espnet_snac.__file__
print("REPORT " + json.dumps(report))
"""


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(cmd, timeout=300, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                         env=_clean_env(), **kw)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out


def _pip(venv: Path, *args) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "--disable-pip-version-check",
                 "-q", *args])


def _venv(path: Path, with_test_env: bool) -> Path:
    _run([sys.executable, "-m", "venv", "--without-pip", path])
    if with_test_env:
        # path lines only: they put torch and espnet2 within reach of start-up code, run nothing
        (path / SITE / "00-test-env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return path


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict:
    """``{"wheel": path, "editable": path}`` built from a copy of the sources."""
    root = tmp_path_factory.mktemp("build")
    src = root / "src"
    src.mkdir()
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "espnet_snac", src / "espnet_snac", ignore=shutil.ignore_patterns("__pycache__"))
    built = {}
    for kind, hook in (("wheel", "build_wheel"), ("editable", "build_editable")):
        # one process per build: setuptools' backend keeps state between calls
        code = f"import sys\nfrom setuptools import build_meta\nprint(build_meta.{hook}(sys.argv[1]))"
        out = subprocess.run([sys.executable, "-c", code, str(root / "dist")], cwd=src, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, ("building the wheel failed (setuptools < 70.1 needs the 'wheel' package "
                                     f"of the test extra: pip install -e '.[test]'):\n{out.stderr[-3000:]}")
        built[kind] = root / "dist" / out.stdout.strip().splitlines()[-1]
    return dict(built, src=src)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    """An ESPnet experiment (config.yaml + latest.pth) converted from random official-format weights."""
    root = tmp_path_factory.mktemp("exp")
    torch.manual_seed(0)
    SNAC(**TINY).save_pretrained(root / "official")
    assert cli.main(["convert", str(root / "official"), str(root / "exp"), "-q"]) == 0
    return root / "exp"


@pytest.mark.parametrize("kind", ["wheel", "editable"])
def test_wheel_root_holds_the_hook_and_record_lists_it(wheels, kind):
    with zipfile.ZipFile(wheels[kind]) as zf:
        data = zf.read(HOOK)
        record_name = next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))
        record = {row[0]: row[1:] for row in csv.reader(io.StringIO(zf.read(record_name).decode()))}
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    assert record[HOOK] == [f"sha256={digest}", str(len(data))]  # pip uninstall removes what RECORD lists
    lines = data.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("import ") and "except Exception" in lines[0]


OUR_TRAINER_KEYS = ("grad_clip_generator", "grad_clip_discriminator", "precision", "max_consecutive_nonfinite",
                    "max_consecutive_unreadable", "checkpoint_interval_iters", "checkpoint_interval_minutes",
                    "augment_conf")


def test_our_trainer_keys_are_the_ones_stock_espnet_lacks():
    """The list above is what the stock parser would refuse in our configs."""
    from espnet2.tasks.gan_codec import GANCodecTask

    from espnet_snac.train.task import SNACGANCodecTask

    stock = {a.dest for a in GANCodecTask.get_parser()._actions}
    ours = {a.dest for a in SNACGANCodecTask.get_parser()._actions}
    assert ours - stock == set(OUR_TRAINER_KEYS)


def test_installed_wheel_lets_stock_espnet_tools_use_snac_and_uninstall_removes_it(wheels, experiment, tmp_path):
    venv = _venv(tmp_path / "venv", with_test_env=True)
    _pip(venv, "install", "--no-deps", "--no-index", wheels["wheel"])
    assert (venv / SITE / HOOK).is_file()

    wav = tmp_path / "utt1.wav"
    sf.write(wav, synthetic_speech(24000, 0.5, seed=1), 24000, subtype="PCM_16")
    (tmp_path / "wav.scp").write_text(f"utt1 {wav}\n")
    # The stock trainer knows none of our trainer's options (per-network clipping, precision, ...):
    # those configs need `python -m espnet_snac.bin.gan_codec_train`. Stock training gets them removed.
    config = yaml.safe_load((REPO / "conf" / "tuning" / "train_snac24k_tiny.yaml").read_text())
    for key in OUR_TRAINER_KEYS:
        config.pop(key, None)
    tiny_config = tmp_path / "stock_tiny.yaml"
    tiny_config.write_text(yaml.safe_dump(config))
    runs = [
        ["espnet2.bin.gan_codec_inference", "--ngpu", "0", "--train_config", str(experiment / "config.yaml"),
         "--model_file", str(experiment / "latest.pth"), "--output_dir", str(tmp_path / "decode"),
         "--data_path_and_name_and_type", f"{tmp_path / 'wav.scp'},audio,sound"],
        # --dry_run builds the model, both optimizers and the exponentialdecay schedulers, then stops
        ["espnet2.bin.gan_codec_train", "--codec", "snac", "--config", str(tiny_config), "--ngpu", "0",
         "--dry_run", "true", "--output_dir", str(tmp_path / "train")],
    ]
    out = _run([venv / "bin" / "python", "-c", SCRIPT, json.dumps(runs)], timeout=600, cwd=tmp_path)
    report = json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("REPORT "))[7:])
    assert report["at_startup"] == []  # start-up imported neither torch nor espnet2 (nor the codec)
    assert report["hooks"] == ["_RegisterAfterImport"]
    assert report["codec"] == "espnet_snac.objective.codec"
    assert Path(report["package"]).is_relative_to(venv / SITE)  # the installed copy, not the sources

    codes = np.load(tmp_path / "decode" / "codec" / "utt1.npy")
    assert codes.shape == (7, 1, -(-12000 // 2048)) and 0 <= codes.min() and codes.max() < 4096
    decoded, rate = sf.read(tmp_path / "decode" / "wav" / "utt1.wav")
    assert rate == 24000 and len(decoded) == 6 * 2048  # the stock tool writes the padded decode
    assert "codec: snac" in (tmp_path / "train" / "config.yaml").read_text()

    _pip(venv, "uninstall", "-y", "espnet-snac")
    assert not (venv / SITE / HOOK).exists() and not (venv / SITE / "espnet_snac").exists()
    after = _run([venv / "bin" / "python", "-c", "import sys; print('espnet_snac' in sys.modules)"])
    assert after.stdout.strip() == "False" and after.stderr == ""


def test_editable_install_hooks_the_source_tree(wheels, tmp_path):
    venv = _venv(tmp_path / "venv", with_test_env=False)
    _pip(venv, "install", "--no-deps", "--no-index", wheels["editable"])
    code = ("import sys, json; m = sys.modules.get('espnet_snac.registry'); print(json.dumps("
            "[m and m.__file__, [type(f).__name__ for f in sys.meta_path], 'torch' in sys.modules]))")
    out = _run([venv / "bin" / "python", "-c", code], cwd=tmp_path)
    registry, finders, torch_loaded = json.loads(out.stdout)
    assert registry == str(wheels["src"] / "espnet_snac" / "registry.py")
    assert "_RegisterAfterImport" in finders and not torch_loaded
    assert out.stderr == ""  # a .pth error would be printed here
