"""espnet-snac: train SNAC codecs with ESPnet and turn speech into SNAC tokens.

``import espnet_snac`` is cheap (no torch, no espnet2) and registers the ``snac`` codec with ESPnet's
GAN-codec task, immediately if that task is already loaded, else as soon as it is imported.
"""
from espnet_snac.registry import register_when_imported as _register_when_imported

__version__ = "0.1.0"
__all__ = ["SNAC", "SNAC_24KHZ", "SNAC_32KHZ", "SNAC_44KHZ", "SNACTokenizer"]

_register_when_imported()

_LAZY = {
    "SNAC": "espnet_snac.model.snac",
    "SNAC_24KHZ": "espnet_snac.model.configs",
    "SNAC_32KHZ": "espnet_snac.model.configs",
    "SNAC_44KHZ": "espnet_snac.model.configs",
    "SNACTokenizer": "espnet_snac.inference.tokenizer",
}


def __getattr__(name):
    # torch and the tokenizer's dependencies load on first use, so CLIs that need neither start fast.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'espnet_snac' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
