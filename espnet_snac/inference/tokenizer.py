"""``SNACTokenizer``: SNAC-24k as a speech tokenizer with the surface of ESPnet's ``CodecTokenizer``
(``espnet2/speechlm/tokenizer/codec_tokenizer.py``).

Shapes: ``wavs (B, 1, T)`` float at 24 kHz; ``codes (B, F, 7)`` raw codes 0..4095 in the frame order
of :mod:`espnet_snac.model.frames`, ``F = ceil(T / 2048)``; flat tokens ``(B, F * 7)`` with offset
``k * 4096`` for frame position ``k``; audio ``(B, F * 2048)`` (the model's padded length).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from espnet_snac.io.audio_io import resample as resample_audio
from espnet_snac.io.audio_io import to_mono
from espnet_snac.model.frames import FRAME_SIZE, codes_to_frames, frames_to_codes
from espnet_snac.model.snac import SNAC
from espnet_snac.tokens.batching import BatchEncoder, encode_exact, exact_cuda_math
from espnet_snac.tokens.layout import flat_to_frames, frames_to_flat

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class SNACTokenizer(nn.Module):
    """Tokenize speech with a SNAC-24k model.

    Args:
        model: a :class:`~espnet_snac.SNAC` instance, or anything ``SNAC.from_pretrained`` reads
            (Hugging Face repo id such as ``hubertsiuzdak/snac_24khz``, official-format directory, ESPnet
            experiment directory or ``.pth``, packed ``.zip``).
        device: where the model runs; inputs are moved there, outputs stay there.
        dump_audio: ``forward`` also returns the resynthesised audio (as ESPnet's tokenizer).
        noise_seed: seed for the decoder's noise blocks, making ``decode`` reproducible
            (``None``: global RNG, as the official package).
        dtype: ``float32`` (default, exact), ``bfloat16`` or ``float16`` autocast for encoding.

    ESPnet attribute names are kept: ``n_codebook`` (7 tokens per frame), ``size_codebook`` (4096),
    ``sample_rate`` (24000), ``subsample`` (2048 samples per frame).
    """

    def __init__(self, model: Union[SNAC, str, Path], device: Union[str, torch.device] = "cpu",
                 dump_audio: bool = False, noise_seed: Optional[int] = None, dtype: str = "float32"):
        super().__init__()
        if not isinstance(model, nn.Module):
            model = SNAC.from_pretrained(model, map_location=device)
        if list(model.vq_strides) != [4, 2, 1]:
            raise ValueError(f"SNACTokenizer needs a 3-level model with vq_strides [4, 2, 1] (SNAC-24k), "
                             f"got {list(model.vq_strides)}")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}")
        self.codec = model.to(device).eval()
        self.dump_audio = dump_audio
        self.noise_seed = noise_seed
        self.dtype = _DTYPES[dtype]
        self.n_codebook = FRAME_SIZE
        self.size_codebook = int(model.codebook_size)
        self.subsample = int(model.pad_multiple)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.codec.parameters()).device

    @property
    def sample_rate(self) -> int:
        return int(self.codec.sampling_rate)

    @property
    def vocab_size(self) -> int:
        """Number of flattened token ids (7 * 4096)."""
        return self.n_codebook * self.size_codebook

    @property
    def frame_rate(self) -> float:
        """Frames per second (11.72 Hz); tokens per second is 7 times this."""
        return self.sample_rate / self.subsample

    @property
    def token_rate(self) -> float:
        return self.frame_rate * self.n_codebook

    def _autocast(self):
        if self.dtype == torch.float32:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _wavs(self, wavs: torch.Tensor) -> torch.Tensor:
        if wavs.dim() != 3 or wavs.size(1) != 1:
            raise ValueError(f"wavs must have shape (B, 1, T), got {tuple(wavs.shape)}")
        return wavs.to(self.device, torch.float32)

    # ------------------------------------------------------------------ discrete
    @torch.no_grad()
    def encode(self, wavs: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``wavs (B, 1, T)`` -> ``codes (B, F, 7)`` (long).

        With ``lengths (B,)`` (valid samples per row), each row is encoded as if alone (exactly the
        codes of ``wavs[b, :, :lengths[b]]``); frames past a row's end are filled with ``-1``.
        """
        wavs = self._wavs(wavs)
        with self._autocast():
            if lengths is None:  # on CUDA in IEEE fp32 like the exact path, so both give the same codes
                with exact_cuda_math(self.device):
                    return codes_to_frames(self.codec.encode(wavs))
            rows = encode_exact(self.codec, [wavs[b, 0, : int(n)] for b, n in enumerate(lengths)])
        frames = [codes_to_frames([c[None] for c in levels])[0] for levels in rows]
        out = torch.full((len(frames), max(len(f) for f in frames), FRAME_SIZE), -1,
                         dtype=torch.long, device=self.device)
        for b, f in enumerate(frames):
            out[b, : len(f)] = f
        return out

    def encode_batch(self, wavs: Sequence[Union[np.ndarray, torch.Tensor]], batch_size: int = 8,
                     window_seconds: float = 30.0, context_seconds: float = 0.5,
                     sampling_rate: Optional[int] = None, resample: bool = True) -> List[np.ndarray]:
        """Variable-length signals -> per signal ``(F_i, 7)`` int32 codes, batched by length; equal to
        encoding each alone (long ones are windowed, see ``tokens.batching``).

        Each signal is ``(T,)``, or ``(T, C)`` / ``(C, T)`` with up to 8 channels, averaged to mono. Its
        rate is ``sampling_rate`` (default: the model's, 24 kHz). Another rate is resampled to the model
        rate exactly as ``snac encode`` does (soxr, very high quality); with ``resample=False`` it is
        refused with a ``ValueError`` instead.
        """
        rate = self.sample_rate if sampling_rate is None else int(sampling_rate)
        if rate <= 0:
            raise ValueError(f"sampling_rate must be a positive number of Hz, got {sampling_rate!r}")
        if rate != self.sample_rate and not resample:
            raise ValueError(f"the signals are at {rate} Hz but the model takes {self.sample_rate} Hz: resample "
                             "them, or call encode_batch(..., resample=True)")
        encoder = BatchEncoder(self.codec, batch_size=batch_size, window_seconds=window_seconds,
                               context_seconds=context_seconds, dtype=self.dtype)
        mono = [_mono(w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else np.asarray(w), i)
                for i, w in enumerate(wavs)]
        if rate != self.sample_rate:
            mono = [resample_audio(m, rate, self.sample_rate) for m in mono]
        return encoder.encode(mono)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, length: Optional[int] = None) -> torch.Tensor:
        """``codes (B, F, 7)`` -> ``waveform (B, F * 2048)`` (or ``length`` samples)."""
        codes = torch.as_tensor(codes, device=self.device).long()
        if codes.dim() != 3 or codes.size(-1) != FRAME_SIZE:
            raise ValueError(f"codes must have shape (B, F, {FRAME_SIZE}), got {tuple(codes.shape)}")
        if bool(((codes < 0) | (codes >= self.size_codebook)).any()):
            raise ValueError(f"codes must be in [0, {self.size_codebook}); got min {int(codes.min())}, "
                             f"max {int(codes.max())} (flattened tokens go through detokenize)")
        audio = self.codec.decode(frames_to_codes(codes), length=length, noise_seed=self.noise_seed)
        return audio.squeeze(1)

    @torch.no_grad()
    def forward(self, wavs: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``wavs (B, 1, T)`` -> ``(tokens (B, F * 7) int32 with offsets k * 4096, resynthesis or None)``.

        As ESPnet's ``CodecTokenizer.forward``; the audio is returned when ``dump_audio`` is set.
        """
        codes = self.encode(wavs)
        audio = self.decode(codes) if self.dump_audio else None
        return frames_to_flat(codes, codebook_size=self.size_codebook).int(), audio

    def tokenize(self, wavs: torch.Tensor) -> torch.Tensor:
        """Flat tokens only: ``forward(wavs)[0]``."""
        return self.forward(wavs)[0]

    def detokenize(self, tokens: torch.Tensor, n_codebook: Optional[int] = None,
                   length: Optional[int] = None) -> torch.Tensor:
        """Flat tokens ``(B, F * 7)`` or ``(F * 7,)`` -> audio ``(B, samples)`` or ``(samples,)``."""
        if n_codebook not in (None, FRAME_SIZE):
            raise ValueError(f"SNAC frames hold {FRAME_SIZE} tokens, got n_codebook={n_codebook}")
        tokens = torch.as_tensor(tokens, device=self.device)
        batched = tokens.dim() == 2
        frames = flat_to_frames(tokens if batched else tokens[None], codebook_size=self.size_codebook)
        audio = self.decode(frames, length=length)
        return audio if batched else audio[0]

    def tokens_to_codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """Flat tokens ``(..., F * 7)`` -> raw codes ``(..., F, 7)`` (validates each position's range)."""
        return flat_to_frames(torch.as_tensor(tokens), codebook_size=self.size_codebook)

    # ------------------------------------------------------------------ continuous
    @torch.no_grad()
    def encode_continuous(self, wavs: torch.Tensor) -> torch.Tensor:
        """``wavs (B, 1, T)`` -> quantised latent ``(B, T_latent, D)`` (``T_latent = 4 F``, D = 768):
        the sum of the three levels' contributions, i.e. what ``decode_continuous`` turns into audio."""
        wavs = self._wavs(wavs)
        with self._autocast():
            z = self.codec.encoder(self.codec.preprocess(wavs))
            z_q = self.codec.quantizer(z).z_q
        return z_q.float().transpose(1, 2)

    @torch.no_grad()
    def decode_continuous(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, T_latent, D)`` -> ``waveform (B, T_latent * 512)``."""
        z = torch.as_tensor(z, device=self.device, dtype=torch.float32).transpose(1, 2)
        with self.codec.noise(seed=self.noise_seed, device=self.device):
            audio = self.codec.decoder(z)
        return audio.squeeze(1)


def _mono(array: np.ndarray, index: int) -> np.ndarray:
    """One signal of ``encode_batch`` as mono float32 ``(T,)``: ``(T,)``, ``(1, T)``, ``(T, C)`` or ``(C, T)``."""
    if array.ndim == 2 and 1 in array.shape:
        array = array.reshape(-1)
    if array.ndim == 2:
        if array.shape[0] <= 8 < array.shape[1]:
            array = array.T
        elif not array.shape[1] <= 8 < array.shape[0]:
            raise ValueError(f"signal {index}: shape {array.shape} is not (T,), (T, C) or (C, T) with C <= 8")
    elif array.ndim != 1:
        raise ValueError(f"signal {index}: expected 1-D or 2-D audio, got shape {array.shape}")
    return to_mono(array.astype(np.float32, copy=False))
