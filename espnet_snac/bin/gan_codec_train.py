"""ESPnet GAN-codec training with the ``snac`` codec registered.

Same options as ``python -m espnet2.bin.gan_codec_train``. Registration happens at import time of
this module, so workers spawned for ``--ngpu N`` (which re-import the main module) see ``snac`` too.
"""
from espnet_snac.registry import register

register()

from espnet2.tasks.gan_codec import GANCodecTask  # noqa: E402


def main(cmd=None):
    """Run ESPnet GAN-codec training (``--collect_stats true`` for statistics)."""
    GANCodecTask.main(cmd=cmd)


if __name__ == "__main__":
    main()
