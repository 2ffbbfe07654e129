"""The ESPnet GAN codec ``snac``: training objective, losses, config checks, codebook health."""
