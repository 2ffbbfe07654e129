"""Official SNAC configurations (``config.json`` keys = :class:`espnet_snac.model.snac.SNAC` kwargs).

Plain dicts with no torch import, so that checkpoint readers and CLIs can use them cheaply.
"""
from typing import Dict

#: Official configuration of the 24 kHz speech model.
SNAC_24KHZ: Dict = dict(
    sampling_rate=24000, encoder_dim=48, encoder_rates=[2, 4, 8, 8], decoder_dim=1024,
    decoder_rates=[8, 8, 4, 2], attn_window_size=None, codebook_size=4096, codebook_dim=8,
    vq_strides=[4, 2, 1], noise=True, depthwise=True,
)
#: Official configuration of the 32 kHz model (the 44 kHz one differs only in sampling_rate).
SNAC_32KHZ: Dict = dict(
    sampling_rate=32000, encoder_dim=64, encoder_rates=[2, 3, 8, 8], decoder_dim=1536,
    decoder_rates=[8, 8, 3, 2], attn_window_size=32, codebook_size=4096, codebook_dim=8,
    vq_strides=[8, 4, 2, 1], noise=True, depthwise=True,
)
SNAC_44KHZ: Dict = dict(SNAC_32KHZ, sampling_rate=44100)
