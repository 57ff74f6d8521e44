"""Conditional sampling as `model_fn` transformers: classifier guidance and classifier-free guidance.

Every function here takes a model and returns another `model_fn(x_t, t) -> output` with the
same parameterization (mean_type, var_type), so every sampler runs guided without a change.

Classifier guidance (Dhariwal & Nichol 2021, Sec. 4), with a classifier p(y | x_t, t) trained on
noisy images, g = grad_{x_t} log p(y | x_t, t) and a scale s:

* `form="mean_shift"`, Algorithm 1 (ancestral sampling): x_{t-1} ~ N(mu + s Sigma g, Sigma).
* `form="eps"`, Algorithm 2 (DDIM, DPM-Solver, any sampler): eps_hat = eps - s sqrt(1 - abar_t) g,
  the noise prediction of the score of p(x_t) p(y | x_t)^s.

A model_fn returns a prediction, not a mean, so both shifts are expressed as the shift of the
model's x_0 prediction that produces them. With x_t fixed, every parameterization is affine in
x_0 (DDPM Eqs. 4, 7; Salimans & Ho 2022 for v), so a shift dx0 of x_0 is the shift

    eps: -dx0 / sqrt(1/abar_t - 1),   x0: dx0,   v: -dx0 / sqrt(1 - abar_t),   mean: c1_t dx0

of the output, with c1_t the x_0 coefficient of the posterior mean mu-tilde_t (DDPM Eq. 7).
The mean shift s Sigma g is dx0 = s Sigma g / c1_t; the eps form's -s sqrt(1 - abar_t) g is
dx0 = s (1 - abar_t) / sqrt(abar_t) g. Sigma is the sampler's variance at that step (beta_t,
beta-tilde_t or the model's learned one), so a mean shift needs the schedule the ancestral
sampler walks, respaced if it is.

Clipping: a sampler with clip_denoised clips the shifted prediction x0 + dx0; guided-diffusion
shifts after its clip, clip(x0) + dx0, unbounded. The two agree wherever the clip is inactive.
For guided-diffusion's order pass `clip_denoised=True` here and `clip_denoised=False` to the
sampler.

Classifier-free guidance (Ho & Salimans 2022): one network trained with and without labels (a
null label), sampled with eps_uncond + w (eps_cond - eps_uncond). w = 1 is conditional
sampling, w = 0 unconditional; Ho & Salimans' guidance strength is w - 1 (their Eq. 6 writes
(1 + w) eps_cond - w eps_uncond). Both halves run in one batched model call.
"""

from __future__ import annotations

from typing import Callable, Literal

import dataclasses

import chex
import jax
import jax.numpy as jnp

from diffusion_jax import diffusion
from diffusion_jax.diffusion import MeanType, VarType, check_option
from diffusion_jax.samplers import grids
from diffusion_jax.schedules import DiffusionSchedule, extract

ModelFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
CondModelFn = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray]
ClassifierFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
Form = Literal["mean_shift", "eps"]
FORMS: tuple[str, ...] = ("mean_shift", "eps")


def class_log_prob(classifier_fn: ClassifierFn, x_t: jnp.ndarray, t: jnp.ndarray,
                   labels: jnp.ndarray) -> jnp.ndarray:
  """log p(y | x_t, t) [B] from a classifier's logits.

  Args:
    classifier_fn: classifier_fn(x_t [B, ...], t [B]) -> logits [B, K].
    x_t: [B, ...] noisy inputs.
    t: [B] timesteps (what the classifier was trained with: the original index).
    labels: int [B] classes y.
  """
  logits = classifier_fn(x_t, t)
  chex.assert_rank(logits, 2)
  _check_labels(labels, x_t)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def class_log_prob_grad(classifier_fn: ClassifierFn, x_t: jnp.ndarray, t: jnp.ndarray,
                        labels: jnp.ndarray) -> jnp.ndarray:
  """grad_{x_t} log p(y | x_t, t), per example, [B, ...].

  The gradient is taken with respect to x_t only: the classifier's parameters are whatever
  `classifier_fn` closes over (`models.classifier.classifier_fn` stops their gradient). The
  gradient of the batch sum is the per-example gradient because a classifier treats the
  examples of a batch independently (GroupNorm, no BatchNorm).
  """
  return jax.grad(lambda x: jnp.sum(class_log_prob(classifier_fn, x, t, labels)))(x_t)


