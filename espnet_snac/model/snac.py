"""The SNAC generator: encoder, multi-scale RVQ and decoder, checkpoint-compatible with the release."""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from espnet_snac.model.configs import SNAC_24KHZ, SNAC_32KHZ, SNAC_44KHZ  # noqa: F401  (re-exported)
from espnet_snac.model.fast import BufferPool, FastPath, FoldedWeights, has_hooks
from espnet_snac.model.layers import Decoder, Encoder, NoiseBlock
from espnet_snac.model.quantizer import ResidualVectorQuantize

PathLike = Union[str, Path]


class SNACOutput(NamedTuple):
    audio_hat: torch.Tensor  # (B, 1, T) trimmed to the input length
    codes: List[torch.Tensor]  # per level (B, T_i)
    commitment_loss: torch.Tensor  # (n_levels,)
    codebook_loss: torch.Tensor  # (n_levels,)
    latents: Sequence[torch.Tensor] = ()  # per level (B, codebook_dim, T_i) projected latents z_e, detached


class SNAC(nn.Module):
    """Multi-Scale Neural Audio Codec.

    Keyword arguments are the keys of the official ``config.json``. The defaults are the 44 kHz
    release; the 24 kHz speech model is ``SNAC(**SNAC_24KHZ)``.
    """

    def __init__(
        self,
        sampling_rate: int = 44100,
        encoder_dim: int = 64,
        encoder_rates: Sequence[int] = (3, 3, 7, 7),
        latent_dim: Optional[int] = None,
        decoder_dim: int = 1536,
        decoder_rates: Sequence[int] = (7, 7, 3, 3),
        attn_window_size: Optional[int] = 32,
        codebook_size: int = 4096,
        codebook_dim: int = 8,
        vq_strides: Sequence[int] = (8, 4, 2, 1),
        noise: bool = True,
        depthwise: bool = True,
    ):
        super().__init__()
        if latent_dim is None:
            latent_dim = encoder_dim * 2 ** len(encoder_rates)
        self.config: Dict = dict(
            sampling_rate=int(sampling_rate), encoder_dim=int(encoder_dim), encoder_rates=list(encoder_rates),
            latent_dim=int(latent_dim), decoder_dim=int(decoder_dim), decoder_rates=list(decoder_rates),
            attn_window_size=attn_window_size, codebook_size=int(codebook_size),
            codebook_dim=int(codebook_dim), vq_strides=list(vq_strides), noise=bool(noise),
            depthwise=bool(depthwise),
        )
        self.sampling_rate = int(sampling_rate)
        self.hop_length = math.prod(encoder_rates)
        self.vq_strides = list(vq_strides)
        self.n_codebooks = len(vq_strides)
        self.codebook_size = int(codebook_size)
        self.codebook_dim = int(codebook_dim)
        self.attn_window_size = attn_window_size
        self.latent_dim = int(latent_dim)
        # Every level and every attention window must see whole frames.
        self.pad_multiple = self.hop_length * math.lcm(self.vq_strides[0], attn_window_size or 1)
        self.encoder = Encoder(encoder_dim, encoder_rates, depthwise=depthwise, attn_window_size=attn_window_size)
        self.quantizer = ResidualVectorQuantize(latent_dim, codebook_size, codebook_dim, vq_strides)
        self.decoder = Decoder(latent_dim, decoder_dim, decoder_rates, noise, depthwise=depthwise,
                               attn_window_size=attn_window_size)
        #: Use :mod:`espnet_snac.model.fast` in eval mode without autograd (set False to force the plain path).
        self.fast_inference = True
        self._folded = FoldedWeights()  # not a buffer: never in the state dict
        self._activation_pool = BufferPool()  # activation memory of the fast path, kept between calls

    def train(self, mode: bool = True) -> "SNAC":
        self._folded.clear()  # frees the folded weights; they are rebuilt on the next fast call
        self._activation_pool.clear()
        return super().train(mode)

    def release_buffers(self) -> None:
        """Free the activation memory the fast path keeps between calls (see
        :class:`espnet_snac.model.fast.BufferPool`); the next call allocates it again."""
        self._activation_pool.clear()

    def uses_fast_path(self) -> bool:
        """True when ``encode`` / ``decode`` take the fast path: eval mode and autograd disabled."""
        return self.fast_inference and not self.training and not torch.is_grad_enabled()

    # ------------------------------------------------------------------ shapes
    def preprocess(self, audio: torch.Tensor) -> torch.Tensor:
        """Right-pad ``(B, 1, T)`` with zeros to a multiple of :attr:`pad_multiple`."""
        right_pad = -audio.shape[-1] % self.pad_multiple
        return nn.functional.pad(audio, (0, right_pad))

    def num_frames(self, num_samples: int) -> List[int]:
        """Code lengths per level for an input of ``num_samples`` samples."""
        latent = math.ceil(num_samples / self.pad_multiple) * self.pad_multiple // self.hop_length
        return [latent // s for s in self.vq_strides]

    @property
    def frame_rates(self) -> List[float]:
        """Codes per second for each level (11.72 / 23.44 / 46.88 Hz for 24 kHz)."""
        return [self.sampling_rate / (self.hop_length * s) for s in self.vq_strides]

    # ------------------------------------------------------------------ inference
    def forward(self, audio: torch.Tensor):
        """``audio (B, 1, T)`` -> ``(audio_hat (B, 1, T), codes)``, as the official model."""
        out = self.forward_with_losses(audio)
        return out.audio_hat, out.codes

    def forward_with_losses(self, audio: torch.Tensor) -> SNACOutput:
        """Training forward: reconstruction, codes and the per-level VQ losses."""
        length = audio.shape[-1]
        z = self.encoder(self.preprocess(audio))
        q = self.quantizer(z)
        audio_hat = self.decoder(q.z_q)[..., :length]
        return SNACOutput(audio_hat, q.codes, q.commitment_loss, q.codebook_loss, q.latents)

    def encode(self, audio: torch.Tensor) -> List[torch.Tensor]:
        """``audio (B, 1, T)`` -> codes ``[(B, T_0), (B, T_1), ...]`` (coarse to fine)."""
        if audio.dim() != 3 or audio.shape[1] != 1:
            raise ValueError(f"encode expects audio of shape (B, 1, T), got {tuple(audio.shape)}")
        x = self.preprocess(audio)
        # Hooks on encoder modules (e.g. masks of tokens.batching) need the module calls.
        if self.uses_fast_path() and not has_hooks(self.encoder):
            z = FastPath(self._folded, pool=self._activation_pool).run(self.encoder, x)
        else:
            z = self.encoder(x)
        return self.quantizer(z).codes

    def encode_masked(self, audio: torch.Tensor, lengths: Union[torch.Tensor, Sequence[int]]) -> List[torch.Tensor]:
        """``encode`` of a batch whose row ``b`` is valid for ``lengths[b]`` samples.

        ``audio (B, 1, T)`` with ``T`` and every length multiples of :attr:`pad_multiple`; the input
        of every encoder convolution is zeroed past each row's length, so each row gets the codes of
        encoding it alone (see :mod:`espnet_snac.tokens.batching`). Fast path only.
        """
        total = audio.shape[-1]
        lengths = [int(n) for n in (lengths.tolist() if torch.is_tensor(lengths) else lengths)]
        if total % self.pad_multiple or any(n % self.pad_multiple for n in lengths):
            raise ValueError(f"encode_masked needs lengths and T that are multiples of {self.pad_multiple}")
        if not self.uses_fast_path():
            raise RuntimeError("encode_masked runs in eval mode without autograd (torch.inference_mode())")
        z = FastPath(self._folded, lengths, total, pool=self._activation_pool).run(self.encoder, audio.clone())
        return self.quantizer(z).codes

    def decode(self, codes: Sequence[torch.Tensor], length: Optional[int] = None,
               noise_seed: Optional[int] = None, add_noise: bool = True) -> torch.Tensor:
        """Codes -> audio ``(B, 1, T')``.

        ``length`` trims the output to the original number of samples (``None``: untrimmed, as the
        official package). ``noise_seed`` makes the NoiseBlocks reproducible, drawing the noise by
        absolute position (so :class:`espnet_snac.inference.streaming.StreamingDecoder` matches it);
        ``add_noise=False`` switches them off. With the defaults, noise comes from the global RNG
        like the release.
        """
        z_q = self.quantizer.from_codes(codes)
        with self.noise(seed=noise_seed, enabled=add_noise, device=z_q.device):
            if self.uses_fast_path() and not has_hooks(self.decoder):
                audio = FastPath(self._folded, exact=False, pool=self._activation_pool).run(self.decoder, z_q)
            else:
                audio = self.decoder(z_q)
        return audio if length is None else audio[..., :length]

    @contextlib.contextmanager
    def noise(self, seed: Optional[int] = None, enabled: bool = True,
              device: Union[str, torch.device, None] = None, start_frame: int = 0) -> Iterator[None]:
        """Temporarily seed or disable decoder noise.

        With a ``seed`` every NoiseBlock draws its noise by absolute position (see
        :class:`espnet_snac.model.layers.NoiseBlock`); ``start_frame`` is the latent frame at which the
        decoded latent starts, so that a window of a longer latent gets that latent's noise.
        ``device`` is accepted for compatibility; the noise is made on the device of the signal.
        """
        blocks = self.noise_blocks()
        saved = [(b.seed, b.index, b.offset, b.enabled) for b, _ in blocks]
        for index, (block, upsampling) in enumerate(blocks):
            block.seed = None if seed is None else int(seed)
            block.index, block.offset, block.enabled = index, start_frame * upsampling, enabled
        try:
            yield
        finally:
            for (b, _), (s, i, o, e) in zip(blocks, saved):
                b.seed, b.index, b.offset, b.enabled = s, i, o, e

    def noise_blocks(self) -> List[Tuple[NoiseBlock, int]]:
        """Decoder NoiseBlocks in order, each with its samples per latent frame (upsampling so far)."""
        blocks, upsampling = [], 1
        for module in self.decoder.modules():  # pre-order = forward order for these sequential stacks
            if isinstance(module, nn.ConvTranspose1d):
                upsampling *= module.stride[0]
            elif isinstance(module, NoiseBlock):
                blocks.append((module, upsampling))
        return blocks

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_config(cls, config: Union[PathLike, Dict]) -> "SNAC":
        if not isinstance(config, dict):
            with open(config, encoding="utf-8") as f:
                config = json.load(f)
        return cls(**config)

    @classmethod
    def from_pretrained(cls, path: PathLike, map_location: Union[str, torch.device] = "cpu", *,
                        revision: Optional[str] = None, cache_dir: Optional[PathLike] = None) -> "SNAC":
        """Load weights from a Hugging Face repo id, an official-format directory, an ESPnet
        experiment or a packed zip.

        * Hub: ``owner/name`` that is not a local path, e.g. ``"hubertsiuzdak/snac_24khz"``; the local
          Hugging Face cache first, then a download (``revision``, ``cache_dir``, ``HF_HUB_OFFLINE``
          and ``HF_HUB_CACHE`` as for ``huggingface_hub.hf_hub_download``)
        * official: ``config.json`` + ``pytorch_model.bin`` or ``model.safetensors``
        * ESPnet: a directory with ``config.yaml`` and a ``.pth`` (best, then latest), or the ``.pth``
          path itself (its ``config.yaml`` is looked up next to it or one level up)
        * packed: the ``.zip`` written by ``espnet2.bin.pack``
        Weights are read without executing pickled code; any missing or unexpected key is an error.
        """
        from espnet_snac.model import checkpoints

        location = checkpoints.locate(path, revision=revision, cache_dir=cache_dir)
        config, state = checkpoints.read(location, map_location)
        model = cls(**config)
        checkpoints.load_state_strict(model, state, source=str(path))
        return model.eval()

    def save_pretrained(self, directory: PathLike, repo_id: Optional[str] = None,
                        safetensors: bool = False) -> Path:
        """Write the official format: ``config.json`` + ``pytorch_model.bin`` (+ ``model.safetensors``
        with ``safetensors=True``) and a model card ``README.md``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        from espnet_snac.io.atomic_files import atomic_torch_save, atomic_write_text
        from espnet_snac.model.hub import model_card

        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_torch_save(state, directory / "pytorch_model.bin")
        if safetensors:
            from safetensors.torch import save as save_safetensors

            from espnet_snac.io.atomic_files import atomic_write_bytes

            atomic_write_bytes(directory / "model.safetensors", save_safetensors(state))
        atomic_write_text(directory / "README.md", model_card(self.config, repo_id))
        # config.json last: a directory holding it is a complete model
        atomic_write_text(directory / "config.json", json.dumps(self.config, indent=2) + "\n")
        return directory

    def push_to_hub(self, repo_id: str, private: Optional[bool] = None, token: Optional[str] = None,
                    commit_message: str = "Upload SNAC model", revision: Optional[str] = None) -> str:
        """Upload the official format with a model card to the Hugging Face Hub (``hf auth login``
        first); the repo is created if needed. Returns the commit URL."""
        from espnet_snac.model.hub import push_to_hub

        return push_to_hub(self, repo_id, private=private, token=token, commit_message=commit_message,
                           revision=revision)
