"""ESPnet GAN-codec training with the ``snac`` codec registered, run by ``SNACGANTrainer``.

ESPnet's options plus those of :class:`espnet_snac.train.trainer.SNACGANTrainer` (per-network
clipping, precision, non-finite guard, periodic checkpoints) and ``--augment_conf``. Registration
happens at import time of this module, so workers spawned for ``--ngpu N`` (which re-import the main
module) see ``snac`` too.
"""
from espnet_snac.registry import register

register()

import sys  # noqa: E402

from espnet_snac.train.preemption import EXIT_PREEMPTED, forward_to_children  # noqa: E402
from espnet_snac.train.task import SNACGANCodecTask  # noqa: E402


def main(cmd=None):
    """Run GAN-codec training (``--collect_stats true`` for statistics).

    SIGTERM / SIGUSR1 stop training after the current iteration with ``checkpoint.pth`` written and
    exit status 75 (see :mod:`espnet_snac.train.preemption`); ``--resume true`` continues from it.
    """
    import torch.multiprocessing as mp

    forward_to_children()  # ESPnet's multi-GPU parent passes the signals on to its training processes
    try:
        SNACGANCodecTask.main(cmd=cmd)
    except mp.ProcessExitedException as e:  # a spawned training process: preempted, or failed
        if e.exit_code == EXIT_PREEMPTED:
            sys.exit(EXIT_PREEMPTED)
        raise


if __name__ == "__main__":
    main()
