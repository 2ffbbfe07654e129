"""The SNAC generator: model, layers, quantizer, configs, checkpoints, code frames, fast CPU path.

``from espnet_snac.model import SNAC`` keeps working; submodules load on first use so that
``espnet_snac.model.configs`` and ``espnet_snac.model.frames`` stay cheap to import.
"""

_LAZY = {
    "SNAC": "espnet_snac.model.snac",
    "SNACOutput": "espnet_snac.model.snac",
    "SNAC_24KHZ": "espnet_snac.model.configs",
    "SNAC_32KHZ": "espnet_snac.model.configs",
    "SNAC_44KHZ": "espnet_snac.model.configs",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'espnet_snac.model' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