def classifier_guidance(model_fn: ModelFn, classifier_fn: ClassifierFn,
                        schedule: DiffusionSchedule, labels: jnp.ndarray, *,
                        scale: float | jnp.ndarray, form: Form = "eps",
                        mean_type: MeanType = "eps", var_type: VarType = "fixedlarge",
                        clip_denoised: bool = False) -> ModelFn:
  """Classifier guidance (Dhariwal & Nichol 2021, Algorithms 1 and 2) as a model_fn.

  Args:
    model_fn: model_fn(x_t [B, H, W, C], t [B]) -> output (unconditional, or conditional with
      its labels bound, as ADM-G uses it); t is the ORIGINAL timestep.
    classifier_fn: classifier_fn(x_t, t) -> logits [B, K] of a noisy-image classifier.
    schedule: for "mean_shift", the chain the ancestral sampler walks (the respaced schedule
      when sampling fewer steps): Sigma is its variance at each step. For "eps", the
      original schedule or any respacing of it (only abar_t enters). A timestep that the
      schedule does not visit makes the output NaN rather than silently wrong.
    labels: int [B], the class y of each example.
    scale: the gradient scale s, a float or one per example [B] (s = 0: unguided).
    form: "mean_shift" (Algorithm 1, mu + s Sigma g; integer timesteps only) or "eps"
      (Algorithm 2, eps - s sqrt(1 - abar_t) g; also at DPM-Solver's float timesteps, with
      abar_t from the continuous-time interpolation of `grids.alphas_cumprod_at`).
    mean_type, var_type: what `model_fn` outputs (config.diffusion); the guided model
      outputs the same.
    clip_denoised: clip the model's x0 prediction to [-1, 1] before the shift (guided-
      diffusion's order; then sample with clip_denoised=False). No effect for mean_type="mean",
      whose mean the samplers never clip.

  Returns:
    guided model_fn(x_t, t) -> output, same shape as model_fn's.
  """
  check_option("form", form, FORMS)
  check_option("mean_type", mean_type, diffusion.MEAN_TYPES)
  check_option("var_type", var_type, diffusion.VAR_TYPES)

  def guided(x_t: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
    _check_labels(labels, x_t)
    output = model_fn(x_t, t)
    mean_part, var_part = diffusion.split_model_output(output, x_t, var_type)
    coefs = _Coefficients.at(schedule, t, x_t.shape, discrete=form == "mean_shift" or mean_type == "mean")
    g = class_log_prob_grad(classifier_fn, x_t, t, labels)
    s = _per_example(scale, x_t)
    if form == "mean_shift":
      log_var = diffusion.model_log_variance(schedule, var_part, x_t, coefs.step, var_type)
      dx0 = s * jnp.exp(log_var) * g / coefs.c1
    else:
      dx0 = s * jnp.square(coefs.sqrt_one_minus_abar) / coefs.sqrt_abar * g
    if clip_denoised and mean_type != "mean":
      x0 = coefs.x0_from_output(x_t, mean_part, mean_type)
      dx0 = dx0 + jnp.clip(x0, -1.0, 1.0) - x0
    mean_part = mean_part + coefs.output_shift(dx0, mean_type) * coefs.valid
    return mean_part if var_part is None else jnp.concatenate([mean_part, var_part], axis=-1)

  return guided


def classifier_free_guidance(cond_model_fn: CondModelFn, labels: jnp.ndarray, *,
                             scale: float | jnp.ndarray, null_label: int,
                             var_type: VarType = "fixedlarge") -> ModelFn:
  """Classifier-free guidance (Ho & Salimans 2022) as a model_fn: one batched call per step.

  The guided prediction is eps_uncond + w (eps_cond - eps_uncond), computed as
  (1 - w) eps_uncond + w eps_cond so that w = 1 returns the conditional output and w = 0 the
  unconditional one exactly. The combination has weights summing to 1, so it is the same in
  every parameterization (eps, x0, v, mean: each affine in x_0 at fixed x_t) and needs no
  schedule. A learned variance is taken from the conditional half.

  Args:
    cond_model_fn: cond_model_fn(x_t [N, H, W, C], t [N], labels int [N]) -> output, trained
      with label dropout so that `null_label` means "no label".
    labels: int [B], the class of each example (null_label in a row gives unconditional
      samples there).
    scale: w, a float or one per example [B].
    null_label: the label the model was trained with for "unconditional" (e.g. num_classes).
    var_type: what the model outputs (only to find its variance channels).

  Returns:
    guided model_fn(x_t [B, H, W, C], t [B]) -> output; each call evaluates cond_model_fn
    once on the 2B-batch [x_t; x_t] with labels [labels; null].
  """
  check_option("var_type", var_type, diffusion.VAR_TYPES)

  def guided(x_t: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
    _check_labels(labels, x_t)
    batch = x_t.shape[0]
    both_labels = jnp.concatenate([labels.astype(jnp.int32), jnp.full((batch,), null_label, jnp.int32)])
    both = cond_model_fn(jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]), both_labels)
    cond_mean, cond_var = diffusion.split_model_output(both[:batch], x_t, var_type)
    uncond_mean, _ = diffusion.split_model_output(both[batch:], x_t, var_type)
    w = _per_example(scale, x_t)
    mean_part = (1.0 - w) * uncond_mean + w * cond_mean
    return mean_part if cond_var is None else jnp.concatenate([mean_part, cond_var], axis=-1)

  return guided


