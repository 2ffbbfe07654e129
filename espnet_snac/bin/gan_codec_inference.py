"""ESPnet GAN-codec inference with the ``snac`` codec registered.

Same options as ``python -m espnet2.bin.gan_codec_inference``. Differences from the stock tool, so
that its output can be scored and reused directly:

* ``wav/<utt>.wav`` is trimmed to the input length (the stock tool writes the padded decode),
* ``wav/wav.scp`` lists the written files, ``codec/codec.scp`` the codes (``(num_streams, 1, frames)``
  npy, as the stock tool),
* with ``--encode_only true`` only codes are written.
"""
import logging
import sys
import time
from pathlib import Path

from espnet_snac.registry import register

register()

import soundfile as sf  # noqa: E402
import torch  # noqa: E402
from espnet2.bin.gan_codec_inference import AudioCoding, get_parser  # noqa: E402
from espnet2.fileio.npy_scp import NpyScpWriter  # noqa: E402
from espnet2.tasks.gan_codec import GANCodecTask  # noqa: E402
from espnet2.torch_utils.set_all_random_seed import set_all_random_seed  # noqa: E402
from espnet.utils.cli_utils import get_commandline_args  # noqa: E402


def inference(args) -> None:
    if args.batch_size > 1:
        raise SystemExit("--batch_size must be 1 here; for batched encoding use espnet_snac.bin.extract_tokens")
    if args.ngpu > 1:
        raise SystemExit("--ngpu must be 0 or 1; split the data and run several jobs for more GPUs")
    logging.basicConfig(level=args.log_level, format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    device = "cuda" if args.ngpu >= 1 else "cpu"
    set_all_random_seed(args.seed)
    coder = AudioCoding.from_pretrained(
        model_tag=args.model_tag, train_config=args.train_config, model_file=args.model_file,
        target_bandwidth=args.target_bandwidth, dtype=args.dtype, device=device, seed=args.seed,
        always_fix_seed=args.always_fix_seed,
    )
    loader = GANCodecTask.build_streaming_iterator(
        args.data_path_and_name_and_type, dtype=args.dtype, batch_size=1, key_file=args.key_file,
        num_workers=args.num_workers, preprocess_fn=GANCodecTask.build_preprocess_fn(coder.train_args, False),
        collate_fn=GANCodecTask.build_collate_fn(coder.train_args, False),
        allow_variable_data_keys=args.allow_variable_data_keys, inference=True,
    )
    out = Path(args.output_dir)
    (out / "codec").mkdir(parents=True, exist_ok=True)
    if not args.encode_only:
        (out / "wav").mkdir(parents=True, exist_ok=True)
    count, audio_seconds, start = 0, 0.0, time.perf_counter()
    with NpyScpWriter(out / "codec", out / "codec" / "codec.scp") as codec_writer, \
            open(out / "wav" / "wav.scp" if not args.encode_only else "/dev/null", "w") as wav_scp:
        for keys, batch in loader:
            key = keys[0]
            audio = batch["audio"][0]
            result = coder(audio=audio, encode_only=args.encode_only)
            codec_writer[key] = result["codes"].cpu().numpy()
            if not args.encode_only:
                wav = result["resyn_audio"].view(-1)[: audio.shape[-1]].float().cpu().numpy()
                path = out / "wav" / f"{key}.wav"
                sf.write(path, wav, coder.fs, "PCM_16")
                wav_scp.write(f"{key} {path.resolve()}\n")
            count += 1
            audio_seconds += audio.shape[-1] / coder.fs
    elapsed = time.perf_counter() - start
    logging.info(f"coded {count} utterances, {audio_seconds:.1f} s of audio in {elapsed:.1f} s "
                 f"(RTF {elapsed / max(audio_seconds, 1e-9):.3f})")


def main(cmd=None):
    print(get_commandline_args(), file=sys.stderr)
    args = get_parser().parse_args(cmd)
    with torch.no_grad():
        inference(args)


if __name__ == "__main__":
    main()
