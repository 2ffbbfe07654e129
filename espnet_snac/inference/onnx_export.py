"""ONNX export of a SNAC model: an encoder and a decoder graph that take any length.

Why not ``torch.onnx.export(model.encoder ...)`` on the model as it is: weight norm must be folded
into plain weights, the official ``preprocess`` computes its padding with Python ``math.ceil`` (the
length is then baked into the graph) and the official Snake reshapes by data-dependent shapes. The
wrappers here fold weight norm into fresh plain convolutions, compute the padding as ``(-T) mod P``
and reshape through ``(B, 1, n, P)`` (so the shape solver sees a multiple of ``P`` without a guard on
the length), use our Snake (no reshape), draw decoder noise with ``randn_like`` (ONNX
``RandomNormalLike``), upsample the code levels with ``expand`` + ``reshape`` rather than
``repeat_interleave`` and run the windowed attention on 4-D tensors. The graphs are made with
torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``) with symbolic batch and length
dimensions. :class:`OnnxSNAC` runs them in ONNX Runtime; :class:`OnnxStreamingDecoder` decodes a
stream of codes with ``decoder.onnx``, equal to the full decode.

Files written to ``OUT_DIR``:

* ``encoder.onnx``: input ``audio`` float32 ``(batch, 1, samples)`` at the model rate, any length;
  outputs ``codes_0 .. codes_{L-1}`` int64 ``(batch, frames_l)``: :meth:`SNAC.encode` (the official
  encode, padding included).
* ``decoder.onnx``: inputs ``codes_0 .. codes_{L-1}``, output ``audio`` float32 ``(batch, 1, samples)``
  (untrimmed, as :meth:`SNAC.decode`); noise blocks off unless exported with ``noise=True``.
* ``config.json``: the model config plus an ``onnx`` section describing the graphs.
"""
from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from espnet_snac.model.layers import LocalMHA, NoiseBlock, _rotate_half

PathLike = Union[str, Path]
DEFAULT_OPSET = 18


