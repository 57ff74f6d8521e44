"""Denoising networks: the DDPM / ADM U-Net and the diffusers checkpoint converter.

`convert` imports torch only when one of its loaders is called.
"""

from diffusion_jax.models import convert, layers
from diffusion_jax.models.layers import timestep_embedding
from diffusion_jax.models.unet import UNet

__all__ = ["UNet", "convert", "layers", "timestep_embedding"]
