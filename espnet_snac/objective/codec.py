"""SNAC as an ESPnet GAN codec (``codec: snac``): generator, discriminator and training objective."""
from __future__ import annotations

import copy
from typing import Any, Dict, List, NamedTuple, Optional

import torch
import torch.nn.functional as F
from espnet2.gan_codec.abs_gan_codec import AbsGANCodec
from espnet2.gan_codec.shared.discriminator.msmpmb_discriminator import (
    MultiScaleMultiPeriodMultiBandDiscriminator,
)
from espnet2.gan_tts.hifigan.loss import DiscriminatorAdversarialLoss, FeatureMatchLoss, GeneratorAdversarialLoss
from espnet2.torch_utils.device_funcs import force_gatherable

from espnet_snac.objective.config_check import check_codec_conf
from espnet_snac.model.frames import codes_to_frames, frames_to_codes, level_sizes_of
from espnet_snac.objective.losses import MultiResolutionSTFTLoss, MultiScaleMelLoss
from espnet_snac.model.snac import SNAC, SNAC_24KHZ, SNACOutput
from espnet_snac.objective.code_histogram import code_counts
from espnet_snac.objective.codebook_health import CodebookHealth
from espnet_snac.objective.dead_codes import DeadCodeRestart

BANDS = [(0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]

# DAC's discriminator: multi-period (HiFi-GAN MPD) + multi-band complex-STFT; `rates` (downsampling factors,
# e.g. [1, 2, 4]) adds a waveform MSD per factor. ESPnet ignores hop_factor/channel of the band discriminator.
DEFAULT_DISCRIMINATOR: Dict[str, Any] = {
    "rates": [],
    "fft_sizes": [2048, 1024, 512],
    "periods": [2, 3, 5, 7, 11],
    "period_discriminator_params": {
        "in_channels": 1, "out_channels": 1, "kernel_sizes": [5, 3], "channels": 32,
        "downsample_scales": [3, 3, 3, 3, 1], "max_downsample_channels": 1024, "bias": True,
        "nonlinear_activation": "LeakyReLU", "nonlinear_activation_params": {"negative_slope": 0.1},
        "use_weight_norm": True, "use_spectral_norm": False,
    },
    "band_discriminator_params": {"bands": BANDS},
}


class _CacheEntry(NamedTuple):
    source: torch.Tensor  # the input the output was made from (kept alive: its address stays unique)
    key: tuple  # identity of that input and the mode it was made in
    turn: str  # the turn that computed it; only the other turn may reuse it
    output: SNACOutput


def _merge(default: Dict[str, Any], override: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    out = copy.deepcopy(default)
    for k, v in (override or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def codebook_statistics(codes: torch.Tensor, codebook_size: int):
    """Fraction of the codebook used by ``codes`` and the perplexity of their histogram.

    Per batch, so capped by the batch size (windowed usage: :mod:`espnet_snac.objective.codebook_health`).
    No host synchronisation on CUDA: ``index_add_`` instead of ``bincount``, ``xlogy`` instead of a mask.
    """
    counts = code_counts([codes], codebook_size)[0].float()
    p = counts / counts.sum().clamp(min=1)
    entropy = -torch.special.xlogy(p, p).sum()
    return (counts > 0).float().mean(), entropy.exp()


def _to_float(outputs: List[List[torch.Tensor]]) -> List[List[torch.Tensor]]:
    """Discriminator outputs (lists of feature maps) in fp32, so that the losses on them are fp32."""
    return [[t.float() for t in fmaps] for fmaps in outputs]


class SNACCodec(AbsGANCodec):
    """Trainable SNAC: the generator is :class:`espnet_snac.model.snac.SNAC`.

    Generator objective (DAC recipe): ``lambda_adv`` LSGAN + ``lambda_feat_match`` L1 feature matching
    + ``lambda_mel`` 7-scale log-mel L1 + ``lambda_stft`` multi-resolution STFT (spectral convergence +
    log magnitude) + ``lambda_wave`` waveform L1 + per-level ``lambda_codebook`` codebook and
    ``lambda_commitment`` commitment losses. Losses with weight 0 are skipped.

    ESPnet's codes are ``(7, B, frames)`` in the Orpheus frame order (see :mod:`espnet_snac.model.frames`).
    """

    def __init__(
        self,
        sampling_rate: int = 24000,
        generator_params: Optional[Dict[str, Any]] = None,
        discriminator_params: Optional[Dict[str, Any]] = None,
        generator_adv_loss_params: Optional[Dict[str, Any]] = None,
        discriminator_adv_loss_params: Optional[Dict[str, Any]] = None,
        feat_match_loss_params: Optional[Dict[str, Any]] = None,
        mel_loss_params: Optional[Dict[str, Any]] = None,
        stft_loss_params: Optional[Dict[str, Any]] = None,
        lambda_adv: float = 1.0,
        lambda_feat_match: float = 2.0,
        lambda_mel: float = 15.0,
        lambda_stft: float = 0.0,
        lambda_wave: float = 0.0,
        lambda_codebook: float = 1.0,
        lambda_commitment: float = 0.25,
        cache_generator_outputs: bool = True,
        health_window: int = 1000,
        dead_code_restart: bool = False,
        dead_code_after: int = 1000,
        dead_code_buffer_size: int = 8192,
        dead_code_noise: float = 0.01,
    ):
        check_codec_conf(SNACCodec, locals())  # unknown keys and wrong types fail here, naming the key
        super().__init__()
        gen = {**SNAC_24KHZ, **(generator_params or {})}
        gen.setdefault("sampling_rate", sampling_rate)
        if int(gen["sampling_rate"]) != int(sampling_rate):
            raise ValueError(
                f"sampling_rate {sampling_rate} differs from generator_params.sampling_rate {gen['sampling_rate']}"
            )
        self.generator = SNAC(**gen)
        disc = _merge(DEFAULT_DISCRIMINATOR, discriminator_params)
        disc["sample_rate"] = sampling_rate
        disc["band_discriminator_params"]["sample_rate"] = sampling_rate
        self.discriminator = MultiScaleMultiPeriodMultiBandDiscriminator(**disc)

        self.generator_adv_loss = GeneratorAdversarialLoss(
            **{"average_by_discriminators": False, "loss_type": "mse", **(generator_adv_loss_params or {})}
        )
        self.discriminator_adv_loss = DiscriminatorAdversarialLoss(
            **{"average_by_discriminators": False, "loss_type": "mse", **(discriminator_adv_loss_params or {})}
        )
        # DAC matches every layer but the final score of each sub-discriminator.
        self.feat_match_loss = FeatureMatchLoss(
            **{"average_by_discriminators": False, "average_by_layers": False, "include_final_outputs": False,
               **(feat_match_loss_params or {})}
        )
        self.mel_loss = MultiScaleMelLoss(sampling_rate=sampling_rate, **(mel_loss_params or {}))
        self.stft_loss = MultiResolutionSTFTLoss(**(stft_loss_params or {}))
        self.lambda_adv = lambda_adv
        self.lambda_feat_match = lambda_feat_match
        self.lambda_mel = lambda_mel
        self.lambda_stft = lambda_stft
        self.lambda_wave = lambda_wave
        self.lambda_codebook = lambda_codebook
        self.lambda_commitment = lambda_commitment
        self.cache_generator_outputs = cache_generator_outputs
        self._cache = None

        self.fs = sampling_rate
        self.level_sizes = level_sizes_of(self.generator.vq_strides)
        self.num_streams = sum(self.level_sizes)
        self.frame_shift = self.generator.hop_length * self.generator.vq_strides[0]

        # Code usage over windows of training steps and validation sets (see codebook_health); a
        # plain object, so the state_dict keeps exactly the generator's and discriminator's keys.
        restart = None
        if dead_code_restart:
            restart = DeadCodeRestart(self.generator.n_codebooks, self.generator.codebook_size,
                                      self.generator.codebook_dim, dead_code_after, dead_code_buffer_size,
                                      dead_code_noise)
        self.codebook_health = CodebookHealth(self.generator.n_codebooks, self.generator.codebook_size,
                                              health_window, restart)

    def meta_info(self) -> Dict[str, Any]:
        return {
            "fs": self.fs,
            "num_streams": self.num_streams,
            "frame_shift": self.frame_shift,
            "code_size_per_stream": [self.generator.codebook_size] * self.num_streams,
        }

    # ------------------------------------------------------------------ training
    def forward(self, audio: torch.Tensor, forward_generator: bool = True, **kwargs) -> Dict[str, Any]:
        """``audio (B, T)`` -> ESPnet's ``{"loss", "stats", "weight", "optim_idx"}``."""
        if forward_generator:
            return self._forward_generator(audio)
        return self._forward_discriminator(audio)

    def _generate(self, audio: torch.Tensor, turn: str) -> SNACOutput:
        """Generator outputs for ``audio (B, T)``, shared by the two turns of one iteration.

        A cached output serves at most one other turn (``turn`` is ``"generator"`` or
        ``"discriminator"``) on the very same batch: same tensor (the cache holds a reference, so
        its storage cannot be recycled for another batch), same shape, same version counter (no
        in-place change since), same train/grad mode. Anything else recomputes. So a skipped
        discriminator turn or two generator turns in a row never reuse a stale output or a graph
        that has already been back-propagated.
        """
        key = (audio.data_ptr(), tuple(audio.shape), audio.stride(), audio._version, audio.device,
               self.training, torch.is_grad_enabled())
        entry, self._cache = self._cache, None  # a cache entry is consumed at most once
        if entry is not None and entry.turn != turn and entry.key == key:
            return entry.output
        out = self.generator.forward_with_losses(audio.unsqueeze(1))
        if self.cache_generator_outputs:
            self._cache = _CacheEntry(audio, key, turn, out)
        return out

    def clear_cache(self) -> None:
        """Drop the cached generator output (the trainer calls this after each iteration)."""
        self._cache = None

    def _forward_generator(self, audio: torch.Tensor) -> Dict[str, Any]:
        batch_size = audio.size(0)
        out = self._generate(audio, "generator")
        audio = audio.unsqueeze(1)
        # Losses and the discriminator's STFTs run in fp32 under bf16/fp16 autocast (see losses.py);
        # the discriminator's convolutions still use the autocast dtype.
        audio_hat = out.audio_hat.float()

        # Stats stay 0-dim device tensors: the trainer moves them to the host once per step.
        stats: Dict[str, torch.Tensor] = {}
        loss = audio.new_zeros((), dtype=torch.float32)
        if self.lambda_adv or self.lambda_feat_match:
            p_hat = _to_float(self.discriminator(audio_hat))
            if self.lambda_adv:
                adv = self.lambda_adv * self.generator_adv_loss(p_hat)
                loss = loss + adv
                stats["adv_loss"] = adv.detach()
            if self.lambda_feat_match:
                with torch.no_grad():
                    p = _to_float(self.discriminator(audio))
                fm = self.lambda_feat_match * self.feat_match_loss(p_hat, p)
                loss = loss + fm
                stats["feat_match_loss"] = fm.detach()
        mel = self.lambda_mel * self.mel_loss(audio_hat, audio)
        loss = loss + mel
        stats["mel_loss"] = mel.detach()
        if self.lambda_stft:
            sc, mag = self.stft_loss(audio_hat, audio)
            loss = loss + self.lambda_stft * (sc + mag)
            stats.update(stft_sc_loss=(self.lambda_stft * sc).detach(),
                         stft_mag_loss=(self.lambda_stft * mag).detach())
        if self.lambda_wave:
            wave = self.lambda_wave * F.l1_loss(audio_hat, audio.float())
            loss = loss + wave
            stats["wave_loss"] = wave.detach()
        codebook = self.lambda_codebook * out.codebook_loss.float().sum()
        commitment = self.lambda_commitment * out.commitment_loss.float().sum()
        loss = loss + codebook + commitment
        stats.update(codebook_loss=codebook.detach(), commitment_loss=commitment.detach())
        with torch.no_grad():
            for level, codes in enumerate(out.codes):
                usage, perplexity = codebook_statistics(codes, self.generator.codebook_size)
                stats[f"codebook_usage_{level}"] = usage
                stats[f"codebook_perplexity_{level}"] = perplexity
        stats["generator_loss"] = loss.detach()
        loss, stats, weight = force_gatherable((loss, stats, batch_size), loss.device)
        self.codebook_health.observe(out.codes, out.latents, self.training)  # window / validation counts
        return {"loss": loss, "stats": stats, "weight": weight, "optim_idx": 0}

    def _forward_discriminator(self, audio: torch.Tensor) -> Dict[str, Any]:
        batch_size = audio.size(0)
        audio_hat = self._generate(audio, "discriminator").audio_hat
        real_loss, fake_loss = self.discriminator_adv_loss(
            _to_float(self.discriminator(audio_hat.detach().float())), _to_float(self.discriminator(audio.unsqueeze(1)))
        )
        loss = real_loss + fake_loss
        stats = dict(discriminator_loss=loss.detach(), real_loss=real_loss.detach(), fake_loss=fake_loss.detach())
        loss, stats, weight = force_gatherable((loss, stats, batch_size), loss.device)
        return {"loss": loss, "stats": stats, "weight": weight, "optim_idx": 1}

    # ------------------------------------------------------------------ trainer hooks
    def _codebooks(self) -> List[torch.nn.Embedding]:
        return [q.codebook for q in self.generator.quantizer.quantizers]

    def training_step_end(self) -> Dict[str, float]:
        """Once per training iteration, after the generator step, on every rank: windowed code usage
        when a window completes, the dead-code restart when one is due (``{}`` on most steps)."""
        return self.codebook_health.step_end(self._codebooks())

    def validation_start(self) -> None:
        """Before a validation pass: start counting codes over the validation set."""
        self.codebook_health.validation_start()

    def validation_end(self) -> Dict[str, float]:
        """After a validation pass, on every rank: ``codes_used_valid_<l>``, ``perplexity_valid_<l>``."""
        return self.codebook_health.validation_end(self._codebooks()[0].weight.device)

    # ------------------------------------------------------------------ inference
    def encode(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """``x (B, 1, T)`` -> codes ``(num_streams, B, frames)``, frames = ceil(T / frame_shift)."""
        return codes_to_frames(self.generator.encode(x)).permute(2, 0, 1)

    def decode(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """Codes ``(num_streams, B, frames)`` -> audio ``(B, 1, frames * frame_shift)``."""
        codes = frames_to_codes(x.permute(1, 2, 0), self.level_sizes)
        return self.generator.decode(codes, **kwargs)

    def inference(self, x: torch.Tensor, **kwargs) -> Dict[str, torch.Tensor]:
        """``x (B, 1, T)`` or ``(T,)`` -> ``{"wav": (B, 1, T) trimmed, "codec": (num_streams, B, frames)}``."""
        if x.dim() == 1:
            x = x.view(1, 1, -1)
        codec = self.encode(x)
        return {"wav": self.decode(codec, length=x.shape[-1]), "codec": codec}
