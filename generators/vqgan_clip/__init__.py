"""VQGAN + CLIP: the DSTRTD image generator (the seed's final method).

``generators.vqgan_clip.plugin`` registers it as ``vqgan-clip``; the model is
in :mod:`generators.vqgan_clip.vqgan`, the loop in :mod:`generators.vqgan_clip.optimise`.
"""

from generators.vqgan_clip.vqgan import VQGAN, VQGANConfig

__all__ = ["VQGAN", "VQGANConfig"]
