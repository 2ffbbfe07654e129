"""``SNACGANCodecTask``: ESPnet's GAN-codec task trained by :class:`SNACGANTrainer`.

``python -m espnet2.bin.gan_codec_train --codec snac`` keeps ESPnet's stock ``GANTrainer``; our
entry point ``python -m espnet_snac.bin.gan_codec_train`` uses this task.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from espnet2.tasks.gan_codec import GANCodecTask
from espnet2.utils.nested_dict_action import NestedDictAction

from espnet_snac.train.preemption import EXIT_PREEMPTED, TrainingPreempted
from espnet_snac.train.trainer import SNACGANTrainer
from espnet_snac.train.unreadable_audio import DEFAULT_MAX_CONSECUTIVE, wrap_iter_factory


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
        group = parser.add_argument_group(description="Unreadable audio during training")
        group.add_argument(
            "--max_consecutive_unreadable", type=int, default=DEFAULT_MAX_CONSECUTIVE,
            help="An audio file that cannot be read during training (deleted, truncated, NFS error) is "
                 "logged, counted and skipped; this many failures in a row stop the run",
        )

    @classmethod
    def build_iter_factory(cls, args: argparse.Namespace, distributed_option, mode: str,
                           kwargs: Optional[dict] = None):
        factory = super().build_iter_factory(args, distributed_option, mode, kwargs)
        if mode in ("train", "valid"):
            wrap_iter_factory(factory, getattr(args, "max_consecutive_unreadable", DEFAULT_MAX_CONSECUTIVE), mode)
        return factory

    @classmethod
    def main_worker(cls, args: argparse.Namespace):
        """ESPnet's worker; a preempted run exits with :data:`EXIT_PREEMPTED` (no traceback), also in the
        processes ESPnet spawns for ``--multiprocessing_distributed``."""
        try:
            super().main_worker(args)
        except TrainingPreempted:
            sys.exit(EXIT_PREEMPTED)

    @classmethod
    def get_parser(cls):
        parser = super().get_parser()
        # ESPnet's one-norm clipping (default 5) is replaced by grad_clip_generator/_discriminator.
        parser.set_defaults(grad_clip=0.0)
        return parser