def conditional_model_fn(cond_model_fn: CondModelFn, labels: jnp.ndarray) -> ModelFn:
  """Binds labels [B] to a class-conditional model: plain conditional sampling, no guidance."""
  return lambda x_t, t: cond_model_fn(x_t, t, labels)


# ---------------------------------------------------------------------------------------------


def _check_labels(labels: jnp.ndarray, x_t: jnp.ndarray) -> None:
  if labels.shape != (x_t.shape[0],):
    raise ValueError(f"labels have shape {labels.shape}; expected ({x_t.shape[0]},), one class per "
                     f"example of x_t {x_t.shape}.")


def _per_example(value: float | jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
  """A scalar, or a [B] vector reshaped to broadcast against x [B, ...]."""
  value = jnp.asarray(value, jnp.float32)
  if value.ndim == 0:
    return value
  if value.shape != (x.shape[0],):
    raise ValueError(f"scale has shape {value.shape}; use a float or one value per example ({x.shape[0]},).")
  return value.reshape((-1,) + (1,) * (x.ndim - 1))


@dataclasses.dataclass(frozen=True)
class _Coefficients:
  """What the shifts need at the model's timesteps, each broadcast to [B, 1, ..., 1]."""
  sqrt_abar: jnp.ndarray
  sqrt_one_minus_abar: jnp.ndarray
  c1: jnp.ndarray | None        # x_0 coefficient of mu-tilde_t (integer steps only)
  step: jnp.ndarray | None      # int [B]: step of `schedule` at t (integer steps only)
  valid: jnp.ndarray            # 1 where the schedule visits t, NaN elsewhere

  @classmethod
  def at(cls, schedule: DiffusionSchedule, t: jnp.ndarray, shape, *, discrete: bool) -> "_Coefficients":
    chex.assert_rank(t, 1)
    if not jnp.issubdtype(t.dtype, jnp.integer):
      if discrete:
        raise ValueError("form='mean_shift' and mean_type='mean' are defined on the discrete chain, but "
                         f"the sampler called the model at float timesteps ({t.dtype}, e.g. DPM-Solver "
                         "between steps): use form='eps', or integer timesteps.")
      # Float t indexes the original chain; on a respaced schedule find the fractional step.
      tmap = schedule.timestep_map.astype(jnp.float32)
      u = jnp.interp(t.astype(jnp.float32), tmap, jnp.arange(tmap.shape[0], dtype=jnp.float32))
      abar = grids.alphas_cumprod_at(schedule, u).reshape((-1,) + (1,) * (len(shape) - 1))
      return cls(sqrt_abar=jnp.sqrt(abar), sqrt_one_minus_abar=jnp.sqrt(1.0 - abar), c1=None,
                 step=None, valid=jnp.ones_like(abar))
    step = jnp.clip(jnp.searchsorted(schedule.timestep_map, t), 0, schedule.num_timesteps - 1)
    valid = jnp.where(schedule.timestep_map[step] == t, 1.0, jnp.nan)
    step = step.astype(jnp.int32)
    return cls(sqrt_abar=extract(schedule.sqrt_alphas_cumprod, step, shape),
               sqrt_one_minus_abar=extract(schedule.sqrt_one_minus_alphas_cumprod, step, shape),
               c1=extract(schedule.posterior_mean_coef1, step, shape), step=step,
               valid=valid.reshape((-1,) + (1,) * (len(shape) - 1)))

  def x0_from_output(self, x_t: jnp.ndarray, mean_part: jnp.ndarray, mean_type: str) -> jnp.ndarray:
    """The model's x_0 prediction (DDPM Eq. 4 solved for x_0; v: Salimans & Ho 2022)."""
    if mean_type == "eps":
      return (x_t - self.sqrt_one_minus_abar * mean_part) / self.sqrt_abar
    if mean_type == "v":
      return self.sqrt_abar * x_t - self.sqrt_one_minus_abar * mean_part
    return mean_part

  def output_shift(self, dx0: jnp.ndarray, mean_type: str) -> jnp.ndarray:
    """The change of a `mean_type` output that moves its x_0 prediction by dx0 (x_t fixed)."""
    if mean_type == "eps":
      return -dx0 * self.sqrt_abar / self.sqrt_one_minus_abar
    if mean_type == "v":
      return -dx0 / self.sqrt_one_minus_abar
    if mean_type == "mean":
      return self.c1 * dx0
    return dx0
