"""Noise schedules and the precomputed coefficients of Gaussian diffusion.

Betas are built in float64 numpy; `DiffusionSchedule.from_betas` derives every coefficient
the DDPM equations need in float64 and stores them as float32 arrays in a pytree, so a
schedule can be passed through `jit`, `vmap` and `pmap` like any other argument.

Respacing (Improved DDPM, Sec. 4): `space_timesteps` chooses which of the original T steps
to keep and `respace` builds the schedule of the shorter chain from the kept alpha-bar
values. A schedule remembers, for each of its steps, the ORIGINAL timestep index in
`timestep_map`; the model is always called with that index (`model_timesteps`).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence, Union

import chex
import flax.struct
import jax.numpy as jnp
import numpy as np

BETA_SCHEDULES = ("linear", "quad", "const", "jsd", "warmup10", "warmup50", "cosine", "linear_scaled")


def _warmup_betas(beta_start: float, beta_end: float, num_timesteps: int, frac: float) -> np.ndarray:
  betas = np.full(num_timesteps, beta_end, dtype=np.float64)
  warmup = int(num_timesteps * frac)
  betas[:warmup] = np.linspace(beta_start, beta_end, warmup, dtype=np.float64)
  return betas


def betas_from_alpha_bar(alpha_bar: Callable[[float], float], num_timesteps: int,
                         max_beta: float = 0.999) -> np.ndarray:
  """Discretizes a continuous alpha-bar(s), s in [0, 1], into T betas (Improved DDPM, Eq. 17).

  beta_i = min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta).
  """
  s = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
  abar = np.array([alpha_bar(v) for v in s], dtype=np.float64)
  return np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)


def cosine_alpha_bar(s: float, offset: float = 0.008) -> float:
  """Improved DDPM's cosine schedule, Eq. 17: cos(((s + offset) / (1 + offset)) * pi/2)^2."""
  return math.cos((s + offset) / (1.0 + offset) * math.pi / 2) ** 2


def get_beta_schedule(name: str, num_timesteps: int, *, beta_start: float = 1e-4,
                      beta_end: float = 0.02) -> np.ndarray:
  """Returns the float64 betas of a named schedule.

  Args:
    name: one of `BETA_SCHEDULES`. `linear`, `quad`, `const`, `jsd`, `warmup10` and
      `warmup50` follow the DDPM paper's code; `cosine` is Improved DDPM's (s = 0.008,
      betas clipped at 0.999); `linear_scaled` is improved-diffusion's "linear", whose
      endpoints are multiplied by 1000 / T so any T gives the same curve as T = 1000.
    num_timesteps: T, the length of the chain.
    beta_start, beta_end: endpoints for the DDPM-code schedules (ignored by cosine/jsd).

  Returns:
    float64 array [T].
  """
  if num_timesteps < 1:
    raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}.")
  if name == "linear":
    betas = np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
  elif name == "quad":
    betas = np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float64) ** 2
  elif name == "const":
    betas = np.full(num_timesteps, beta_end, dtype=np.float64)
  elif name == "jsd":  # 1/T, 1/(T-1), ..., 1: the Sohl-Dickstein et al. schedule.
    betas = 1.0 / np.linspace(num_timesteps, 1, num_timesteps, dtype=np.float64)
  elif name == "warmup10":
    betas = _warmup_betas(beta_start, beta_end, num_timesteps, 0.1)
  elif name == "warmup50":
    betas = _warmup_betas(beta_start, beta_end, num_timesteps, 0.5)
  elif name == "cosine":
    betas = betas_from_alpha_bar(cosine_alpha_bar, num_timesteps)
  elif name == "linear_scaled":
    scale = 1000.0 / num_timesteps
    betas = np.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=np.float64)
  else:
    raise ValueError(f"Unknown beta schedule name={name!r}; valid names: {', '.join(BETA_SCHEDULES)}.")
  assert betas.shape == (num_timesteps,)
  return betas


