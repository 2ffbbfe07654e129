"""``SNACGANCodecTask``: ESPnet's GAN-codec task trained by :class:`SNACGANTrainer`.

``python -m espnet2.bin.gan_codec_train --codec snac`` keeps ESPnet's stock ``GANTrainer``; our
entry point ``python -m espnet_snac.bin.gan_codec_train`` uses this task.
"""
from __future__ import annotations

import argparse

from espnet2.tasks.gan_codec import GANCodecTask
from espnet2.utils.nested_dict_action import NestedDictAction

from espnet_snac.train.trainer import SNACGANTrainer


class SNACGANCodecTask(GANCodecTask):
    trainer = SNACGANTrainer

    @classmethod
    def add_task_arguments(cls, parser: argparse.ArgumentParser):
        super().add_task_arguments(parser)
        group = parser.add_argument_group(description="Batch augmentation")
        group.add_argument(
            "--augment_conf", action=NestedDictAction, default=dict(),
            help="Keyword arguments of espnet_snac.train.augment.BatchAugment, applied to each training "
                 "batch on the device before both turns (empty: off)",
        )

    @classmethod
    def get_parser(cls):
        parser = super().get_parser()
        # ESPnet's one-norm clipping (default 5) is replaced by grad_clip_generator/_discriminator.
        parser.set_defaults(grad_clip=0.0)
        return parser
