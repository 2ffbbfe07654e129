"""Plan a training run: ESPnet's ``num_iters_per_epoch``, ``max_epoch`` and batch for a step count.

Usage::

    python -m espnet_snac.bin.plan_training --speech_shape exp/codec_stats_24000/train/audio_shape \\
        --config conf/train_snac24k.yaml --ngpu 4 [--num_nodes 1] [--num_iters 800000] [--batch_size 16]

Prints the plan; the last line is one JSON object (``total_iterations``, ``num_iters_per_epoch``,
``max_epoch``, ``batch_size_per_gpu``, ``final_lr``, ...). ``--num_iters`` defaults to the paper's
800000; ``--num_iters config`` keeps the config's own total: what its ``num_iters_per_epoch`` and
``max_epoch`` give on one device, for any GPU count. Exits with status 1 and the reason when the run
cannot be planned.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from espnet_snac.train.plan import PlanError, describe, plan_from_files


PAPER_ITERATIONS = 800_000


def _num_iters(value: str) -> Optional[int]:
    if value == "config":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a step count or 'config', got {value!r}") from None


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--speech_shape", required=True, help="shape file of the training set (utt_id num_samples)")
    p.add_argument("--config", required=True, help="training config (yaml)")
    p.add_argument("--ngpu", type=int, required=True, help="GPUs per node (0 = CPU)")
    p.add_argument("--num_nodes", type=int, default=1, help="nodes")
    p.add_argument("--num_iters", type=_num_iters, default=PAPER_ITERATIONS,
                   help="optimizer steps of the whole run (default: %(default)s, the paper's), or 'config': "
                        "what the config's num_iters_per_epoch and max_epoch give on one device")
    p.add_argument("--batch_size", type=int, default=None, help="global batch in chunks (default: the config's)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        plan = plan_from_files(args.speech_shape, args.config, args.ngpu, args.num_nodes, args.num_iters,
                               args.batch_size)
    except PlanError as e:
        print(f"plan_training: error: {e}", file=sys.stderr)
        return 1
    for line in describe(plan):
        print(line)
    print(json.dumps(plan.to_dict(), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
