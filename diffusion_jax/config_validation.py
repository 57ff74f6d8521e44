"""Checks a config once, up front, so a bad field fails in a second rather than an hour in.

Every error names the field, the value, and how to fix it. Data availability (unknown data
set, files not downloaded) is checked by `diffusion_jax.input_pipeline` when it opens the data.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

from diffusion_jax import dataset_names, diffusion, errors, experiment, losses, schedules
from diffusion_jax import timestep_sampling
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


def _check_jitted_steps(config: ml_collections.ConfigDict) -> None:
  """training.n_jitted_steps = k: every period the loop acts on is a multiple of k, since it
  logs, checkpoints and samples only between dispatches of k steps."""
  _check_positive_int(config, "training.n_jitted_steps")
  k = config.training.n_jitted_steps
  for field in ("num_train_steps", "checkpoint_every_steps", "log_every_steps",
                "sample_every_steps"):
    value = config.training[field]
    if value % k:  # sample_every_steps = 0 (never) passes
      lower = max(k, value // k * k)
      _fail(f"training.{field}", value,
            f"must be a multiple of training.n_jitted_steps={k} (the loop runs {k} steps per "
            f"dispatch and acts only between dispatches); use e.g. --config.training.{field}="
            f"{lower} or {lower + k}, or --config.training.n_jitted_steps=1.")


def _check_score_objective(config: ml_collections.ConfigDict) -> None:
  """The fields a score-matching objective (score_sde, ncsn) reads, and what it cannot do."""
  d = config.diffusion
  objective = d.objective
  kind = "ve" if objective == "ncsn" else d.sde
  if objective == "score_sde":
    _check_choice(config, "diffusion.sde", experiment.SDE_KINDS)
    _check_choice(config, "diffusion.sde_weighting", losses.SCORE_WEIGHTINGS)
    if not 0.0 <= d.sde_eps < 1.0:
      _fail("diffusion.sde_eps", d.sde_eps, "must be in [0, 1); Song et al. use 1e-5.")
  allowed = ("eps", "x0", "v") if kind == "vp" else ("eps", "x0")
  if d.mean_type not in allowed:
    _fail("diffusion.mean_type", d.mean_type,
          f"objective={objective!r} on the {kind} SDE trains a network predicting one of "
          f"{', '.join(map(repr, allowed))} (v needs a variance-preserving SDE).")
  if d.var_type in diffusion.LEARNED_VAR_TYPES:
    _fail("diffusion.var_type", d.var_type,
          f"objective={objective!r} has no reverse-process variance to learn; use 'fixedlarge'.")
  if d.loss_type != "mse":
    _fail("diffusion.loss_type", d.loss_type,
          f"applies to objective='ddpm' only; leave it 'mse' with objective={objective!r} (its "
          "weighting is diffusion.sde_weighting).")
  if config.training.timestep_sampler != "uniform":
    _fail("training.timestep_sampler", config.training.timestep_sampler,
          "importance sampling of t applies to objective='ddpm' only; use 'uniform'.")
  if kind == "ve":
    if not 0.0 < d.sigma_min < d.sigma_max:
      _fail("diffusion.sigma_min", d.sigma_min,
            f"need 0 < sigma_min < sigma_max (= {d.sigma_max}).")
    if d.num_timesteps < 2:
      _fail("diffusion.num_timesteps", d.num_timesteps, "the VE SDE needs >= 2 levels.")
  else:
    if not 0.0 < d.beta_min <= d.beta_max:
      _fail("diffusion.beta_min", d.beta_min, f"need 0 < beta_min <= beta_max (= {d.beta_max}).")
    if not d.beta_max < d.num_timesteps:
      _fail("diffusion.num_timesteps", d.num_timesteps,
            f"the VP chain's betas are beta(t) / N, so N must exceed beta_max = {d.beta_max}; "
            "use e.g. 1000.")
  sampler = registry.get(config.sampling.sampler) if config.sampling.sampler in registry.names() else None
  if sampler is not None and not sampler.accepts_sde:
    score_samplers = [n for n in registry.names() if registry.get(n).accepts_sde]
    _fail("sampling.sampler", sampler.name,
          f"objective={objective!r} trains a score model on an SDE; sample it with one of "
          f"{', '.join(map(repr, score_samplers))}.")
  if config.eval.compute_bpd:
    _fail("eval.compute_bpd", True,
          f"the DDPM bound does not apply to objective={objective!r} (a score model's likelihood "
          "is the probability-flow ODE's); set eval.compute_bpd=False.")


def _check_ode_bpd(config: ml_collections.ConfigDict) -> None:
  """eval.ode: the probability-flow ODE likelihood's options (diffusion_jax.likelihood)."""
  from diffusion_jax import likelihood, sde  # pylint: disable=g-import-not-at-top  (diffrax)
  from diffusion_jax.samplers import ode  # pylint: disable=g-import-not-at-top
  if config.diffusion.mean_type not in sde.PREDICTIONS:
    _fail("diffusion.mean_type", config.diffusion.mean_type,
          "the probability-flow ODE needs a model of eps, x0, v or the score; set "
          "--config.eval.ode_bpd=False to report the DDPM bound only.")
  _check_choice(config, "eval.ode.estimator", likelihood.ESTIMATORS)
  _check_choice(config, "eval.ode.probe", likelihood.PROBES)
  _check_choice(config, "eval.ode.dequantization", likelihood.DEQUANTIZATIONS)
  _check_choice(config, "eval.ode.solver", ode.SOLVERS)
  _check_positive_int(config, "eval.ode.num_probes")
  for field in ("eval.ode.rtol", "eval.ode.atol"):
    value = _get(config, field)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1:
      _fail(field, value, "must be a tolerance in (0, 1), e.g. 1e-5.")
  t_min = config.eval.ode.t_min
  if t_min is not None and not 0 <= t_min < 1:
    _fail("eval.ode.t_min", t_min, "must be in [0, 1), or None for the chain's step 0.")


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int) -> None:
  """Raises ConfigError on the first field the trainer cannot use.

  Args:
    config: a config with the sections of configs/default.py.
    num_devices: devices the global batches are split over (jax.device_count()).
  """
  for section in ("data", "model", "diffusion", "training", "sampling", "eval"):
    if section not in config:
      _fail(section, None, "section missing; build configs on configs/default.py's get_config().")

  # Data and the U-Net's resolutions.
  if config.data.dataset not in dataset_names.DATASETS:
    _fail("data.dataset", config.data.dataset,
          f"unknown data set; choose one of {', '.join(dataset_names.DATASETS)} (\"digits\" "
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
  _check_choice(config, "diffusion.objective", experiment.OBJECTIVES)
  if config.diffusion.objective != "ddpm":
    _check_score_objective(config)

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
  _check_jitted_steps(config)
  if not 0.0 <= training.label_dropout < 1.0:
    _fail("training.label_dropout", training.label_dropout, "must be in [0, 1), e.g. 0.1.")
  if training.label_dropout > 0 and not model.num_classes:
    _fail("training.label_dropout", training.label_dropout,
          "drops class labels, but the model is unconditional: set model.num_classes, or 0.")

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
  _validate_guidance(config)
  _check_positive_int(config, "sampling.num_samples")
  _check_positive_int(config, "sampling.batch_size")
  _check_divisible(config, "sampling.batch_size", num_devices)
  _check_positive_int(config, "eval.batch_size")
  _check_divisible(config, "eval.batch_size", num_devices)
  if config.eval.num_batches is not None:
    _check_positive_int(config, "eval.num_batches")
  if config.eval.ode_bpd:
    _check_ode_bpd(config)
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


GUIDANCE_KINDS = ("none", "classifier", "classifier_free")
GUIDANCE_FORMS = ("auto", "mean_shift", "eps")


def _validate_guidance(config: ml_collections.ConfigDict) -> None:
  """config.sampling.guidance: what it needs from the model, the sampler and its numbers."""
  if "guidance" not in config.sampling:
    _fail("sampling.guidance", None, "section missing; build configs on configs/default.py's "
          "get_config().")
  g = config.sampling.guidance
  _check_choice(config, "sampling.guidance.kind", GUIDANCE_KINDS)
  _check_choice(config, "sampling.guidance.form", GUIDANCE_FORMS)
  for field, values in (("scale", (g.scale,)), ("grid_scales", tuple(g.grid_scales))):
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in values):
      _fail(f"sampling.guidance.{field}", getattr(g, field), "must be finite numbers, e.g. 2.0 "
            "(grid_scales: a tuple such as (0., 1., 2., 4.)).")
  if g.kind == "none":
    if g.grid_scales:
      _fail("sampling.guidance.grid_scales", tuple(g.grid_scales),
            "a guidance grid needs sampling.guidance.kind=classifier or classifier_free.")
    return
  if config.diffusion.objective != "ddpm":  # guidance works on the discrete DDPM schedule
    _fail("sampling.guidance.kind", g.kind,
          f"guidance is implemented for objective='ddpm' models only, not "
          f"diffusion.objective={config.diffusion.objective!r}; set sampling.guidance.kind=none.")
  num_classes = config.model.num_classes
  if not num_classes:
    _fail("sampling.guidance.kind", g.kind, "guides a class-conditional model: set "
          "model.num_classes (and train the model with labels).")
  bad = [c for c in g.classes if not isinstance(c, int) or not 0 <= c < num_classes]
  if bad:
    _fail("sampling.guidance.classes", tuple(g.classes),
          f"classes must be integers in [0, {num_classes}) (model.num_classes); () = all.")
  if g.kind == "classifier_free" and not config.training.label_dropout > 0:
    _fail("sampling.guidance.kind", g.kind,
          "classifier-free guidance needs a model trained with label dropout (its null label): "
          "train with training.label_dropout > 0 (e.g. 0.1), or use kind=classifier.")
  if g.kind == "classifier" and g.form == "mean_shift" and config.sampling.sampler != "ancestral":
    _fail("sampling.guidance.form", g.form,
          f"the mean shift (Algorithm 1) is ancestral sampling's form; sampler "
          f"{config.sampling.sampler!r} takes form=eps (Algorithm 2), which auto chooses.")


