"""Lists every registered sampler with its config options: `python -m diffusion_jax.samplers`."""

from diffusion_jax.samplers import registry

if __name__ == "__main__":
  print(registry.describe())
