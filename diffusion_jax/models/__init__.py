"""Denoising networks: the DDPM / ADM U-Net, ADM's noisy classifier, the diffusers checkpoint converter.

`convert` imports torch only when one of its loaders is called.
"""

from diffusion_jax.models import classifier, convert, layers
from diffusion_jax.models.classifier import NoisyClassifier
from diffusion_jax.models.layers import timestep_embedding
from diffusion_jax.models.unet import UNet

__all__ = ["NoisyClassifier", "UNet", "classifier", "convert", "layers", "timestep_embedding"]
