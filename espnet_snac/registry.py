"""Registration of the ``snac`` codec in ESPnet's GAN-codec task.

ESPnet has no plugin mechanism: ``GANCodecTask`` builds models from the module-level
``espnet2.tasks.gan_codec.codec_choices``, so the class must be in it before a parser is built.
Importing that module costs seconds, so ``import espnet_snac`` does not force it: if the task module
is not loaded yet, a one-shot import hook registers ``snac`` the moment it is.

Installing the package also installs ``espnet_snac_hook.pth`` in site-packages (see setup.py): every
interpreter runs :func:`register_when_imported` at start-up (this module and the package
``__init__`` only; no torch, no espnet2), so stock ESPnet tools and other recipes' scripts see
``snac`` without importing ``espnet_snac`` themselves. ``pip uninstall`` removes the file.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings

TASK_MODULE = "espnet2.tasks.gan_codec"
CODEC_NAME = "snac"
SCHEDULER_NAME = "exponentialdecay"


def register() -> None:
    """Add ``snac`` to ``codec_choices`` and the per-iteration ``exponentialdecay`` scheduler to
    ESPnet's schedulers (idempotent). Imports the ESPnet task module."""
    from espnet2.schedulers.abs_scheduler import AbsBatchStepScheduler
    from espnet2.tasks import abs_task, gan_codec

    from espnet_snac.objective.codec import SNACCodec
    from espnet_snac.train.schedulers import ExponentialDecayLR

    gan_codec.codec_choices.classes[CODEC_NAME] = SNACCodec
    AbsBatchStepScheduler.register(ExponentialDecayLR)
    abs_task.scheduler_classes[SCHEDULER_NAME] = ExponentialDecayLR


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Wraps the loader of the task module so that :func:`register` runs right after it executes."""

    def find_spec(self, fullname, path, target=None):
        if fullname != TASK_MODULE:
            return None
        sys.meta_path.remove(self)  # one shot; also keeps find_spec below from recursing
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module):
            exec_module(module)
            try:
                register()
            except Exception as exc:  # the hook runs in every process: never break the other codecs
                warnings.warn(f"espnet_snac: the 'snac' codec could not be registered with ESPnet "
                              f"({type(exc).__name__}: {exc}); for the traceback run "
                              "python -c 'from espnet_snac.registry import register; register()'",
                              RuntimeWarning, stacklevel=2)

        spec.loader.exec_module = exec_and_register
        return spec


def register_when_imported() -> None:
    """Register now if ESPnet's task module is loaded, else as soon as it gets imported."""
    if TASK_MODULE in sys.modules:
        register()
    elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
