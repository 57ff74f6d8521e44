"""What one run builds from its config: the U-Net, the diffusion, the root keys, the first state.

The trainer, the inference modes and the benchmarks all build through these functions, so a
config means the same model everywhere.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from diffusion_jax import diffusion, schedules, timestep_sampling, train_state
from diffusion_jax.models import UNet

KEY_NAMES = ("init", "train", "sample", "eval")


def create_model(config: ml_collections.ConfigDict) -> UNet:
  """The U-Net of `config.model`; out_ch follows from num_channels and var_type (C or 2C)."""
  kwargs = dict(config.model)
  kwargs.setdefault("out_ch", diffusion.model_output_channels(config.data.num_channels,
                                                              config.diffusion.var_type))
  return UNet(**kwargs)


def create_schedule(config: ml_collections.ConfigDict) -> schedules.DiffusionSchedule:
  """The diffusion schedule of `config.diffusion`."""
  betas = schedules.get_beta_schedule(config.diffusion.beta_schedule,
                                      config.diffusion.num_timesteps)
  return schedules.DiffusionSchedule.from_betas(betas)


def create_diffusion(config: ml_collections.ConfigDict) -> diffusion.GaussianDiffusion:
  """The schedule and output parameterization of `config.diffusion`."""
  return diffusion.GaussianDiffusion(create_schedule(config), config.diffusion.mean_type,
                                     config.diffusion.var_type)


def base_keys(config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """Independent root keys of one run ("init", "train", "sample", "eval"), from config.seed."""
  root = jax.random.PRNGKey(config.seed)
  return {name: jax.random.fold_in(root, i) for i, name in enumerate(KEY_NAMES)}


def init_params(config: ml_collections.ConfigDict, model: nn.Module) -> Any:
  """The model's initial parameters (on the default device) from config.seed."""
  size, channels = config.data.image_size, config.data.num_channels
  x = jnp.zeros((1, size, size, channels), jnp.float32)
  t = jnp.zeros((1,), jnp.int32)
  y = jnp.zeros((1,), jnp.int32) if config.model.num_classes else None
  return jax.jit(lambda k: model.init(k, x, t, y, train=False)["params"])(
      base_keys(config)["init"])


def init_train_state(config: ml_collections.ConfigDict, model: nn.Module,
                     tx: optax.GradientTransformation) -> train_state.TrainState:
  """A fresh TrainState (on the default device) from config.seed."""
  history = None
  if config.training.timestep_sampler != "uniform":
    history = timestep_sampling.init_loss_history(config.diffusion.num_timesteps)
  return train_state.create_train_state(init_params(config, model), tx, history)
