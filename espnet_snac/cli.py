"""``espnet-snac``: compress audio to SNAC codes, decode them, and convert model formats.

Subcommands::

    espnet-snac encode IN.wav OUT.snac --model M      # audio -> compact code file
    espnet-snac decode IN.snac OUT.wav --model M      # code file -> audio (--stream: frame by frame)
    espnet-snac reconstruct IN.wav OUT.wav --model M  # both, without writing codes
    espnet-snac convert SRC DST                       # official dir <-> ESPnet experiment dir
    espnet-snac export MODEL OUT_DIR --format onnx    # encoder.onnx + decoder.onnx + config.json

Heavy modules (torch, the model) are imported inside the commands so that ``--help`` is instant;
espnet2 is never imported here.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from espnet_snac.io.flags import parse_bool

PROG = "espnet-snac"
ESPNET_WEIGHTS_NAME = "latest.pth"  # a name SNAC.from_pretrained finds in an experiment directory


class CLIError(Exception):
    """An error reported to the user as ``espnet-snac: error: <message>`` with exit status 1."""


def _say(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, flush=True)


# ---------------------------------------------------------------------------------------- model
def _pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise CLIError(f"--device {name!r}: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def load_model(spec: str, device):
    """``SNAC.from_pretrained`` on an experiment dir/.pth, a packed .zip or an official-format dir."""
    from espnet_snac.model.checkpoints import CheckpointError
    from espnet_snac.model.snac import SNAC

    try:
        model = SNAC.from_pretrained(spec, map_location="cpu")
    except CheckpointError as exc:
        raise CLIError(f"--model: {exc}") from exc
    except Exception as exc:  # torch.load/safetensors fail in many ways on damaged or foreign weight files
        raise CLIError(f"--model {spec}: cannot load SNAC weights ({type(exc).__name__}: {exc})") from exc
    return model.to(device).eval()


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------- stats
def _report_rates(model, input_rate: int, input_channels: int, seconds_audio: float,
                  seconds_compute: float, what: str, quiet: bool) -> dict:
    from espnet_snac.model.frames import bits_per_code, code_bitrate  # imports torch: not at CLI start

    bitrate = code_bitrate(model.frame_rates, model.codebook_size)
    pcm = 16 * input_rate * input_channels
    rtf = seconds_compute / seconds_audio if seconds_audio > 0 else float("nan")
    _say(f"bitrate: {bitrate:.1f} bit/s of codes ({bits_per_code(model.codebook_size)} bits x "
         f"{sum(model.frame_rates):.2f} codes/s over {model.n_codebooks} levels)", quiet)
    _say(f"compression ratio: {pcm / bitrate:.1f}x vs 16-bit PCM at the input rate "
         f"({input_channels} ch x {input_rate} Hz = {pcm / 1000:.1f} kbit/s)", quiet)
    _say(f"real-time factor: {rtf:.3f} ({what} took {seconds_compute:.3f} s for {seconds_audio:.2f} s of audio)",
         quiet)
    return {"bitrate": bitrate, "compression_ratio": pcm / bitrate, "rtf": rtf}


# ---------------------------------------------------------------------------------------- audio
def _read_input(path: str, model_rate: int, quiet: bool) -> Tuple["object", int, int, int]:
    """Read, downmix and resample to the model rate. Returns ``(mono (T,), in_rate, in_channels, in_length)``."""
    from espnet_snac.io.audio_io import AudioError, read_audio, resample, to_mono

    try:
        data, rate = read_audio(path)
    except AudioError as exc:
        raise CLIError(str(exc)) from exc
    length, channels = data.shape
    if length == 0:
        raise CLIError(f"{path}: no audio samples")
    notes = []
    mono = to_mono(data)
    if channels > 1:
        notes.append(f"downmixed {channels} channels to mono")
    if rate != model_rate:
        mono = resample(mono, rate, model_rate)
        notes.append(f"resampled {rate} Hz -> {model_rate} Hz (model rate)")
    _say(f"input: {path}: {length / rate:.2f} s, {rate} Hz, {channels} ch"
         + (f"; {', '.join(notes)}" if notes else ""), quiet)
    return mono, rate, channels, length


def _write_output(path: str, audio, model_rate: int, target_length: int, input_rate: int,
                  output_rate: str, quiet: bool) -> None:
    """Trim ``audio (T,)`` at the model rate to the input length and write it (16-bit PCM)."""
    import numpy as np
    import soundfile as sf

    from espnet_snac.io.audio_io import resample

    audio = np.asarray(audio, dtype=np.float32)
    if output_rate == "input" and input_rate != model_rate:
        audio = resample(audio, model_rate, input_rate)
        rate = input_rate
        length = target_length
        note = f"resampled back to the input rate {input_rate} Hz"
    else:
        rate = model_rate
        length = -(-target_length * model_rate // input_rate)
        note = f"at the model rate {model_rate} Hz"
        if input_rate != model_rate:
            note += f" (input was {input_rate} Hz; pass --output_rate input to resample back)"
    audio = audio[:length] if audio.size >= length else np.pad(audio, (0, length - audio.size))
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, np.clip(audio, -1.0, 1.0), rate, subtype="PCM_16")
    except (OSError, RuntimeError) as exc:
        raise CLIError(f"{path}: cannot write audio ({exc})") from exc
    _say(f"output: {path}: {length / rate:.2f} s, {note}, trimmed to the input length ({length} samples)", quiet)


# ---------------------------------------------------------------------------------------- commands
def _encode_audio(model, mono, device):
    import torch

    x = torch.from_numpy(mono).to(device).view(1, 1, -1)
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        codes = model.encode(x)
    _sync(device)
    return codes, time.perf_counter() - start


def _decode_codes(model, codes, length: int, device, seed: Optional[int], noise: bool):
    import torch

    codes = [c.to(device) for c in codes]
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        audio = model.decode(codes, length=length, noise_seed=seed, add_noise=noise)
    _sync(device)
    return audio.view(-1).float().cpu().numpy(), time.perf_counter() - start


def _stream_codes(model, codes, length: int, device, seed: Optional[int], noise: bool, chunk_frames: int,
                  lookahead_frames: Optional[int], quiet: bool):
    """Decode with :class:`StreamingDecoder`, pushing ``chunk_frames`` coarse frames at a time."""
    import torch

    from espnet_snac.model.frames import codes_to_frames
    from espnet_snac.inference.streaming import StreamingDecoder

    frames = codes_to_frames([c.to(device) for c in codes])
    try:
        stream = StreamingDecoder(model, lookahead_frames=lookahead_frames, noise_seed=seed, add_noise=noise)
    except ValueError as exc:
        raise CLIError(f"--lookahead_frames: {exc}") from exc
    pieces, push_seconds = [], []
    _sync(device)
    start = time.perf_counter()
    for first in range(0, frames.shape[1], chunk_frames):
        t0 = time.perf_counter()
        pieces.append(stream.push(frames[:, first: first + chunk_frames]))
        _sync(device)
        push_seconds.append(time.perf_counter() - t0)
    pieces.append(stream.flush())
    _sync(device)
    seconds = time.perf_counter() - start
    frame_ms = 1000 * stream.samples_per_frame / model.sampling_rate
    exact = StreamingDecoder.exact_lookahead_frames(model)
    _say(f"streaming: {len(push_seconds)} pushes of {chunk_frames} frame(s) ({chunk_frames * frame_ms:.1f} ms of "
         f"audio each); lookahead {stream.lookahead_frames} frame(s) = {stream.lookahead_frames * frame_ms:.1f} ms"
         f" ({'exact' if stream.lookahead_frames >= exact else f'exact needs {exact}; approximate'}); "
         f"{1000 * sum(push_seconds) / max(len(push_seconds), 1):.1f} ms per push", quiet)
    audio = torch.cat(pieces, dim=-1)[..., :length]
    return audio.view(-1).float().cpu().numpy(), seconds


def cmd_encode(args) -> dict:
    from espnet_snac.inference import codefile

    device = _pick_device(args.device)
    model = load_model(args.model, device)
    mono, rate, channels, length = _read_input(args.input, model.sampling_rate, args.quiet)
    codes, seconds = _encode_audio(model, mono, device)
    cf = codefile.from_model_codes(codes, model.sampling_rate, model.vq_strides, model.codebook_size,
                                   length, rate, channels)
    try:
        size = codefile.write(args.output, cf)
    except codefile.CodeFileError as exc:
        raise CLIError(str(exc)) from exc
    _say(f"codes: {args.output}: {size} bytes, {model.n_codebooks} levels, {cf.num_frames} coarse frames "
         f"({cf.num_codes} codes)", args.quiet)
    return _report_rates(model, rate, channels, length / rate, seconds, "encoding", args.quiet)


def _check_compatible(cf, model, path: str) -> None:
    mine = (model.sampling_rate, list(model.vq_strides), model.codebook_size)
    theirs = (cf.sample_rate, list(cf.vq_strides), cf.codebook_size)
    if mine != theirs:
        raise CLIError(
            f"{path}: codes were made by a model with rate {theirs[0]} Hz, strides {theirs[1]}, codebook "
            f"{theirs[2]}; --model has rate {mine[0]} Hz, strides {mine[1]}, codebook {mine[2]}. "
            "Decode with the model that encoded the file."
        )


def cmd_decode(args) -> dict:
    import torch

    from espnet_snac.inference import codefile

    try:
        cf = codefile.read(args.input)
    except codefile.CodeFileError as exc:
        raise CLIError(str(exc)) from exc
    device = _pick_device(args.device)
    model = load_model(args.model, device)
    _check_compatible(cf, model, args.input)
    _say(f"codes: {args.input}: {model.n_codebooks} levels, {cf.num_frames} coarse frames; original input "
         f"{cf.duration:.2f} s at {cf.input_rate} Hz, {cf.input_channels} ch", args.quiet)
    codes = [torch.from_numpy(c).view(1, -1) for c in cf.codes]
    if args.stream:
        audio, seconds = _stream_codes(model, codes, cf.output_length, device, args.seed, not args.no_noise,
                                       args.chunk_frames, args.lookahead_frames, args.quiet)
    else:
        audio, seconds = _decode_codes(model, codes, cf.output_length, device, args.seed, not args.no_noise)
    _write_output(args.output, audio, model.sampling_rate, cf.input_length, cf.input_rate, args.output_rate,
                  args.quiet)
    return _report_rates(model, cf.input_rate, cf.input_channels, cf.duration, seconds, "decoding", args.quiet)


def cmd_reconstruct(args) -> dict:
    device = _pick_device(args.device)
    model = load_model(args.model, device)
    mono, rate, channels, length = _read_input(args.input, model.sampling_rate, args.quiet)
    codes, t_enc = _encode_audio(model, mono, device)
    audio, t_dec = _decode_codes(model, codes, mono.shape[0], device, args.seed, not args.no_noise)
    _write_output(args.output, audio, model.sampling_rate, length, rate, args.output_rate, args.quiet)
    return _report_rates(model, rate, channels, length / rate, t_enc + t_dec, "encoding + decoding", args.quiet)


def _refuse_overwrite(directory: Path, names: Sequence[str], force: bool) -> None:
    existing = [n for n in names if (directory / n).exists()]
    if existing and not force:
        raise CLIError(f"{directory}: already holds {', '.join(existing)}; pass --force to overwrite")


def cmd_convert(args) -> dict:
    import yaml

    from espnet_snac.io.atomic_files import atomic_torch_save, atomic_write_text
    from espnet_snac.model.checkpoints import ESPNET_GENERATOR_PREFIX

    src, dst = Path(args.src), Path(args.dst)
    to = args.to
    if to == "auto":
        to = "espnet" if (src / "config.json").is_file() else "official"
    model = load_model(str(src), _pick_device("cpu"))
    dst.mkdir(parents=True, exist_ok=True)
    if to == "official":
        _refuse_overwrite(dst, ("config.json", "pytorch_model.bin"), args.force)
        model.save_pretrained(dst)
        _say(f"wrote official format: {dst}/config.json + pytorch_model.bin", args.quiet)
        return {"format": "official", "path": str(dst)}
    _refuse_overwrite(dst, ("config.yaml", ESPNET_WEIGHTS_NAME), args.force)
    config = {}
    if args.config:
        with open(args.config, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
        if config.get("codec", "snac") != "snac":
            raise CLIError(f"--config {args.config}: describes codec {config.get('codec')!r}, not 'snac'")
    codec_conf = dict(config.get("codec_conf") or {})
    codec_conf["sampling_rate"] = model.sampling_rate
    codec_conf["generator_params"] = dict(model.config)
    config.update(codec="snac", codec_conf=codec_conf)
    config.setdefault("model_conf", {})
    # read by the stock espnet2.bin.gan_codec_inference (AudioCoding); ESPnet's defaults
    config.setdefault("use_preprocessor", True)
    config.setdefault("iterator_type", "sequence")
    state = {ESPNET_GENERATOR_PREFIX + k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_torch_save(state, dst / ESPNET_WEIGHTS_NAME)
    atomic_write_text(dst / "config.yaml", yaml.safe_dump(config, sort_keys=False))  # last: marks it complete
    _say(f"wrote ESPnet experiment: {dst}/config.yaml + {ESPNET_WEIGHTS_NAME} (keys codec.generator.*); "
         f"fine-tune with --init_param {dst / ESPNET_WEIGHTS_NAME}", args.quiet)
    return {"format": "espnet", "path": str(dst)}


def cmd_export(args) -> dict:
    import numpy as np
    import torch

    from espnet_snac.inference.onnx_export import OnnxSNAC, export_onnx

    model = load_model(args.model, _pick_device("cpu"))
    out = Path(args.out_dir)
    _refuse_overwrite(out, ("encoder.onnx", "decoder.onnx", "config.json"), args.force)
    start = time.perf_counter()
    try:
        paths = export_onnx(model, out, noise=args.noise, opset=args.opset)
    except RuntimeError as exc:  # the onnx extra missing, or an exporter failure
        raise CLIError(f"export to {out}: {exc}") from exc
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 2**20:.1f} MiB" for p in paths.values() if p.suffix == ".onnx")
    _say(f"wrote {out}: {sizes}, config.json (opset {args.opset}, noise {'on' if args.noise else 'off'}; "
         f"{time.perf_counter() - start:.0f} s)", args.quiet)
    result = {"path": str(out)}
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        _say("onnxruntime is not installed: exported graphs not checked (pip install onnxruntime)", args.quiet)
        return result
    # check on a length the export did not trace: codes equal to the model's, audio close without noise
    audio = torch.randn(1, 1, int(1.3 * model.sampling_rate), generator=torch.Generator().manual_seed(0)) * 0.1
    session = OnnxSNAC(out)
    with torch.inference_mode():
        ref_codes = model.encode(audio)
        ref_audio = model.decode(ref_codes, add_noise=False).numpy()
    codes = session.encode(audio.numpy())
    same = all(np.array_equal(a, b.numpy()) for a, b in zip(codes, ref_codes))
    result["codes_identical"] = same
    line = f"check on 1.3 s of noise: codes {'identical to' if same else 'DIFFERENT from'} the model's"
    if not args.noise:
        diff = float(np.abs(session.decode(codes) - ref_audio).max())
        result["decoder_max_abs_diff"] = diff
        line += f"; decoder max |diff| {diff:.2e}"
    _say(line, args.quiet)
    return result


# ---------------------------------------------------------------------------------------- parser
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="SNAC neural audio codec: encode, decode, reconstruct and convert models."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def model_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True,
                       help="Hugging Face repo id (e.g. hubertsiuzdak/snac_24khz; local cache first, HF_HUB_OFFLINE "
                            "respected), trained ESPnet experiment (dir with config.yaml + .pth, or the .pth), "
                            "packed model (.zip from espnet2.bin.pack), or official-format dir (config.json + weights)")
        p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
        p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")

    def decoder_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--seed", type=int, default=None,
                       help="seed for the decoder's noise blocks (reproducible output); default: random")
        p.add_argument("--no_noise", action="store_true", help="switch the decoder's noise blocks off")
        p.add_argument("--output_rate", choices=("model", "input"), default="model",
                       help="write at the model rate (default) or resample back to the input rate")

    p = sub.add_parser("encode", help="audio file -> compact .snac code file")
    p.add_argument("input", help="audio file (any rate and channel count libsndfile reads)")
    p.add_argument("output", help="code file to write (.snac)")
    model_options(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help=".snac code file -> audio")
    p.add_argument("input", help="code file written by 'encode'")
    p.add_argument("output", help="audio file to write (16-bit PCM)")
    model_options(p)
    decoder_options(p)
    p.add_argument("--stream", action="store_true",
                   help="decode frame by frame with the streaming decoder (same samples as the full decode)")
    p.add_argument("--chunk_frames", type=_positive_int, default=1,
                   help="with --stream: coarse frames pushed at a time (default: 1)")
    p.add_argument("--lookahead_frames", type=int, default=None,
                   help="with --stream: frames held back before audio is emitted (default: the exact "
                        "lookahead; fewer lower the latency but change the audio)")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("reconstruct", help="audio -> codes -> audio in one go")
    p.add_argument("input")
    p.add_argument("output")
    model_options(p)
    decoder_options(p)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("convert", help="official-format dir <-> ESPnet experiment dir")
    p.add_argument("src", help="official dir, ESPnet experiment dir/.pth or packed .zip")
    p.add_argument("dst", help="output directory")
    p.add_argument("--to", choices=("auto", "espnet", "official"), default="auto",
                   help="target format (auto: official -> espnet, anything else -> official)")
    p.add_argument("--config", default=None,
                   help="ESPnet training config to use as the base of config.yaml (its generator_params "
                        "are replaced by the model's); default: a minimal config")
    p.add_argument("--force", action="store_true", help="overwrite existing model files in DST")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("export", help="model -> ONNX graphs (encoder.onnx, decoder.onnx) for ONNX Runtime")
    p.add_argument("model", help="Hugging Face repo id, official dir, ESPnet experiment dir/.pth or packed .zip")
    p.add_argument("out_dir", help="directory to write encoder.onnx, decoder.onnx and config.json to")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="export format (default: onnx)")
    p.add_argument("--noise", type=parse_bool, default=False, metavar="{false,true}",
                   help="keep the decoder's noise blocks (random output, as the release); default false: "
                        "deterministic decoder")
    p.add_argument("--opset", type=_positive_int, default=18, help="ONNX opset (default: 18)")
    p.add_argument("--force", action="store_true", help="overwrite existing files in OUT_DIR")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except CLIError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. a full disk while convert writes a model; files are replaced atomically
        print(f"{PROG}: error: {exc}; nothing half-written was left: free space and re-run", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
