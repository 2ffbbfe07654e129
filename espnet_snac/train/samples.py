"""Listening samples during training: fixed held-out clips reconstructed at every validation.

For each clip ``i`` of the fixed batch, ``output_dir`` (``exp/.../samples/epoch_N``) receives
``rec_i.wav`` (16-bit PCM at the codec rate) and ``mel_i.png`` (log-mel of the reference above the
reconstruction, one colour scale); the references are written once, as ``ref_i.wav`` in
``reference_dir`` (default: the parent of ``output_dir``). With a TensorBoard writer the same audio
and images go to ``samples/rec_i`` / ``samples/mel_i`` at global step = epoch (``samples/ref_i`` once).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

PathLike = Union[str, Path]

#: Seed of the decoder's noise blocks, so reconstructions of different epochs are comparable.
NOISE_SEED = 0
#: Mel analysis of the images: 43 ms windows, 10.7 ms hop at 24 kHz.
N_FFT, HOP, N_MELS = 1024, 256, 100


def log_mel(audio: torch.Tensor, sampling_rate: int, n_fft: int = N_FFT, hop: int = HOP,
            n_mels: int = N_MELS) -> torch.Tensor:
    """``(T,)`` waveform -> ``(n_mels, frames)`` log10 mel magnitude (clamped at 1e-5)."""
    window = torch.hann_window(n_fft, device=audio.device)
    spec = torch.stft(audio.float(), n_fft, hop_length=hop, window=window, center=True, pad_mode="reflect",
                      return_complex=True).abs()
    fbank = AF.melscale_fbanks(n_fft // 2 + 1, 0.0, sampling_rate / 2, n_mels, sampling_rate,
                               norm="slaney", mel_scale="slaney").to(spec.device)
    return (fbank.t() @ spec).clamp(min=1e-5).log10()


def render_mels(reference: np.ndarray, reconstruction: np.ndarray, sampling_rate: int, hop: int,
                title: str):
    """A two-panel figure (reference, reconstruction) sharing the reference's colour range."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 6), dpi=100)
    axes = fig.subplots(2, 1, sharex=True)
    top = float(reference.max())
    seconds = reference.shape[1] * hop / sampling_rate
    for ax, mel, name in zip(axes, (reference, reconstruction), ("reference", title)):
        image = ax.imshow(mel, origin="lower", aspect="auto", vmin=top - 5.0, vmax=top, cmap="magma",
                          extent=(0.0, seconds, 0, mel.shape[0]))
        ax.set_title(name)
        ax.set_ylabel("mel bin")
    axes[-1].set_xlabel("time (s)")
    fig.colorbar(image, ax=list(axes), label="log10 magnitude")
    return fig


def figure_to_rgb(fig) -> np.ndarray:
    """Render a matplotlib figure to an ``(H, W, 3)`` uint8 array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def write_wav(path: Path, samples: np.ndarray, sampling_rate: int) -> None:
    # Clip first: libsndfile wraps float samples outside [-1, 1] around when converting to PCM.
    sf.write(path, np.clip(samples, -1.0, 1.0), sampling_rate, subtype="PCM_16")


def write_validation_samples(codec, audio: torch.Tensor, output_dir: PathLike, epoch: int,
                             summary_writer=None, reference_dir: Optional[PathLike] = None) -> None:
    """Reconstruct the fixed held-out clips ``audio (B, T)`` (B <= 4) and write audio and mel images.

    ``codec`` is a :class:`espnet_snac.objective.codec.SNACCodec` (anything with ``.generator`` and ``.fs``). It runs
    in eval mode without gradients and with seeded decoder noise; its training mode is restored after.
    """
    if audio.dim() != 2:
        raise ValueError(f"validation samples must be a (B, T) batch of clips, got shape {tuple(audio.shape)}")
    if audio.shape[-1] <= N_FFT:
        raise ValueError(f"validation sample clips of {audio.shape[-1]} samples are too short for a mel image; "
                         f"use clips longer than {N_FFT} samples")
    output_dir = Path(output_dir)
    reference_dir = Path(reference_dir) if reference_dir is not None else output_dir.parent
    output_dir.mkdir(parents=True, exist_ok=True)
    reference_dir.mkdir(parents=True, exist_ok=True)
    generator, fs = codec.generator, int(codec.fs)
    device = next(generator.parameters()).device
    was_training = codec.training
    codec.eval()
    try:
        with torch.no_grad():
            x = audio.to(device=device, dtype=torch.float32).unsqueeze(1)
            codes = generator.encode(x)
            rec = generator.decode(codes, length=x.shape[-1], noise_seed=NOISE_SEED)[:, 0]
            mels_ref = [log_mel(r, fs).cpu().numpy() for r in x[:, 0]]
            mels_rec = [log_mel(r, fs).cpu().numpy() for r in rec]
    finally:
        codec.train(was_training)
    ref_np, rec_np = x[:, 0].cpu().numpy(), rec.cpu().numpy()
    for i in range(ref_np.shape[0]):
        ref_path = reference_dir / f"ref_{i}.wav"
        if not ref_path.exists():
            write_wav(ref_path, ref_np[i], fs)
            if summary_writer is not None:
                summary_writer.add_audio(f"samples/ref_{i}", torch.from_numpy(ref_np[i]).clamp(-1, 1)[None],
                                         epoch, sample_rate=fs)
        write_wav(output_dir / f"rec_{i}.wav", rec_np[i], fs)
        fig = render_mels(mels_ref[i], mels_rec[i], fs, hop=HOP, title=f"reconstruction, epoch {epoch}")
        fig.savefig(output_dir / f"mel_{i}.png")
        if summary_writer is not None:
            summary_writer.add_audio(f"samples/rec_{i}", torch.from_numpy(rec_np[i]).clamp(-1, 1)[None],
                                     epoch, sample_rate=fs)
            summary_writer.add_image(f"samples/mel_{i}", figure_to_rgb(fig), epoch, dataformats="HWC")
    if summary_writer is not None:
        summary_writer.flush()