@flax.struct.dataclass
class DiffusionSchedule:
  """Every per-timestep coefficient of a Gaussian diffusion, float32 arrays of length T.

  Build it with `DiffusionSchedule.from_betas`. Names follow the DDPM code; abar_t is
  alphas_cumprod[t] = prod_{s <= t} (1 - beta_s).
  """
  betas: jnp.ndarray
  alphas_cumprod: jnp.ndarray
  alphas_cumprod_prev: jnp.ndarray            # abar_{t-1}, with abar_{-1} = 1
  sqrt_alphas_cumprod: jnp.ndarray
  sqrt_one_minus_alphas_cumprod: jnp.ndarray
  log_one_minus_alphas_cumprod: jnp.ndarray
  sqrt_recip_alphas_cumprod: jnp.ndarray      # 1 / sqrt(abar_t)
  sqrt_recipm1_alphas_cumprod: jnp.ndarray    # sqrt(1 / abar_t - 1)
  posterior_variance: jnp.ndarray             # beta-tilde_t (DDPM Eq. 7); 0 at t = 0
  posterior_log_variance_clipped: jnp.ndarray  # log beta-tilde_t, entry 0 replaced by entry 1
  posterior_mean_coef1: jnp.ndarray           # multiplies x_0 in mu-tilde_t (DDPM Eq. 7)
  posterior_mean_coef2: jnp.ndarray           # multiplies x_t in mu-tilde_t
  log_betas: jnp.ndarray                      # upper end of learned_range (Improved DDPM Eq. 15)
  fixedlarge_variance: jnp.ndarray            # [beta-tilde_1, beta_1, ..., beta_{T-1}]
  fixedlarge_log_variance: jnp.ndarray
  timestep_map: jnp.ndarray                   # int32: original timestep of each step
  num_timesteps: int = flax.struct.field(pytree_node=False)

  @classmethod
  def from_betas(cls, betas: np.ndarray, timestep_map: Sequence[int] | None = None) -> "DiffusionSchedule":
    """Precomputes all coefficients in float64 from `betas` [T] and stores them as float32.

    Args:
      betas: the forward-process variances, each in (0, 1].
      timestep_map: for a respaced schedule, the original timestep index of each step (the
        index the model was trained with). Defaults to 0..T-1.
    """
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size < 1:
      raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}.")
    if not np.all((betas > 0) & (betas <= 1)):
      raise ValueError("betas must lie in (0, 1]; got values outside that range.")
    num_timesteps = betas.shape[0]
    if timestep_map is None:
      timestep_map = np.arange(num_timesteps)
    timestep_map = np.asarray(timestep_map)
    if timestep_map.shape != (num_timesteps,):
      raise ValueError(f"timestep_map must have shape ({num_timesteps},), got {timestep_map.shape}.")

    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.append(1.0, abar[:-1])
    posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
    # beta-tilde_0 = 0; its log is "clipped" by repeating beta-tilde_1 (for T = 1 nothing
    # better exists than beta_0 itself).
    clip_value = posterior_variance[1] if num_timesteps > 1 else betas[0]
    posterior_log_variance_clipped = np.log(np.append(clip_value, posterior_variance[1:]))
    # DDPM's sigma_t^2 = beta_t, with the t = 0 entry set to beta-tilde_1 as in the reference
    # codes (a better decoder variance than beta_0 for the L0 term).
    fixedlarge_variance = np.append(clip_value, betas[1:])
    coefs = dict(
        betas=betas,
        alphas_cumprod=abar,
        alphas_cumprod_prev=abar_prev,
        sqrt_alphas_cumprod=np.sqrt(abar),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - abar),
        log_one_minus_alphas_cumprod=np.log(1.0 - abar),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / abar),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / abar - 1.0),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=posterior_log_variance_clipped,
        posterior_mean_coef1=betas * np.sqrt(abar_prev) / (1.0 - abar),
        posterior_mean_coef2=(1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
        log_betas=np.log(betas),
        fixedlarge_variance=fixedlarge_variance,
        fixedlarge_log_variance=np.log(fixedlarge_variance),
    )
    arrays = {k: jnp.asarray(v.astype(np.float32)) for k, v in coefs.items()}
    return cls(**arrays, timestep_map=jnp.asarray(timestep_map.astype(np.int32)),
               num_timesteps=num_timesteps)


