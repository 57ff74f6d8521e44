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

from diffusion_jax import diffusion, schedules, sde as sde_lib, timestep_sampling, train_state
from diffusion_jax.models import NoisyClassifier, UNet

KEY_NAMES = ("init", "train", "sample", "eval")
OBJECTIVES = ("ddpm", "score_sde", "ncsn")  # config.diffusion.objective
SDE_KINDS = ("vp", "subvp", "ve")  # config.diffusion.sde


def create_model(config: ml_collections.ConfigDict) -> UNet:
  """The U-Net of `config.model`; out_ch follows from num_channels and var_type (C or 2C).

  With training.label_dropout > 0 the class embedding gets one more row, the null label
  (`null_label`), so one network is conditional, unconditional and classifier-free guided.
  """
  kwargs = dict(config.model)
  kwargs.setdefault("out_ch", diffusion.model_output_channels(config.data.num_channels,
                                                              config.diffusion.var_type))
  if null_label(config) is not None:
    kwargs["num_classes"] = config.model.num_classes + 1
  return UNet(**kwargs)


def null_label(config: ml_collections.ConfigDict) -> int | None:
  """The label meaning "no class" (= model.num_classes) of a model trained with label dropout."""
  if config.model.num_classes and config.training.label_dropout > 0:
    return config.model.num_classes
  return None


def create_classifier(config: ml_collections.ConfigDict) -> NoisyClassifier:
  """The noisy classifier of `config.classifier.model`, over model.num_classes classes."""
  return NoisyClassifier(num_classes=config.model.num_classes, **config.classifier.model)


def create_schedule(config: ml_collections.ConfigDict) -> schedules.DiffusionSchedule:
  """The diffusion schedule of `config.diffusion`."""
  betas = schedules.get_beta_schedule(config.diffusion.beta_schedule,
                                      config.diffusion.num_timesteps)
  return schedules.DiffusionSchedule.from_betas(betas)


def create_sde(config: ml_collections.ConfigDict) -> sde_lib.SDE:
  """The SDE of a score-matching objective: diffusion.sde with N = diffusion.num_timesteps steps
  (objective "ncsn": the VE SDE whose N steps are NCSN's L geometric levels)."""
  d = config.diffusion
  kind = "ve" if d.objective == "ncsn" else d.sde
  if kind == "ve":
    return sde_lib.VESDE(sigma_min=d.sigma_min, sigma_max=d.sigma_max, N=d.num_timesteps)
  cls = sde_lib.VPSDE if kind == "vp" else sde_lib.subVPSDE
  return cls(beta_min=d.beta_min, beta_max=d.beta_max, N=d.num_timesteps)


def create_diffusion(config: ml_collections.ConfigDict) -> diffusion.GaussianDiffusion:
  """The process (schedule, or SDE for a score-matching objective) and output parameterization
  of `config.diffusion`."""
  d = config.diffusion
  if d.objective == "ddpm":
    return diffusion.GaussianDiffusion(create_schedule(config), d.mean_type, d.var_type)
  return diffusion.GaussianDiffusion(None, d.mean_type, d.var_type, sde=create_sde(config))


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
