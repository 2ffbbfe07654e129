"""ESPnet GAN-codec training with the ``snac`` codec registered, run by ``SNACGANTrainer``.

ESPnet's options plus those of :class:`espnet_snac.train.trainer.SNACGANTrainer` (per-network
clipping, precision, non-finite guard, periodic checkpoints) and ``--augment_conf``. Registration
happens at import time of this module, so workers spawned for ``--ngpu N`` (which re-import the main
module) see ``snac`` too.
"""
from espnet_snac.registry import register

register()

from espnet_snac.train.task import SNACGANCodecTask  # noqa: E402


def main(cmd=None):
    """Run GAN-codec training (``--collect_stats true`` for statistics)."""
    SNACGANCodecTask.main(cmd=cmd)


if __name__ == "__main__":
    main()