def fold_weight_norm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose weight-normed convolutions are plain ones holding g * v / |v|.

    Plain modules are built rather than ``remove_parametrizations`` run on a deep copy: the copy
    shares the parametrized class with the original, and removing the ``weight`` property from it
    would break the original model.
    """
    folded = copy.deepcopy(model)
    _fold_children(folded, dict(model.named_modules()), "")
    return folded


def _fold_children(module: nn.Module, originals: Dict[str, nn.Module], prefix: str) -> None:
    for name, child in list(module.named_children()):
        path = f"{prefix}{name}"
        if parametrize.is_parametrized(child):
            source = originals[path]  # the original computes the weight (its class is intact)
            kind = nn.ConvTranspose1d if isinstance(source, nn.ConvTranspose1d) else nn.Conv1d
            if not isinstance(source, nn.Conv1d | nn.ConvTranspose1d):
                raise NotImplementedError(f"fold_weight_norm: parametrized {type(source).__name__} at {path}")
            kwargs = dict(kernel_size=source.kernel_size, stride=source.stride, padding=source.padding,
                          dilation=source.dilation, groups=source.groups, bias=source.bias is not None)
            if kind is nn.ConvTranspose1d:
                kwargs["output_padding"] = source.output_padding
            plain = kind(source.in_channels, source.out_channels, **kwargs)
            with torch.no_grad():
                plain.weight.copy_(source.weight)
                if source.bias is not None:
                    plain.bias.copy_(source.bias)
            setattr(module, name, plain)
        else:
            _fold_children(child, originals, path + ".")


class _ExportNoise(nn.Module):
    """NoiseBlock with shape-free noise: ``x + randn_like(x[:, :1]) * linear(x)``, or identity."""

    def __init__(self, block: NoiseBlock, enabled: bool):
        super().__init__()
        self.linear = block.linear
        self.enabled = enabled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        return x + torch.randn_like(x[:, :1]) * self.linear(x)


class _ExportLocalMHA(nn.Module):
    """:class:`LocalMHA` with 4-D attention (the ONNX translation of SDPA takes no 5-D tensors)."""

    def __init__(self, block: LocalMHA):
        super().__init__()
        self.norm, self.to_qkv, self.to_out, self.rel_pos = block.norm, block.to_qkv, block.to_out, block.rel_pos
        self.heads, self.window_size = block.heads, block.window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape
        n = self.window_size
        h = self.norm(x.transpose(1, 2))
        # (B, T, 3C) -> 3 x (B * heads, windows, n, dim_head)
        q, k, v = (part.reshape(b, -1, n, self.heads, c // self.heads).permute(0, 3, 1, 2, 4)
                   .reshape(b * self.heads, -1, n, c // self.heads)
                   for part in self.to_qkv(h).chunk(3, dim=-1))
        angles = self.rel_pos(n, x.device)
        cos, sin = angles.cos(), angles.sin()
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        out = out.reshape(b, self.heads, -1, n, c // self.heads).permute(0, 2, 3, 1, 4).reshape(b, t, c)
        return self.to_out(out).transpose(1, 2) + x


def _replace_blocks(module: nn.Module, noise: bool) -> None:
    """Swap NoiseBlocks and LocalMHAs for their export forms (same weights)."""
    for name, child in module.named_children():
        if isinstance(child, NoiseBlock):
            setattr(module, name, _ExportNoise(child, noise))
        elif isinstance(child, LocalMHA):
            setattr(module, name, _ExportLocalMHA(child))
        else:
            _replace_blocks(child, noise)


class EncoderGraph(nn.Module):
    """``audio (B, 1, T)`` -> codes per level, padding computed symbolically."""

    def __init__(self, model):
        super().__init__()
        self.encoder = model.encoder
        self.quantizers = model.quantizer.quantizers
        self.pad_multiple = int(model.pad_multiple)

    def forward(self, audio: torch.Tensor) -> List[torch.Tensor]:
        b = audio.shape[0]
        x = nn.functional.pad(audio, (0, (-audio.shape[-1]) % self.pad_multiple))
        # Through (B, 1, n, P) and back: the length becomes n * P, a multiple of P the shape solver
        # can see, so every stride and pooling divides it without a guard on the input length.
        x = x.reshape(b, 1, -1, self.pad_multiple).reshape(b, 1, -1)
        residual = self.encoder(x)
        codes = []
        for q in self.quantizers:
            z = nn.functional.avg_pool1d(residual, q.stride, q.stride) if q.stride > 1 else residual
            c = q.nearest_codes(q.in_proj(z))
            codes.append(c)
            residual = residual - _upsample(q.out_proj(q.lookup(c)), q.stride)
        return codes


def _upsample(z: torch.Tensor, stride: int) -> torch.Tensor:
    """``repeat_interleave`` along time as expand + reshape (exports with a symbolic length)."""
    if stride == 1:
        return z
    b, d, t = z.shape
    return z.unsqueeze(-1).expand(b, d, t, stride).reshape(b, d, t * stride)


class DecoderGraph(nn.Module):
    """Codes per level -> audio ``(B, 1, T_0 * stride_0 * hop)``."""

    def __init__(self, model):
        super().__init__()
        self.decoder = model.decoder
        self.quantizers = model.quantizer.quantizers

    def forward(self, *codes: torch.Tensor) -> torch.Tensor:
        z_q = None
        for q, c in zip(self.quantizers, codes):
            part = _upsample(q.out_proj(q.lookup(c)), q.stride)
            z_q = part if z_q is None else z_q + part
        return self.decoder(z_q)


def export_graphs(model, noise: bool = False) -> tuple:
    """``(EncoderGraph, DecoderGraph)`` of a folded copy of ``model`` in eval mode."""
    folded = fold_weight_norm(model).eval()
    _replace_blocks(folded, noise)
    return EncoderGraph(folded).eval(), DecoderGraph(folded).eval()


def _export(module: nn.Module, args: tuple, path: Path, input_names: List[str], output_names: List[str],
            dynamic_shapes, opset: int) -> None:
    import contextlib
    import io
    import logging
    import warnings

    quiet = logging.getLogger("torch.onnx")  # "torchvision is not installed" and similar notices
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    # the exporter's decompositions set TORCHINDUCTOR_CACHE_DIR for the whole process; put it back
    saved_cache_dir = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, args, dynamo=True, input_names=input_names,
                                        output_names=output_names, dynamic_shapes=dynamic_shapes,
                                        opset_version=opset, optimize=True, verbose=False, external_data=False)
    finally:
        quiet.setLevel(level)
        if saved_cache_dir is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = saved_cache_dir
    if program is None:
        raise RuntimeError(f"{path}: torch.onnx.export returned no program")
    # written to a temp name and renamed: a half-written .onnx never carries the final name
    from espnet_snac.io.atomic_files import atomic_write_bytes

    atomic_write_bytes(path, program.model_proto.SerializeToString())


def export_onnx(model, out_dir: PathLike, noise: bool = False, opset: int = DEFAULT_OPSET,
                example_seconds: float = 1.0) -> Dict[str, Path]:
    """Write ``encoder.onnx``, ``decoder.onnx`` and ``config.json`` for ``model`` to ``out_dir``.

    ``example_seconds`` is the length of the example input traced (the graphs accept any length).
    ``espnet-snac export`` checks the written graphs against the model on another length.
    """
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise RuntimeError("ONNX export needs the 'onnx' extra: pip install 'espnet-snac[onnx]' "
                           f"(onnx, onnxscript, onnxruntime); {exc}") from exc
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder, decoder = export_graphs(model, noise)
    levels = len(model.vq_strides)
    code_names = [f"codes_{i}" for i in range(levels)]
    # several multiples of pad_multiple, and not one: the example must not make the tracer specialise
    samples = max(3, math.ceil(example_seconds * model.sampling_rate / model.pad_multiple)) * model.pad_multiple - 1
    audio = torch.zeros(2, 1, samples)
    audio.normal_(generator=torch.Generator().manual_seed(0)).mul_(0.1)
    # Dim.DYNAMIC (not named Dims): torch.export infers the relations itself (the code levels'
    # lengths are tied by the strides) instead of failing on constraints stated differently.
    dynamic = torch.export.Dim.DYNAMIC
    paths = {"encoder": out_dir / "encoder.onnx", "decoder": out_dir / "decoder.onnx",
             "config": out_dir / "config.json"}
    _export(encoder, (audio,), paths["encoder"], ["audio"], code_names, {"audio": {0: dynamic, 2: dynamic}}, opset)
    with torch.no_grad():
        codes = encoder(audio)
    first = model.vq_strides[0]
    code_shapes = tuple({0: dynamic, 1: dynamic} for _ in model.vq_strides)
    _export(decoder, tuple(codes), paths["decoder"], code_names, ["audio"], (code_shapes,), opset)
    from espnet_snac.inference.streaming import receptive_field

    field = receptive_field(model)
    config = dict(model.config)
    config["onnx"] = {
        "opset": opset, "noise": bool(noise), "pad_multiple": int(model.pad_multiple),
        # for OnnxStreamingDecoder: latent frames of left context, coarse frames of lookahead, and the
        # attention alignment (latent frames) of a window decode that reproduces the full decode
        "streaming": {"left": field.left, "lookahead_frames": field.lookahead_frames, "align": field.align,
                      "hop_length": int(model.hop_length)},
        "encoder": {"inputs": {"audio": ["batch", 1, "samples"]},
                    "outputs": {n: ["batch", f"frames*{first // s}" if s != first else "frames"]
                                for n, s in zip(code_names, model.vq_strides)}},
        "decoder": {"inputs": {n: ["batch", f"frames*{first // s}" if s != first else "frames"]
                               for n, s in zip(code_names, model.vq_strides)},
                    "outputs": {"audio": ["batch", 1, f"frames*{first * model.hop_length}"]}},
    }
    from espnet_snac.io.atomic_files import atomic_write_text

    atomic_write_text(paths["config"], json.dumps(config, indent=2) + "\n")
    return paths


class OnnxSNAC:
    """ONNX Runtime sessions for an exported directory, with numpy in and out.

    ``threads`` sets intra-op threads (``None``: ONNX Runtime's default, all cores).
    """

    def __init__(self, directory: PathLike, threads: Optional[int] = None,
                 providers: Sequence[str] = ("CPUExecutionProvider",)):
        import onnxruntime as ort

        directory = Path(directory)
        self.config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self.encoder = ort.InferenceSession(str(directory / "encoder.onnx"), options, providers=list(providers))
        self.decoder = ort.InferenceSession(str(directory / "decoder.onnx"), options, providers=list(providers))
        self.code_names = [o.name for o in self.encoder.get_outputs()]

    def encode(self, audio) -> List[np.ndarray]:
        """``audio (B, 1, T)`` float32 -> list of int64 ``(B, frames_l)``."""
        return self.encoder.run(None, {"audio": np.ascontiguousarray(audio, dtype=np.float32)})

    def decode(self, codes) -> np.ndarray:
        """Codes per level -> audio ``(B, 1, T')`` float32."""
        feed = {n: np.ascontiguousarray(c, dtype=np.int64) for n, c in zip(self.code_names, codes)}
        return self.decoder.run(None, feed)[0]


class OnnxStreamingDecoder:
    """Streaming decode with ``decoder.onnx``: audio for code frames as they arrive, equal to the
    full decode (noise off) up to float rounding.

    Each :meth:`push` decodes a window of the codes: the left context and the lookahead that the
    decoder's receptive field needs (:func:`espnet_snac.inference.streaming.receptive_field`, stored in
    ``config.json`` at export), started at a coarse frame on the attention grid, and returns the
    audio of the frames that are final. Work per push is bounded (24 kHz: 3 coarse frames of left
    context and 3 of lookahead, i.e. 256 ms of latency). Codes are pushed per level, coarse-frame
    aligned: ``[(B, n * s_0 / s_l)]``. A model exported with ``--noise true`` draws fresh noise in
    every window, so its stream does not repeat the full decode.
    """

    def __init__(self, directory: PathLike, threads: Optional[int] = None, session: Optional[OnnxSNAC] = None):
        self.session = session or OnnxSNAC(directory, threads=threads)
        config = self.session.config
        stream = config["onnx"]["streaming"]
        self.strides = [int(s) for s in config["vq_strides"]]
        self.stride = self.strides[0]  # latent frames per coarse frame
        self.left, self.align = int(stream["left"]), int(stream["align"])
        self.lookahead_frames = int(stream["lookahead_frames"])
        self.samples_per_frame = int(stream["hop_length"]) * self.stride
        self.period = math.lcm(self.align, self.stride)  # window starts: latent multiples of this
        self.reset()

    def reset(self) -> None:
        self._buffer: Optional[List] = None  # per level, from coarse frame self._start
        self._start = self._received = self._emitted = 0

    def _per_frame(self, level: int) -> int:
        return self.stride // self.strides[level]

    def push(self, codes: Sequence) -> np.ndarray:
        """Add codes per level; returns the audio that is final so far, float32 ``(B, 1, samples)``."""
        codes = [np.asarray(c, dtype=np.int64) for c in codes]
        if len(codes) != len(self.strides) or any(c.ndim != 2 for c in codes):
            raise ValueError(f"push takes {len(self.strides)} levels of codes shaped (B, frames)")
        frames = codes[0].shape[1]
        if any(c.shape[1] != frames * self._per_frame(i) for i, c in enumerate(codes)):
            raise ValueError(f"levels must hold whole coarse frames: lengths n * {[self._per_frame(i) for i in range(len(codes))]}, "
                             f"got {[c.shape[1] for c in codes]}")
        if self._buffer is None:
            self._buffer = codes
        else:
            if codes[0].shape[0] != self._buffer[0].shape[0]:
                raise ValueError("batch size changed within a stream; call flush() or reset() first")
            self._buffer = [np.concatenate([b, c], axis=1) for b, c in zip(self._buffer, codes)]
        self._received += frames
        return self._emit(max(self._emitted, self._received - self.lookahead_frames))

    def flush(self) -> np.ndarray:
        """End of stream: the remaining audio; the decoder is then reset."""
        audio = self._emit(self._received)
        self.reset()
        return audio

    def _window_first(self, emitted: int) -> int:
        """First coarse frame of a window that reproduces the frames from ``emitted`` on."""
        start = max(0, emitted * self.stride - self.left)
        return start // self.period * self.period // self.stride

    def _emit(self, until: int) -> np.ndarray:
        batch = 0 if self._buffer is None else self._buffer[0].shape[0]
        if until <= self._emitted:
            return np.zeros((batch, 1, 0), dtype=np.float32)
        first = self._window_first(self._emitted)
        window = [b[:, (first - self._start) * self._per_frame(i):] for i, b in enumerate(self._buffer)]
        # attention works on whole windows: fill with code 0; what follows the last received frame
        # only reaches samples past `until`, which are held back
        extra = -(window[0].shape[1] * self.stride) % self.period // self.stride
        if extra:
            window = [np.pad(w, ((0, 0), (0, extra * self._per_frame(i)))) for i, w in enumerate(window)]
        audio = self.session.decode(window)
        begin = (self._emitted - first) * self.samples_per_frame
        audio = audio[..., begin: begin + (until - self._emitted) * self.samples_per_frame]
        self._emitted = until
        keep = self._window_first(self._emitted)
        self._buffer = [b[:, (keep - self._start) * self._per_frame(i):] for i, b in enumerate(self._buffer)]
        self._start = keep
        return np.ascontiguousarray(audio)
