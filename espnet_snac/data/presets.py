"""Dataset presets (``conf/datasets/NAME.yaml``): a source, its columns and splits.

Keys: ``name``, ``source`` (as for ``--source``), ``splits`` (mapping output subset -> source split,
e.g. ``{train: train.clean.100, dev: validation.clean}``), optional ``audio_column``,
``speaker_column``, ``id_column``, ``text_column`` (the transcript), ``streaming``, ``dev_fraction``, ``test_fraction``, ``split_by``
and a free-text ``description``. Command-line options override preset values.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List

PRESET_TYPES = {"name": str, "description": str, "source": str, "splits": dict, "audio_column": str,
                "speaker_column": str, "id_column": str, "text_column": str, "streaming": bool, "dev_fraction": (int, float),
                "test_fraction": (int, float), "split_by": str}
PRESET_KEYS = set(PRESET_TYPES)
_TYPE_NAMES = {str: "a string", dict: "a mapping", bool: "true or false", (int, float): "a number"}


def preset_dirs() -> List[Path]:
    """Where preset names are looked up: ./conf/datasets, then the repository's conf/datasets."""
    return [Path.cwd() / "conf" / "datasets", Path(__file__).resolve().parents[2] / "conf" / "datasets"]


def load_preset(name_or_path: str) -> Dict[str, Any]:
    """Read and check a preset given by file path or by name. Raises ValueError."""
    import yaml

    candidates = [Path(name_or_path)] if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path \
        else [d / f"{name_or_path}.yaml" for d in preset_dirs()]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise ValueError(f"preset {name_or_path!r} not found (looked at {', '.join(map(str, candidates))})")
    with open(path, encoding="utf-8") as fh:
        preset = yaml.safe_load(fh) or {}
    if not isinstance(preset, dict):
        raise ValueError(f"{path}: a preset must be a mapping")
    unknown = set(preset) - PRESET_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)} (allowed: {sorted(PRESET_KEYS)})")
    if "source" not in preset:
        raise ValueError(f"{path}: 'source' is required")
    for key, value in preset.items():
        want = PRESET_TYPES[key]
        if value is not None and key != "splits" and (isinstance(value, bool) != (want is bool)
                                                      or not isinstance(value, want)):
            raise ValueError(f"{path}: '{key}' must be {_TYPE_NAMES[want]}, got {type(value).__name__} {value!r}")
    for key in ("dev_fraction", "test_fraction"):
        if preset.get(key) is not None and not 0.0 <= preset[key] < 1.0:
            raise ValueError(f"{path}: '{key}' must be in [0, 1), got {preset[key]}")
    if preset.get("split_by") not in (None, "speaker", "utterance"):
        raise ValueError(f"{path}: 'split_by' must be speaker or utterance, got {preset['split_by']!r}")
    splits = preset.get("splits") or {}
    if not isinstance(splits, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in splits.items()):
        raise ValueError(f"{path}: 'splits' must map output names to source split names")
    preset["splits"] = splits
    return preset
