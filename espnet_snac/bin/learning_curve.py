"""Measure a learning curve: train a config with the real GAN step for M minutes, score held-out audio.

    python -m espnet_snac.bin.learning_curve --config conf/tuning/train_snac24k_demo.yaml \
        --train_dir data/train --eval_scp data/test/wav.scp --minutes 5 --output_dir exp/curve_demo

Writes OUTPUT_DIR/curve.csv (one row per evaluation, iteration 0 first) and OUTPUT_DIR/curve.png;
the last printed line is ``iterations=N pesq=X stoi=Y mel=Z codes_used=A/B/C nonfinite_steps=K``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, required=True, help="training config (as for gan_codec_train)")
    p.add_argument("--train_dir", type=Path, required=True,
                   help="Kaldi data dir with wav.scp (and optional segments); resampled to the codec rate")
    p.add_argument("--eval_scp", type=Path, required=True, help="wav.scp of the held-out utterances")
    p.add_argument("--minutes", type=float, required=True, help="training time (evaluations not counted)")
    p.add_argument("--output_dir", type=Path, required=True, help="where curve.csv and curve.png go")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--eval_every_minutes", type=float, default=None,
                      help="evaluate every this many training minutes (default: --num_evals points)")
    when.add_argument("--num_evals", type=int, default=8,
                      help="evaluations after iteration 0, evenly spaced, the last at the end")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the config's seed)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--max_eval_utts", type=int, default=None, help="score only the first N held-out utterances")
    p.add_argument("--log_level", default="INFO", choices=("ERROR", "WARNING", "INFO", "DEBUG"))
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s: %(message)s")
    import torch

    from espnet_snac.train.curve import run_curve
    from espnet_snac.train.curve_data import CurveDataError
    from espnet_snac.train.nonfinite import NonFiniteTrainingError

    if args.threads is not None:
        if args.threads < 1:
            print(f"learning_curve: --threads must be >= 1, got {args.threads}", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"learning_curve: --device {args.device} but CUDA is not available", file=sys.stderr)
        return 2
    try:
        _, line = run_curve(args.config, args.train_dir, args.eval_scp, args.minutes, args.output_dir,
                            eval_every=args.eval_every_minutes, num_evals=args.num_evals, seed=args.seed,
                            device=args.device, max_eval_utts=args.max_eval_utts)
    except (CurveDataError, FileNotFoundError, ValueError) as e:
        print(f"learning_curve: {e}", file=sys.stderr)
        return 1
    except NonFiniteTrainingError as e:
        print(f"learning_curve: {e} The evaluations so far are in {args.output_dir / 'curve.csv'}.", file=sys.stderr)
        return 1
    print(f"wrote {args.output_dir / 'curve.csv'} and {args.output_dir / 'curve.png'}", flush=True)
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
