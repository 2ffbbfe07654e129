"""Validation samples: reconstructions, references and mel images on disk and in TensorBoard."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from espnet_snac.train.samples import write_validation_samples
from speech_samples import CONF


@pytest.fixture(scope="module")
def codec():
    from espnet_snac.objective.codec import SNACCodec

    torch.manual_seed(0)
    conf = yaml.safe_load((CONF / "tuning" / "train_snac24k_tiny.yaml").read_text())["codec_conf"]
    return SNACCodec(**conf)


def _clips(speech24k, n=2, length=12000):
    return torch.stack([torch.from_numpy(x[:length].copy()) for x in speech24k[:n]])


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_samples_written_to_disk_and_tensorboard(codec, speech24k, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    audio = _clips(speech24k)
    samples = tmp_path / "exp" / "samples"
    old_umask = os.umask(0o027)
    try:
        writer = SummaryWriter(str(tmp_path / "tb"))
        codec.train()
        for epoch in (1, 2):
            write_validation_samples(codec, audio, samples / f"epoch_{epoch}", epoch, summary_writer=writer)
            assert codec.training  # the training mode is restored
        writer.close()
    finally:
        os.umask(old_umask)

    for i in range(2):
        ref, sr = sf.read(samples / f"ref_{i}.wav")
        assert sr == 24000 and sf.info(samples / f"ref_{i}.wav").subtype == "PCM_16"
        np.testing.assert_allclose(ref, audio[i].numpy(), atol=1 / 32768 + 1e-6)
        for epoch in (1, 2):
            rec_path = samples / f"epoch_{epoch}" / f"rec_{i}.wav"
            rec, sr = sf.read(rec_path)
            assert sr == 24000 and rec.shape == (audio.shape[1],) and sf.info(rec_path).subtype == "PCM_16"
            png = samples / f"epoch_{epoch}" / f"mel_{i}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert _mode(rec_path) == _mode(png) == 0o640 and _mode(samples / f"epoch_{epoch}") == 0o750
        # Seeded decoder noise and unchanged weights: both epochs give the same reconstruction.
        assert np.array_equal(sf.read(samples / "epoch_1" / f"rec_{i}.wav")[0],
                              sf.read(samples / "epoch_2" / f"rec_{i}.wav")[0])
    assert sorted(p.name for p in samples.iterdir()) == ["epoch_1", "epoch_2", "ref_0.wav", "ref_1.wav"]

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"audio": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"samples/ref_0", "samples/ref_1", "samples/rec_0", "samples/rec_1"} <= set(tags["audio"])
    assert {"samples/mel_0", "samples/mel_1"} <= set(tags["images"])
    assert [e.step for e in events.Audio("samples/rec_0")] == [1, 2]
    assert [e.step for e in events.Audio("samples/ref_0")] == [1]  # references once
    assert events.Audio("samples/rec_0")[0].sample_rate == 24000
    assert [e.step for e in events.Images("samples/mel_1")] == [1, 2]


def test_samples_without_tensorboard_and_bad_input(codec, speech24k, tmp_path):
    codec.eval()
    write_validation_samples(codec, _clips(speech24k, n=1, length=6000), tmp_path / "samples" / "epoch_3", 3)
    assert not codec.training
    assert (tmp_path / "samples" / "epoch_3" / "rec_0.wav").is_file()
    with pytest.raises(ValueError, match="too short"):
        write_validation_samples(codec, torch.zeros(1, 500), tmp_path / "x", 1)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        write_validation_samples(codec, torch.zeros(4000), tmp_path / "x", 1)
