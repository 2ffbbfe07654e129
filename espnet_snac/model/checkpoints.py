"""Reading SNAC weights from the official format, ESPnet experiments and packed ESPnet zips.

Everything is read with ``weights_only=True`` or safetensors: no pickled code is executed.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch
import yaml

from espnet_snac.model.configs import SNAC_24KHZ

# ESPnet saves ESPnetGANCodecModel.state_dict(): the generator sits under this prefix.
ESPNET_GENERATOR_PREFIX = "codec.generator."
ESPNET_DISCRIMINATOR_PREFIX = "codec.discriminator."
# Preference order for the weights inside an ESPnet experiment directory.
ESPNET_WEIGHT_PATTERNS = ("valid.mel_loss.best.pth", "*.best.pth", "*ave*.pth", "model.pth", "latest.pth",
                          "*epoch.pth", "checkpoint.pth")


class CheckpointError(ValueError):
    """A model path that cannot be read as SNAC weights; the message says why and what to pass."""


def _torch_load(source, map_location, label: str = "") -> Dict:
    try:
        state = torch.load(source, map_location=map_location, weights_only=True)
    except Exception as exc:  # damaged file, or pickled objects other than tensors
        raise CheckpointError(f"{label or source}: cannot read weights safely ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # ESPnet's resumable checkpoint.pth
    return state


def generator_config_from_espnet(config: Dict, source: str) -> Dict:
    """Extract the generator kwargs from an ESPnet ``config.yaml`` of a ``snac`` codec."""
    codec = config.get("codec")
    if codec != "snac":
        raise CheckpointError(f"{source}: config.yaml describes codec '{codec}', not 'snac'")
    conf = dict(config.get("codec_conf") or {})
    params = dict(conf.get("generator_params") or {})
    params.setdefault("sampling_rate", conf.get("sampling_rate", 24000))
    return {**SNAC_24KHZ, **params}


def _read_official_dir(path: Path, map_location) -> Tuple[Dict, Dict]:
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    if (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(path / "model.safetensors"), device=str(map_location))
    elif (path / "pytorch_model.bin").is_file():
        state = _torch_load(path / "pytorch_model.bin", map_location)
    else:
        raise CheckpointError(f"{path}: has config.json but neither pytorch_model.bin nor model.safetensors")
    return config, state


def _epoch_number(p: Path) -> int:
    digits = p.name.split("epoch")[0]
    return int(digits) if digits.isdigit() else -1


def _pick_espnet_weights(path: Path) -> Path:
    for pattern in ESPNET_WEIGHT_PATTERNS:
        found = sorted(path.glob(pattern))
        if found:
            return max(found, key=_epoch_number) if pattern == "*epoch.pth" else found[0]
    raise CheckpointError(f"{path}: ESPnet experiment without any .pth; train it first or pass the .pth path")


def _read_espnet(config_path: Path, weights: Path, map_location) -> Tuple[Dict, Dict]:
    with open(config_path, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    return generator_config_from_espnet(config, str(config_path)), _torch_load(weights, map_location)


def _read_zip(path: Path, map_location) -> Tuple[Dict, Dict]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        configs = [n for n in names if n.endswith("config.yaml") and "stats" not in n]
        weights = [n for n in names if n.endswith(".pth")]
        if not configs or not weights:
            raise CheckpointError(f"{path}: packed model must contain a config.yaml and a .pth file")
        config = yaml.safe_load(zf.read(configs[0]))
        state = _torch_load(io.BytesIO(zf.read(weights[0])), map_location, label=f"{path}:{weights[0]}")
    return generator_config_from_espnet(config, f"{path}:{configs[0]}"), state


def locate(spec: Union[str, Path], revision: Optional[str] = None,
           cache_dir: Optional[Union[str, Path]] = None) -> Path:
    """A local path for ``spec``: the path itself, or the cache snapshot of a Hugging Face repo id."""
    from espnet_snac.model import hub

    if hub.looks_like_repo_id(spec):
        return hub.resolve(str(spec), revision=revision, cache_dir=cache_dir)
    if revision is not None:
        raise CheckpointError(f"{spec}: revision={revision!r} applies to Hugging Face repo ids, not local paths")
    return Path(spec)


def espnet_init_param(spec: str, work_dir: Union[str, Path]) -> str:
    """An ESPnet ``--init_param`` value for ``spec``.

    A ``.pth`` path (optionally with ESPnet's ``:src_key:dst_key:exclude`` suffix) is returned as is;
    a Hugging Face repo id, an official-format directory or a packed zip is converted once to
    ``work_dir/init_generator.pth`` with ``codec.generator.*`` keys (the discriminator starts fresh).
    """
    head = str(spec).split(":", 1)[0]
    if head.endswith((".pth", ".pt")) and Path(head).is_file():
        return str(spec)
    location = locate(spec)
    config, state = read(location)
    from espnet_snac.io.atomic_files import atomic_torch_save, atomic_write_text

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    out = work_dir / "init_generator.pth"
    state = {ESPNET_GENERATOR_PREFIX + k: v for k, v in generator_state(state).items()}
    atomic_torch_save(state, out)
    atomic_write_text(work_dir / "init_generator.json", json.dumps(config, indent=2) + "\n")
    return str(out)


def read(path: Path, map_location: Union[str, torch.device] = "cpu") -> Tuple[Dict, Dict]:
    """Return ``(generator kwargs, state dict)`` for any supported model location."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such model file or directory")
    if path.is_dir():
        if (path / "config.json").is_file():
            return _read_official_dir(path, map_location)
        if (path / "config.yaml").is_file():
            return _read_espnet(path / "config.yaml", _pick_espnet_weights(path), map_location)
        raise CheckpointError(
            f"{path}: not a SNAC model directory (expected config.json + pytorch_model.bin/model.safetensors, "
            "or an ESPnet experiment with config.yaml + .pth)"
        )
    if path.suffix == ".zip":
        return _read_zip(path, map_location)
    if path.suffix in (".pth", ".pt", ".bin"):
        for candidate in (path.parent / "config.yaml", path.parent.parent / "config.yaml"):
            if candidate.is_file():
                return _read_espnet(candidate, path, map_location)
        if (path.parent / "config.json").is_file():
            config = json.loads((path.parent / "config.json").read_text(encoding="utf-8"))
            return config, _torch_load(path, map_location)
        raise CheckpointError(f"{path}: no config.yaml or config.json found next to the weights")
    raise CheckpointError(f"{path}: unsupported model file (use a directory, a .pth or a packed .zip)")


def generator_state(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Strip ESPnet prefixes; discriminator weights are dropped, anything else is kept (and checked)."""
    if not any(k.startswith(ESPNET_GENERATOR_PREFIX) for k in state):
        return dict(state)
    return {
        k[len(ESPNET_GENERATOR_PREFIX):] if k.startswith(ESPNET_GENERATOR_PREFIX) else k: v
        for k, v in state.items()
        if not k.startswith(ESPNET_DISCRIMINATOR_PREFIX)
    }


def load_state_strict(model: torch.nn.Module, state: Dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names every missing or unexpected key."""
    state = generator_state(state)
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        def show(keys):
            return ", ".join(keys[:10]) + (f" ... (+{len(keys) - 10} more)" if len(keys) > 10 else "")

        raise CheckpointError(
            f"{source}: weights do not match the SNAC config: "
            f"missing keys [{show(missing)}]; unexpected keys [{show(unexpected)}]"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{source}: weights do not match the SNAC config: {exc}") from exc
