"""diffusion_jax: denoising diffusion models in JAX/Flax.

Importing the package reads no flags, imports no TensorFlow and touches no device;
import the submodules you need (`diffusion_jax.schedules`, `diffusion_jax.diffusion`,
`diffusion_jax.losses`, `diffusion_jax.samplers`, `diffusion_jax.models`, ...).
"""

__version__ = "0.1.0"
