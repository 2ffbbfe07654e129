"""A few-second GAN training setup shared by the trainer tests: synthetic corpus, tiny model, CLI args."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np
import soundfile as sf
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "conf" / "tuning" / "train_snac24k_tiny.yaml"
CHUNK = 2048  # the smallest chunk SNAC-24k accepts: iterations cost ~0.25 s on one core


def write_corpus(root: Path, n_train: int = 2, chunks_per_utt: int = 3, nan_train: bool = False) -> Path:
    """``root/{train,dev}.scp`` + shape files. Each training utterance yields exactly
    ``chunks_per_utt`` chunks of :data:`CHUNK` samples (shift ratio 1), so with batch size B an epoch
    has ``n_train * chunks_per_utt // B`` iterations. ``nan_train`` fills the training audio with NaN
    (float WAV keeps it)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    length = CHUNK * chunks_per_utt
    t = np.arange(length) / 24000
    for name, n in (("train", n_train), ("dev", 1)):
        with open(root / f"{name}.scp", "w") as scp, open(root / f"{name}_shape", "w") as shape:
            for i in range(n):
                x = 0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.05 * rng.standard_normal(length)
                if nan_train and name == "train":
                    x[:] = np.nan
                path = root / f"{name}_{i}.wav"
                sf.write(path, x.astype(np.float32), 24000, subtype="FLOAT")
                scp.write(f"{name}_{i} {path}\n")
                shape.write(f"{name}_{i} {length}\n")
    return root


def train_args(data: Path, exp: Path, max_epoch: int = 1, batch_size: int = 2, n_train: int = 2,
               extra: Optional[List[str]] = None) -> List[str]:
    """Arguments of ``python -m espnet_snac.bin.gan_codec_train`` for the tiny config on ``data``."""
    return ["--config", str(TINY),
            "--train_data_path_and_name_and_type", f"{data}/train.scp,audio,sound",
            "--valid_data_path_and_name_and_type", f"{data}/dev.scp,audio,sound",
            "--train_shape_file", f"{data}/train_shape", "--valid_shape_file", f"{data}/dev_shape",
            "--output_dir", str(exp), "--ngpu", "0", "--resume", "true", "--max_epoch", str(max_epoch),
            "--chunk_length", str(CHUNK), "--batch_size", str(batch_size),
            "--num_iters_per_epoch", str(n_train), "--use_matplotlib", "false", "--use_tensorboard", "false",
            *(extra or [])]


def tiny_model(seed: int = 0):
    """The tiny config's ``ESPnetGANCodecModel`` (generator + discriminator + losses)."""
    from espnet2.gan_codec.espnet_model import ESPnetGANCodecModel

    from espnet_snac.objective.codec import SNACCodec

    conf = yaml.safe_load(TINY.read_text())["codec_conf"]
    torch.manual_seed(seed)
    return ESPnetGANCodecModel(SNACCodec(**conf))


def optimizers(model, lr: float = 1e-3):
    return [torch.optim.AdamW(model.codec.generator.parameters(), lr, betas=(0.8, 0.99)),
            torch.optim.AdamW(model.codec.discriminator.parameters(), lr, betas=(0.8, 0.99))]


def speech_like(batch: int = 1, length: int = CHUNK, seed: int = 0) -> torch.Tensor:
    """``(batch, length)`` harmonic tone + noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / 24000
    return 0.3 * torch.sin(2 * torch.pi * 180 * t) + 0.05 * torch.randn(batch, length, generator=g)


def write_untrained_experiment(exp: Path) -> Path:
    """An experiment directory as ESPnet leaves it for the tiny config: ``config.yaml`` (ESPnet's dump of
    the namespace, with non-option keys such as ``required``) and ``latest.pth``, the config's initial
    model. Returns ``exp``."""
    from espnet_snac.train.curve import build_training

    exp.mkdir(parents=True, exist_ok=True)
    conf = yaml.safe_load(TINY.read_text())
    conf.update(required=["output_dir"], version="202511", distributed=False, config=str(TINY))
    (exp / "config.yaml").write_text(yaml.safe_dump(conf))
    torch.save(build_training(TINY).model.state_dict(), exp / "latest.pth")
    return exp