def extract(a: jnp.ndarray, t: jnp.ndarray, x_shape: Sequence[int]) -> jnp.ndarray:
  """Gathers a[t] for a batch of timesteps and broadcasts it against `x_shape`.

  Args:
    a: coefficient table [T].
    t: int timesteps [B].
    x_shape: the shape [B, ...] to broadcast to.

  Returns:
    [B, 1, ..., 1] with len(x_shape) dims.
  """
  chex.assert_rank(t, 1)
  if t.shape[0] != x_shape[0]:
    raise ValueError(f"t has batch size {t.shape[0]} but x has batch size {x_shape[0]} (shape {tuple(x_shape)}).")
  return a[t].reshape((t.shape[0],) + (1,) * (len(x_shape) - 1))


def model_timesteps(schedule: DiffusionSchedule, t: jnp.ndarray) -> jnp.ndarray:
  """The ORIGINAL timestep indices to show the model for steps `t` of `schedule`."""
  return schedule.timestep_map[t]


def space_timesteps(num_timesteps: int, spec: Union[str, Sequence[int]]) -> np.ndarray:
  """Chooses which of T timesteps to keep; the same choices as improved-diffusion's respace.py.

  Args:
    num_timesteps: T of the original chain.
    spec: either a list of per-section counts (or "10,10,10"): T is cut into that many
      nearly equal sections and `count` evenly spaced steps, first and last included, are
      taken from each (rounded to the nearest index); or "ddimN": the stride-k grid
      0, k, 2k, ... with exactly N entries for the smallest such k. Note that "ddimN" starts
      at 0 and may not contain T-1; our own samplers' default grids always contain T-1.

  Returns:
    Sorted int64 array of the kept timesteps.
  """
  if isinstance(spec, str):
    if spec.startswith("ddim"):
      count = int(spec[len("ddim"):])
      for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == count:
          return np.arange(0, num_timesteps, stride)
      raise ValueError(f"spec={spec!r}: no integer stride gives exactly {count} steps out of {num_timesteps}.")
    try:
      spec = [int(c) for c in spec.split(",")]
    except ValueError:
      raise ValueError(f"spec={spec!r} must be 'ddimN' or comma-separated section counts like '10,10,10'.") from None
  counts = list(spec)
  base, extra = divmod(num_timesteps, len(counts))
  kept, start = [], 0
  for i, count in enumerate(counts):
    size = base + (1 if i < extra else 0)
    if count > size:
      raise ValueError(f"spec section {i} asks for {count} steps but the section holds only {size}.")
    stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
    # The position is accumulated by repeated addition and rounded with Python's round (half to
    # even), exactly as the reference grids were made; j * stride can round differently.
    position = 0.0
    for _ in range(count):
      kept.append(start + round(position))
      position += stride
    start += size
  return np.array(sorted(set(kept)), dtype=np.int64)


def respace(schedule: Union[DiffusionSchedule, np.ndarray], use_timesteps: Sequence[int]
            ) -> tuple[DiffusionSchedule, np.ndarray]:
  """Builds the shorter chain that visits only `use_timesteps` (Improved DDPM, Sec. 4).

  The kept alpha-bar values are exactly those of the original chain; the new betas follow
  from them: beta'_i = 1 - abar[k_i] / abar[k_{i-1}].

  Args:
    schedule: the original chain, either its float64 betas [T] (exact) or a
      `DiffusionSchedule` (its float32 alpha-bars are used, so betas carry ~1e-7 absolute
      error; pass the betas when that matters).
    use_timesteps: original indices to keep (any order; duplicates ignored).

  Returns:
    (respaced schedule, timestep_map int64 [T']) where timestep_map[i] is the original index
    of step i, also stored in the schedule so the model sees original timesteps.
  """
  if isinstance(schedule, DiffusionSchedule):
    abar = np.asarray(schedule.alphas_cumprod, dtype=np.float64)
    base_map = np.asarray(schedule.timestep_map)
  else:
    abar = np.cumprod(1.0 - np.asarray(schedule, dtype=np.float64))
    base_map = np.arange(abar.shape[0])
  keep = np.array(sorted(set(int(k) for k in use_timesteps)), dtype=np.int64)
  if keep.size == 0 or keep[0] < 0 or keep[-1] >= abar.shape[0]:
    raise ValueError(f"use_timesteps must be non-empty indices in [0, {abar.shape[0]}), got {use_timesteps}.")
  kept_abar = abar[keep]
  betas = 1.0 - kept_abar / np.append(1.0, kept_abar[:-1])
  timestep_map = base_map[keep]
  return DiffusionSchedule.from_betas(betas, timestep_map=timestep_map), timestep_map