def validate_classifier_config(config: ml_collections.ConfigDict, *, num_devices: int) -> None:
  """Raises ConfigError on the first field --mode=train_classifier cannot use."""
  from diffusion_jax.models import classifier  # pylint: disable=g-import-not-at-top
  if "classifier" not in config:
    _fail("classifier", None, "section missing; build configs on configs/default.py's get_config().")
  if not config.model.num_classes or config.model.num_classes < 2:
    _fail("model.num_classes", config.model.num_classes,
          "the classifier predicts model.num_classes classes: set it (e.g. 10 for the digits).")
  cmodel, size = config.classifier.model, config.data.image_size
  factor = 2 ** (len(cmodel.ch_mult) - 1)
  if not cmodel.ch_mult or size % factor:
    _fail("classifier.model.ch_mult", tuple(cmodel.ch_mult),
          f"halves the {size}-pixel images {len(cmodel.ch_mult) - 1} times; use at most "
          f"{int(math.log2(size & -size)) + 1} levels.")
  resolutions = [size // 2**i for i in range(len(cmodel.ch_mult))]
  if any(r not in resolutions for r in cmodel.attn_resolutions):
    _fail("classifier.model.attn_resolutions", tuple(cmodel.attn_resolutions),
          f"pick from the classifier's feature-map sizes {resolutions}.")
  for mult in cmodel.ch_mult:
    width = cmodel.ch * mult
    if width % cmodel.norm_groups:
      _fail("classifier.model.norm_groups", cmodel.norm_groups,
            f"must divide every width ch * ch_mult = {width}; change classifier.model.ch or it.")
    if cmodel.num_head_channels not in (None, -1) and width % cmodel.num_head_channels:
      _fail("classifier.model.num_head_channels", cmodel.num_head_channels,
            f"must divide every width ch * ch_mult = {width}.")
  if cmodel.dropout != 0.0:
    _fail("classifier.model.dropout", cmodel.dropout,
          "the classifier trains without dropout (as ADM's); set it to 0.")
  if cmodel.pool not in classifier.POOLS:
    _fail("classifier.model.pool", cmodel.pool, f"choose one of {', '.join(map(repr, classifier.POOLS))}.")
  for field in ("batch_size", "num_train_steps", "log_every_steps", "checkpoint_every_steps",
                "keep_checkpoints", "t_bands"):
    _check_positive_int(config, f"classifier.training.{field}")
  _check_positive_int(config, "classifier.training.eval_batches", allow_zero=True)
  _check_divisible(config, "classifier.training.batch_size", num_devices)
  ct = config.classifier.training
  if not (isinstance(ct.learning_rate, (int, float)) and math.isfinite(ct.learning_rate)
          and ct.learning_rate > 0):
    _fail("classifier.training.learning_rate", ct.learning_rate, "must be a finite number > 0.")
  if not ct.weight_decay >= 0:
    _fail("classifier.training.weight_decay", ct.weight_decay, "must be >= 0 (ADM: 0.05).")
