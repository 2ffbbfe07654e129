"""Hugging Face Hub ids for SNAC models: resolve, write a model card, upload.

``SNAC.from_pretrained("hubertsiuzdak/snac_24khz")`` works like the official package: the files come
from the local Hugging Face cache when they are there (no network call at all), else through
``huggingface_hub.hf_hub_download``, which honours ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` and ``HF_HOME``.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Dict, Optional, Union

from espnet_snac.model.checkpoints import CheckpointError
from espnet_snac.model.frames import code_bitrate

PathLike = Union[str, Path]

#: Weight files of an official-format repo, in order of preference (safetensors needs no unpickling).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CONFIG_FILE = "config.json"
# owner/name as the Hub spells them: letters, digits, '-', '_', '.'; no '..', no leading '.'.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


#: Names of local model files, never repo ids (``exp/latest.pth`` that does not exist is a missing file).
_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".zip", ".json", ".yaml", ".yml", ".safetensors")


def looks_like_repo_id(spec: PathLike) -> bool:
    """True for ``owner/name`` that is not an existing local path (a local path always wins)."""
    text = str(spec)
    return (bool(_REPO_ID.match(text)) and ".." not in text and not text.lower().endswith(_FILE_SUFFIXES)
            and not Path(text).exists())


def download_command(repo_id: str, revision: Optional[str] = None) -> str:
    """The shell command that puts ``repo_id`` in the cache (``hf`` is huggingface_hub's CLI since 1.0)."""
    extra = f" --revision {revision}" if revision else ""
    return f"hf download {repo_id} {CONFIG_FILE} pytorch_model.bin{extra}"


def _cached(repo_id: str, filename: str, revision: Optional[str], cache_dir: Optional[PathLike]) -> Optional[str]:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
    return found if isinstance(found, str) else None  # None: unknown; _CACHED_NO_EXIST: known missing


def _fetch(repo_id: str, filename: str, revision: Optional[str], cache_dir: Optional[PathLike]) -> Optional[str]:
    """Path of ``filename`` in the cache, downloading it if needed; None if the repo has no such file."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    local = _cached(repo_id, filename, revision, cache_dir)
    if local is not None:
        return local
    try:
        return hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir,
                               local_files_only=hub_offline())
    except EntryNotFoundError:  # the repo exists but has no such file (RemoteEntryNotFoundError)
        return None
    except LocalEntryNotFoundError:  # offline (HF_HUB_OFFLINE=1 or no network) and not cached
        return None


def resolve(repo_id: str, revision: Optional[str] = None, cache_dir: Optional[PathLike] = None) -> Path:
    """Directory (a cache snapshot) holding ``config.json`` and the weights of ``repo_id``.

    Raises :class:`CheckpointError` naming the download command when the files are neither cached
    nor downloadable, and when the repo is not an official-format SNAC repo.
    """
    try:
        import huggingface_hub  # noqa: F401
    except ImportError as exc:
        raise CheckpointError(f"{repo_id}: looks like a Hugging Face repo id, but huggingface_hub is not "
                              "installed (pip install huggingface_hub), and no such local path exists") from exc
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        config = _fetch(repo_id, CONFIG_FILE, revision, cache_dir)
        weights = None
        if config is not None:
            for name in WEIGHT_FILES:
                weights = _fetch(repo_id, name, revision, cache_dir)
                if weights is not None:
                    break
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise CheckpointError(f"{repo_id}: no such model file or directory, and no accessible Hugging Face "
                              f"repo of that name ({type(exc).__name__}); check the spelling or log in "
                              "with `hf auth login`") from exc
    except RevisionNotFoundError as exc:
        raise CheckpointError(f"{repo_id}: revision {revision!r} not found on the Hugging Face Hub") from exc
    except (HfHubHTTPError, OSError) as exc:  # network trouble, rate limits, full disk
        raise CheckpointError(f"{repo_id}: download from the Hugging Face Hub failed ({type(exc).__name__}: "
                              f"{exc}); fetch it with `{download_command(repo_id, revision)}` and retry") from exc
    if config is None or weights is None:
        from huggingface_hub import constants

        offline = hub_offline()
        where = cache_dir or constants.HF_HUB_CACHE
        missing = CONFIG_FILE if config is None else " or ".join(WEIGHT_FILES)
        raise CheckpointError(
            f"{repo_id}: no such model file or directory; as a Hugging Face repo id: {missing} not found "
            f"in the local cache ({where})"
            + (" and downloads are off (HF_HUB_OFFLINE=1)" if offline else " nor on the Hub (or no network)")
            + f"; download it on a machine with network access with `{download_command(repo_id, revision)}` "
            "(same HF_HUB_CACHE), or pass a local model directory"
        )
    folder = Path(config).parent
    if Path(weights).parent != folder:  # both come from one snapshot of one revision
        raise CheckpointError(f"{repo_id}: config.json and weights resolved to different snapshots "
                              f"({folder}, {Path(weights).parent}); pass an explicit revision")
    return folder


# ---------------------------------------------------------------------------------------- card
def model_card(config: Dict, repo_id: Optional[str] = None) -> str:
    """A model card (``README.md``) with Hub metadata, the codec's rates and how to load it."""
    rate = int(config["sampling_rate"])
    hop = 1
    for r in config["encoder_rates"]:
        hop *= int(r)
    strides = [int(s) for s in config["vq_strides"]]
    frame_rates = [rate / (hop * s) for s in strides]
    bitrate = code_bitrate(frame_rates, int(config["codebook_size"]))
    name = repo_id or "path/to/this/directory"
    rates = ", ".join(f"{f:.2f}" for f in frame_rates)
    return f"""---
library_name: espnet-snac
license: mit
tags:
- audio
- audio-codec
- snac
- espnet
pipeline_tag: audio-to-audio
---

# SNAC {rate // 1000} kHz

Multi-Scale Neural Audio Codec (SNAC) in the official format (`config.json` + weights): loads with
the official `snac` package and with `espnet_snac`, whose `SNAC` is bit-exact with it.

| | |
|---|---|
| sampling rate | {rate} Hz |
| levels | {len(strides)} (strides {strides}), codebook {config["codebook_size"]} |
| codes per second | {rates} (coarse to fine) |
| bitrate | {bitrate / 1000:.2f} kbit/s |

```python
from espnet_snac import SNAC          # or: from snac import SNAC
model = SNAC.from_pretrained("{name}").eval()
codes = model.encode(audio)           # audio: float tensor (batch, 1, samples) at {rate} Hz
audio_hat = model.decode(codes)
```

Config:

```json
{json.dumps(config, indent=2)}
```
"""


def push_to_hub(model, repo_id: str, private: Optional[bool] = None, token: Optional[str] = None,
                commit_message: str = "Upload SNAC model", revision: Optional[str] = None) -> str:
    """Create ``repo_id`` if needed and upload ``config.json``, ``model.safetensors``,
    ``pytorch_model.bin`` and the model card. Returns the commit URL."""
    import tempfile

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, repo_id=repo_id, safetensors=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message,
                                 revision=revision)
    return str(getattr(info, "commit_url", info))


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it at import, or as set since then."""
    from huggingface_hub import constants

    return constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in constants.ENV_VARS_TRUE_VALUES
