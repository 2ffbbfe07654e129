"""The SNAC generator: model, layers, quantizer, configs, checkpoints, code frames, fast CPU path."""
from espnet_snac.model.configs import SNAC_24KHZ, SNAC_32KHZ, SNAC_44KHZ
from espnet_snac.model.snac import SNAC, SNACOutput

__all__ = ["SNAC", "SNACOutput", "SNAC_24KHZ", "SNAC_32KHZ", "SNAC_44KHZ"]
