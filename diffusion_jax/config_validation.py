"""Checks a config once, up front, so a bad field fails in a second rather than an hour in.

Every error names the field, the value, and how to fix it. Data availability (unknown data
set, files not downloaded) is checked by `diffusion_jax.input_pipeline` when it opens the data.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

from diffusion_jax import diffusion, errors, losses, schedules, timestep_sampling
from diffusion_jax.evaluation import scorers
from diffusion_jax.samplers import registry


ConfigError = errors.ConfigError


def _fail(field: str, value: Any, fix: str) -> None:
  raise ConfigError(f"config.{field}={value!r}: {fix}")


def _check_choice(config: ml_collections.ConfigDict, field: str, allowed) -> None:
  value = _get(config, field)
  if value not in allowed:
    _fail(field, value, f"choose one of {', '.join(map(repr, allowed))}.")


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
  value = config
  for part in field.split("."):
    value = value[part]
  return value


def _check_positive_int(config: ml_collections.ConfigDict, field: str, allow_zero: bool = False
                        ) -> None:
  value = _get(config, field)
  if not isinstance(value, int) or isinstance(value, bool) or value < (0 if allow_zero else 1):
    _fail(field, value, f"must be an integer >= {0 if allow_zero else 1}.")


def _check_divisible(config: ml_collections.ConfigDict, field: str, num_devices: int) -> None:
  value = _get(config, field)
  if value % num_devices:
    lower = max(num_devices, value // num_devices * num_devices)
    _fail(field, value,
          f"the batch size is GLOBAL and must be divisible by the {num_devices} devices; use "
          f"e.g. --config.{field}={lower} or --config.{field}={lower + num_devices}.")


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int) -> None:
  """Raises ConfigError on the first field the trainer cannot use.

  Args:
    config: a config with the sections of configs/default.py.
    num_devices: devices the global batches are split over (jax.device_count()).
  """
  for section in ("data", "model", "diffusion", "training", "sampling", "eval"):
    if section not in config:
      _fail(section, None, "section missing; build configs on configs/default.py's get_config().")

  # Data and the U-Net's resolutions. (The input pipeline imports TensorFlow: import it late.)
  from diffusion_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  if config.data.dataset not in input_pipeline.DATASETS:
    _fail("data.dataset", config.data.dataset,
          f"unknown data set; choose one of {', '.join(input_pipeline.DATASETS)} (\"digits\" "
          "needs no download; the others must be prepared with `tfds build <name>`).")
  _check_positive_int(config, "data.image_size")
  _check_positive_int(config, "data.num_channels")
  model = config.model
  size = config.data.image_size
  if not model.ch_mult:
    _fail("model.ch_mult", model.ch_mult, "needs at least one level, e.g. (1, 2, 2, 2).")
  factor = 2 ** (len(model.ch_mult) - 1)
  if size % factor:
    _fail("data.image_size", size,
          f"the U-Net halves the resolution {len(model.ch_mult) - 1} times "
          f"(model.ch_mult={tuple(model.ch_mult)}), so the image size must be divisible by "
          f"{factor}; use an image size that is a multiple of {factor} or a shorter ch_mult.")
  resolutions = [size // 2**i for i in range(len(model.ch_mult))]
  for res in model.attn_resolutions:
    if res not in resolutions:
      _fail("model.attn_resolutions", tuple(model.attn_resolutions),
            f"{res} is not one of the U-Net's feature-map sizes {resolutions} for "
            f"image_size={size} and ch_mult={tuple(model.ch_mult)}; pick from those sizes.")
  for mult in model.ch_mult:
    if (model.ch * mult) % model.norm_groups:
      _fail("model.norm_groups", model.norm_groups,
            f"GroupNorm groups must divide every level's width ch * ch_mult = {model.ch * mult}; "
            "change model.ch or model.norm_groups.")
  if not 0.0 <= model.dropout < 1.0:
    _fail("model.dropout", model.dropout, "must be in [0, 1).")
  if "out_ch" in model:
    expected = diffusion.model_output_channels(config.data.num_channels, config.diffusion.var_type)
    if model.out_ch not in (None, expected):
      _fail("model.out_ch", model.out_ch,
            f"var_type={config.diffusion.var_type!r} with {config.data.num_channels} channels "
            f"needs {expected} output channels; remove the field (it is derived).")

  # Diffusion.
  _check_choice(config, "diffusion.beta_schedule", schedules.BETA_SCHEDULES)
  _check_positive_int(config, "diffusion.num_timesteps")
  _check_choice(config, "diffusion.mean_type", diffusion.MEAN_TYPES)
  _check_choice(config, "diffusion.var_type", diffusion.VAR_TYPES)
  _check_choice(config, "diffusion.loss_type", losses.LOSS_TYPES)

  # Training.
  training = config.training
  _check_positive_int(config, "training.batch_size")
  _check_divisible(config, "training.batch_size", num_devices)
  _check_positive_int(config, "training.num_train_steps")
  if not (isinstance(training.learning_rate, (int, float)) and math.isfinite(training.learning_rate)
          and training.learning_rate > 0):
    _fail("training.learning_rate", training.learning_rate, "must be a finite number > 0.")
  _check_positive_int(config, "training.warmup_steps", allow_zero=True)
  if not 0.0 <= training.ema_decay < 1.0:
    _fail("training.ema_decay", training.ema_decay, "must be in [0, 1), e.g. 0.9999.")
  _check_choice(config, "training.timestep_sampler", timestep_sampling.TIMESTEP_SAMPLERS)
  for field in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
                "num_grid_samples"):
    _check_positive_int(config, f"training.{field}")
  _check_positive_int(config, "training.sample_every_steps", allow_zero=True)

  # Sampling: the sampler's declared options, read from its config section.
  _check_choice(config, "sampling.sampler", registry.names())
  sampler = registry.get(config.sampling.sampler)
  if sampler.prepare is not None and config.training.sample_every_steps:
    _fail("sampling.sampler", sampler.name,
          f"its once-per-model prepare step ({', '.join(sampler.prepared)}) does not run for the "
          "periodic training grids: use it in --mode=sample / --mode=eval with "
          "training.sample_every_steps=0, or pick another sampler.")
  if sampler.prepare is not None and config.model.num_classes:
    _fail("sampling.sampler", sampler.name,
          "its prepare step supports unconditional models only; set model.num_classes to None "
          "or pick another sampler.")
  steps = config.sampling.num_steps
  if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
    _fail("sampling.num_steps", steps, "must be an integer >= 1, or unset for the sampler's "
          "default.")
  section = sampler.config_section
  if sampler.options and section not in config.sampling:
    _fail(f"sampling.{section}", None, "section missing; build configs on configs/default.py's "
          "get_config(), which adds every registered sampler's section.")
  try:
    registry.resolve_options(sampler.name, registry.options_from_config(config.sampling),
                             num_steps=steps, num_timesteps=config.diffusion.num_timesteps,
                             where=f"config.sampling.{section}")
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _check_positive_int(config, "sampling.num_samples")
  _check_positive_int(config, "sampling.batch_size")
  _check_divisible(config, "sampling.batch_size", num_devices)
  _check_positive_int(config, "eval.batch_size")
  _check_divisible(config, "eval.batch_size", num_devices)
  if config.eval.num_batches is not None:
    _check_positive_int(config, "eval.num_batches")
  _check_positive_int(config, "eval.num_quality_samples")
  _check_positive_int(config, "eval.quality_batch_size")
  _check_divisible(config, "eval.quality_batch_size", num_devices)
  if config.eval.sample_quality_at_end and not scorers.requested(config):
    _fail("eval.sample_quality_at_end", True,
          "no sample-quality score is defined for this run: outside the digits data set it is "
          "FID / IS / precision-recall, which needs eval.inception_weights and "
          "eval.reference_stats (see diffusion_jax/evaluation/README.md); or set it False.")
  if bool(config.eval.inception_weights) != bool(config.eval.reference_stats):
    missing = "reference_stats" if config.eval.inception_weights else "inception_weights"
    _fail(f"eval.{missing}", None,
          "FID needs both eval.inception_weights and eval.reference_stats (see "
          "diffusion_jax/evaluation/README.md); set the missing one or unset both.")
