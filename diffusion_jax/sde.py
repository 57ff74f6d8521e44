"""The SDE view of diffusion models (Song et al. 2021, "Score-Based Generative Modeling through SDEs").

A forward SDE dx = f(x, t) dt + g(t) dw on t in [0, 1] perturbs data x(0) into noise x(1). Every
SDE here has a Gaussian perturbation kernel x(t) = a(t) x(0) + sigma(t) z, so its score
grad_x log p_t(x | x(0)) = -z / sigma(t) is known in closed form, and the reverse-time SDE

  dx = [f(x, t) - g(t)^2 grad_x log p_t(x)] dt + g(t) dw-bar                     (Song Eq. 6)

(and its probability-flow ODE, with 1/2 g^2 and no noise, Eq. 13) needs only a score model.

  VPSDE     f = -beta(t) x / 2, g = sqrt(beta(t)), beta linear in t: the continuous DDPM (Eq. 11).
  subVPSDE  as VP but g^2 = beta(t) (1 - exp(-2 int_0^t beta)): a smaller variance (Eq. 12).
  VESDE     f = 0, g = sigma(t) sqrt(2 log(sigma_max / sigma_min)), sigma(t) geometric: the
            continuous NCSN (Eq. 9).
  PiecewiseVPSDE  the VP SDE whose marginals hit a discrete DDPM schedule's alpha-bar exactly
            (any schedule: cosine, quad, ...), with a piecewise-constant beta(t).

Time conventions. Each SDE also has N discrete steps (its discretization, Song App. B-C):

  VP-type: step n (0-based, DDPM's timestep index) sits at t_n = (n + 1) / N, so t = 0 is the
    data and step N-1 is t = 1. DDPM's step n maps x_{n-1} -> x_n over [n/N, (n+1)/N].
  VE: step n sits at t_n = n / (N - 1), so sigma(t_n) are exactly the N geometric levels
    sigma_min ... sigma_max of NCSN (NCSN's level i = 1..L, largest first, is our step L - i).

`time_to_step(t)` is the fractional step of t (the time input of a continuous-time model, on the
same scale as a discrete model's integer steps, so the sinusoidal U-Net embedding sees the same
range; for VE it is an affine function of log sigma(t)); `step_index(t)` rounds it.

What is exact about DDPM <-> VP: `VPSDE(0.1, 20, 1000).discrete_betas` is DDPM's linear schedule
1e-4..0.02 (the discretization, Song Eq. 44, is DDPM's chain), so the discrete marginals
(`step_marginal_coefs`) equal the schedule's alpha-bar and the ancestral predictor equals DDPM
ancestral sampling. The continuous marginal of that VPSDE, exp(-int beta), is NOT the discrete
alpha-bar: prod(1 - beta_i) differs from exp(-sum beta_i) by O(sum beta_i^2), up to 0.068 in
log alpha-bar (4.9% in sigma at t_0 = 1/N) for the linear schedule. `PiecewiseVPSDE` is exact
at every step for every schedule.

Shapes: x is [B, ...]; t is a float scalar or [B]. Per-example coefficients are returned
broadcastable against x ([B, 1, ..., 1]) by `sde`, `marginal_prob` and `discretize`, and as
[B] by `marginal_coefs` / `step_marginal_coefs`.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
from typing import Callable, Literal, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import diffusion
from diffusion_jax.diffusion import VarType, check_option
from diffusion_jax.schedules import DiffusionSchedule

ScoreFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
ModelFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
Prediction = Literal["eps", "x0", "v", "score"]
TimeInput = Literal["discrete", "continuous"]
PREDICTIONS: tuple[str, ...] = ("eps", "x0", "v", "score")
TIME_INPUTS: tuple[str, ...] = ("discrete", "continuous")


def _static(default):
  return flax.struct.field(pytree_node=False, default=default)


def batch_time(x: jnp.ndarray, t) -> jnp.ndarray:
  """t (scalar or [B]) as float32 [B] matching the batch of x."""
  t = jnp.asarray(t, jnp.float32)
  if t.ndim == 0:
    return jnp.broadcast_to(t, x.shape[:1])
  if t.shape != x.shape[:1]:
    raise ValueError(f"t has shape {t.shape}; expected () or ({x.shape[0]},) for x of shape {x.shape}.")
  return t


def expand(v: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
  """[B] -> [B, 1, ..., 1], broadcastable against x [B, ...]."""
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def _sum_flat(x: jnp.ndarray) -> jnp.ndarray:
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def _standard_normal_logp(z: jnp.ndarray, scale: float = 1.0) -> jnp.ndarray:
  dim = math.prod(z.shape[1:])
  return -0.5 * dim * math.log(2 * math.pi * scale**2) - 0.5 * _sum_flat(jnp.square(z)) / scale**2


class SDE(abc.ABC):
  """A forward SDE on t in [0, 1] with a Gaussian kernel x(t) = a(t) x(0) + sigma(t) z and N steps."""

  N: int

  # --- the continuous process ---------------------------------------------------------------
  @abc.abstractmethod
  def sde(self, x: jnp.ndarray, t) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(drift f(x, t) [B, ...], diffusion g(t) [B, 1, ..., 1])."""

  @abc.abstractmethod
  def marginal_coefs(self, t) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(a(t), sigma(t)) of the perturbation kernel p_t(x | x0) = N(a x0, sigma^2 I), each like t."""

  def marginal_prob(self, x: jnp.ndarray, t) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Mean a(t) x [B, ...] and std sigma(t) [B, 1, ..., 1] of p_t(x(t) | x(0) = x)."""
    a, std = self.marginal_coefs(batch_time(x, t))
    return expand(a, x) * x, expand(std, x)

  @abc.abstractmethod
  def prior_sampling(self, key: jax.Array, shape: Sequence[int]) -> jnp.ndarray:
    """A draw from the prior p_1 that sampling starts from, [*shape]."""

  @abc.abstractmethod
  def prior_logp(self, z: jnp.ndarray) -> jnp.ndarray:
    """log p_1(z) [B] in nats for z [B, ...]."""

  # --- the discrete steps -------------------------------------------------------------------
  @abc.abstractmethod
  def step_to_time(self, n):
    """t of discrete step n (numpy or jnp, any shape)."""

  @abc.abstractmethod
  def time_to_step(self, t):
    """The fractional step of t, the inverse of `step_to_time` (a continuous model's time input)."""

  def step_index(self, t) -> jnp.ndarray:
    """The nearest discrete step of t, int32 in [0, N)."""
    return jnp.clip(jnp.round(self.time_to_step(jnp.asarray(t, jnp.float32))), 0, self.N - 1).astype(jnp.int32)

  def step_times(self) -> np.ndarray:
    """t of every discrete step, float64 [N], increasing."""
    return np.asarray(self.step_to_time(np.arange(self.N, dtype=np.float64)), np.float64)

  def step_marginal_coefs(self, n: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(a, sigma) [B] of the discrete chain at int steps n [B]; by default the continuous ones."""
    return self.marginal_coefs(self.step_to_time(jnp.asarray(n, jnp.float32)))

  def discretize(self, x: jnp.ndarray, t) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The forward step into the step nearest t: x_n = x_{n-1} + f + G z (Song Eq. 42).

    Default: Euler-Maruyama over one step spacing dt, f = f(x, t) dt, G = g(t) sqrt(dt).

    Returns:
      (f [B, ...], G [B, 1, ..., 1]).
    """
    dt = float(self.step_to_time(1.0) - self.step_to_time(0.0))
    drift, diffusion_coef = self.sde(x, t)
    return drift * dt, diffusion_coef * math.sqrt(dt)

  def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
    """The reverse-time SDE (Song Eq. 6) or, with probability_flow, the ODE of Eq. 13."""
    return ReverseSDE(self, score_fn, probability_flow)


@dataclasses.dataclass(frozen=True)
class ReverseSDE:
  """dx = [f - c g^2 s(x, t)] dt + g' dw-bar, run from t = 1 to 0 (dt < 0).

  c = 1, g' = g for the reverse SDE; c = 1/2, g' = 0 for the probability-flow ODE. `sde` and
  `discretize` return the same tuples as the forward SDE's, in forward-time orientation: a
  reverse step is x <- x - f_rev + G_rev z (`discretize`) or x <- x + drift dt + g sqrt(-dt) z
  with dt < 0 (`sde`).
  """
  forward: SDE
  score_fn: ScoreFn
  probability_flow: bool = False

  @property
  def N(self) -> int:
    return self.forward.N

  def _coef(self) -> float:
    return 0.5 if self.probability_flow else 1.0

  def sde(self, x: jnp.ndarray, t) -> tuple[jnp.ndarray, jnp.ndarray]:
    t = batch_time(x, t)
    drift, g = self.forward.sde(x, t)
    drift = drift - self._coef() * jnp.square(g) * self.score_fn(x, t)
    return drift, jnp.zeros_like(g) if self.probability_flow else g

  def discretize(self, x: jnp.ndarray, t) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The reverse of the forward step (Song Eq. 45): f_rev = f - c G^2 s, G_rev = G (0 for the ODE)."""
    t = batch_time(x, t)
    f, big_g = self.forward.discretize(x, t)
    f = f - self._coef() * jnp.square(big_g) * self.score_fn(x, t)
    return f, jnp.zeros_like(big_g) if self.probability_flow else big_g


# ---------------------------------------------------------------------------------------------
# Variance-preserving SDEs.


class VPChainSDE(SDE):
  """A VP SDE whose N-step chain is a DDPM chain: the base of `VPSDE` and `PiecewiseVPSDE`.

  f = -beta(t) x / 2, g = sqrt(beta(t)), a = exp(-B(t)/2), sigma^2 = 1 - exp(-B(t)), B = int beta.
  The discrete chain is DDPM's with `discrete_betas` (`discrete_schedule`); step n at t = (n + 1) / N.
  """

  @abc.abstractmethod
  def beta(self, t: jnp.ndarray) -> jnp.ndarray:
    """beta(t), like t."""

  @abc.abstractmethod
  def integrated_beta(self, t: jnp.ndarray) -> jnp.ndarray:
    """B(t) = int_0^t beta(s) ds, like t."""

  @property
  @abc.abstractmethod
  def discrete_schedule(self) -> DiffusionSchedule:
    """The DDPM schedule of the N-step chain (its tables are the discrete marginals)."""

  @property
  def discrete_betas(self) -> jnp.ndarray:
    """The N betas of the discrete chain, float32 [N]."""
    return self.discrete_schedule.betas

  @property
  def discrete_alphas_cumprod(self) -> jnp.ndarray:
    """prod_{i <= n} (1 - beta_i), float32 [N] (computed in float64)."""
    return self.discrete_schedule.alphas_cumprod

  def sde(self, x, t):
    beta = expand(self.beta(batch_time(x, t)), x)
    return -0.5 * beta * x, jnp.sqrt(beta)

  def marginal_coefs(self, t):
    big_b = self.integrated_beta(jnp.asarray(t, jnp.float32))
    return jnp.exp(-0.5 * big_b), jnp.sqrt(-jnp.expm1(-big_b))

  def prior_sampling(self, key, shape):
    return jax.random.normal(key, tuple(shape))

  def prior_logp(self, z):
    return _standard_normal_logp(z)

  def step_to_time(self, n):
    return (n + 1.0) / self.N

  def time_to_step(self, t):
    return t * self.N - 1.0

  def step_marginal_coefs(self, n):
    schedule = self.discrete_schedule
    return schedule.sqrt_alphas_cumprod[n], schedule.sqrt_one_minus_alphas_cumprod[n]

  def discretize(self, x, t):
    """DDPM's forward step x_n = sqrt(1 - beta_n) x_{n-1} + sqrt(beta_n) z (Song Eq. 44)."""
    beta = expand(self.discrete_betas[self.step_index(batch_time(x, t))], x)
    # sqrt(1 - beta) - 1 without its float32 cancellation at small beta.
    return -beta / (1.0 + jnp.sqrt(1.0 - beta)) * x, jnp.sqrt(beta)

  def to_schedule(self) -> DiffusionSchedule:
    """The DDPM schedule of the discrete chain (T = N, betas = `discrete_betas`)."""
    return self.discrete_schedule


def _linear_betas(beta_min: float, beta_max: float, n: int) -> np.ndarray:
  # Song et al. App. C: beta_i = beta-bar_min / N + (i - 1) / (N - 1) (beta-bar_max - beta-bar_min) / N.
  return np.linspace(beta_min / n, beta_max / n, n, dtype=np.float64)


@functools.lru_cache(maxsize=16)
def _linear_schedule(beta_min: float, beta_max: float, n: int) -> DiffusionSchedule:
  return DiffusionSchedule.from_betas(_linear_betas(beta_min, beta_max, n))


@flax.struct.dataclass
class VPSDE(VPChainSDE):
  """The VP SDE with beta(t) = beta_min + t (beta_max - beta_min) (Song Eq. 11, App. C).

  Its N-step chain is DDPM's with betas linspace(beta_min / N, beta_max / N, N): the defaults
  are DDPM's linear 1e-4..0.02 schedule with T = 1000 (see the module docstring for what is and
  is not exact about that map).
  """
  beta_min: float = _static(0.1)
  beta_max: float = _static(20.0)
  N: int = _static(1000)

  def __post_init__(self):
    if not 0 < self.beta_min <= self.beta_max:
      raise ValueError(f"need 0 < beta_min <= beta_max, got beta_min={self.beta_min}, beta_max={self.beta_max}.")
    if not self.beta_max < self.N:
      raise ValueError(f"N={self.N} steps give the discrete chain beta_max / N = {self.beta_max / self.N:g} >= 1; "
                       f"use N > beta_max = {self.beta_max:g}.")

  def beta(self, t):
    return self.beta_min + t * (self.beta_max - self.beta_min)

  def integrated_beta(self, t):
    return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * jnp.square(t)

  @property
  def discrete_schedule(self):
    return _linear_schedule(self.beta_min, self.beta_max, self.N)

  @classmethod
  def from_schedule(cls, schedule: DiffusionSchedule | np.ndarray, *, rtol: float = 1e-6) -> "VPSDE":
    """The VPSDE whose discrete chain is a LINEAR DDPM schedule: beta_min = N beta_0, beta_max = N beta_{N-1}.

    Args:
      schedule: a `DiffusionSchedule` on its original steps, or its float64 betas [N] (exact;
        a schedule's float32 betas give beta_min/max to float32 accuracy).
      rtol: how close to linear the betas must be.

    Raises:
      ValueError for a non-linear or respaced schedule: use `PiecewiseVPSDE.from_schedule`.
    """
    betas = _original_betas(schedule)
    n = betas.shape[0]
    linear = np.linspace(betas[0], betas[-1], n)
    if not np.allclose(betas, linear, rtol=rtol, atol=0.0):
      raise ValueError("the schedule's betas are not linear in the step, so no VPSDE has this chain; "
                       "use PiecewiseVPSDE.from_schedule(schedule), exact for any schedule.")
    return cls(beta_min=float(betas[0] * n), beta_max=float(betas[-1] * n), N=n)


def _original_betas(schedule: DiffusionSchedule | np.ndarray) -> np.ndarray:
  if isinstance(schedule, DiffusionSchedule):
    if not np.array_equal(np.asarray(schedule.timestep_map), np.arange(schedule.num_timesteps)):
      raise ValueError("the schedule is respaced (its timestep_map is not 0..T-1); build the SDE "
                       "from the original schedule the model was trained with.")
    return np.asarray(schedule.betas, np.float64)
  betas = np.asarray(schedule, np.float64)
  if betas.ndim != 1 or betas.size < 1 or not np.all((betas > 0) & (betas < 1)):
    raise ValueError(f"betas must be a non-empty 1-D array in (0, 1), got shape {betas.shape}.")
  return betas


@flax.struct.dataclass
class PiecewiseVPSDE(VPChainSDE):
  """The VP SDE of any discrete DDPM schedule, exact at every step: a(t_n)^2 = alpha-bar_n.

  log alpha-bar(t) is piecewise linear between the nodes t = 0 (log 1 = 0) and t_n = (n + 1) / N
  (log alpha-bar_n), so beta(t) = -d log alpha-bar / dt is constant on each step's interval,
  beta(t) = -N log(1 - beta_n) for t in (n / N, (n + 1) / N]; its discretization is the
  schedule's own DDPM chain. Build it with `PiecewiseVPSDE.from_schedule`.

  Attributes:
    schedule: the DDPM schedule (its float32 tables serve the discrete steps unchanged).
    log_alphas_cumprod_nodes: [0, log alpha-bar_0, ..., log alpha-bar_{N-1}], float32 [N + 1].
    rates: beta(t) on each step's interval, -N log(1 - beta_n), float32 [N].
  """
  schedule: DiffusionSchedule
  log_alphas_cumprod_nodes: jnp.ndarray
  rates: jnp.ndarray
  N: int = _static(1000)

  @classmethod
  def from_schedule(cls, schedule: DiffusionSchedule | np.ndarray) -> "PiecewiseVPSDE":
    """From a `DiffusionSchedule` on its original steps, or its float64 betas [N]."""
    betas = _original_betas(schedule)
    if not isinstance(schedule, DiffusionSchedule):
      schedule = DiffusionSchedule.from_betas(betas)
    n = betas.shape[0]
    log_abar = np.cumsum(np.log1p(-betas))
    return cls(schedule=schedule,
               log_alphas_cumprod_nodes=jnp.asarray(np.append(0.0, log_abar), jnp.float32),
               rates=jnp.asarray(-n * np.log1p(-betas), jnp.float32), N=n)

  def beta(self, t):
    # The interval (n/N, (n+1)/N] a reverse-time step at t crosses next; a node t = (n+1)/N
    # (N t rounded either way in float32) belongs to the interval below it.
    segment = jnp.ceil(t * self.N * (1.0 - 1e-6)) - 1.0
    return self.rates[jnp.clip(segment, 0, self.N - 1).astype(jnp.int32)]

  def integrated_beta(self, t):
    nodes = jnp.linspace(0.0, 1.0, self.N + 1, dtype=jnp.float32)
    return -jnp.interp(t, nodes, self.log_alphas_cumprod_nodes)

  @property
  def discrete_schedule(self):
    return self.schedule


@flax.struct.dataclass
class subVPSDE(SDE):  # noqa: N801  (the paper's name)
  """The sub-VP SDE (Song Eq. 12): f = -beta(t) x / 2, g^2 = beta(t) (1 - exp(-2 B(t))).

  Same linear beta(t) as `VPSDE`; a = exp(-B/2) as for VP but sigma = 1 - exp(-B) (not its
  square root), so sigma^2 <= the VP variance at every t. Discretized by Euler-Maruyama over
  steps at t_n = (n + 1) / N.
  """
  beta_min: float = _static(0.1)
  beta_max: float = _static(20.0)
  N: int = _static(1000)

  def __post_init__(self):
    VPSDE.__post_init__(self)

  beta = VPSDE.beta
  integrated_beta = VPSDE.integrated_beta

  @property
  def discrete_betas(self) -> jnp.ndarray:
    """The linear betas of the VP chain with the same beta(t) (Langevin's alpha_i uses them)."""
    return jnp.asarray(_linear_betas(self.beta_min, self.beta_max, self.N), jnp.float32)

  def sde(self, x, t):
    t = batch_time(x, t)
    beta = self.beta(t)
    g2 = beta * -jnp.expm1(-2.0 * self.integrated_beta(t))
    return -0.5 * expand(beta, x) * x, expand(jnp.sqrt(g2), x)

  def marginal_coefs(self, t):
    big_b = self.integrated_beta(jnp.asarray(t, jnp.float32))
    return jnp.exp(-0.5 * big_b), -jnp.expm1(-big_b)

  def prior_sampling(self, key, shape):
    return jax.random.normal(key, tuple(shape))

  def prior_logp(self, z):
    return _standard_normal_logp(z)

  step_to_time = VPChainSDE.step_to_time
  time_to_step = VPChainSDE.time_to_step


# ---------------------------------------------------------------------------------------------
# Variance-exploding SDE.


@flax.struct.dataclass
class VESDE(SDE):
  """The VE SDE (Song Eq. 9, App. C): sigma(t) = sigma_min (sigma_max / sigma_min)^t, f = 0,
  g(t) = sigma(t) sqrt(2 log(sigma_max / sigma_min)).

  The kernel is p_t(x | x0) = N(x0, sigma(t)^2 I): as in NCSN and Song et al., t = 0 stands for
  the data perturbed by sigma_min (the SDE itself adds sigma(t)^2 - sigma_min^2 to x(0)). The
  prior is N(0, sigma_max^2 I). The N-step chain is NCSN's: geometric levels
  sigma_n = sigma(n / (N - 1)), step n adding N(0, sigma_n^2 - sigma_{n-1}^2), sigma_{-1} = 0.
  The defaults (0.01, 50) are Song et al.'s CIFAR-10 values for data in [0, 1]; for data in
  [-1, 1] the same process has twice the sigmas.
  """
  sigma_min: float = _static(0.01)
  sigma_max: float = _static(50.0)
  N: int = _static(1000)

  def __post_init__(self):
    if not 0 < self.sigma_min < self.sigma_max:
      raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}.")
    if self.N < 2:
      raise ValueError(f"N={self.N} must be >= 2 (the levels sigma_min and sigma_max).")

  @property
  def log_ratio(self) -> float:
    return math.log(self.sigma_max / self.sigma_min)

  def sigma(self, t):
    return self.sigma_min * jnp.exp(t * self.log_ratio)

  @property
  def discrete_sigmas(self) -> jnp.ndarray:
    """The N levels, float32 [N], ascending: sigma_0 = sigma_min, sigma_{N-1} = sigma_max."""
    return jnp.asarray(np.exp(np.linspace(math.log(self.sigma_min), math.log(self.sigma_max), self.N)),
                       jnp.float32)

  def sde(self, x, t):
    g = self.sigma(batch_time(x, t)) * math.sqrt(2.0 * self.log_ratio)
    return jnp.zeros_like(x), expand(g, x)

  def marginal_coefs(self, t):
    sigma = self.sigma(jnp.asarray(t, jnp.float32))
    return jnp.ones_like(sigma), sigma

  def prior_sampling(self, key, shape):
    return self.sigma_max * jax.random.normal(key, tuple(shape))

  def prior_logp(self, z):
    return _standard_normal_logp(z, self.sigma_max)

  def step_to_time(self, n):
    return n / (self.N - 1.0)

  def time_to_step(self, t):
    return t * (self.N - 1.0)

  def step_marginal_coefs(self, n):
    sigma = self.discrete_sigmas[n]
    return jnp.ones_like(sigma), sigma

  def discretize(self, x, t):
    """NCSN's step x_n = x_{n-1} + sqrt(sigma_n^2 - sigma_{n-1}^2) z (Song Eq. 42), sigma_{-1} = 0."""
    n = self.step_index(batch_time(x, t))
    sigmas = self.discrete_sigmas
    prev = jnp.where(n == 0, 0.0, sigmas[jnp.maximum(n - 1, 0)])
    return jnp.zeros_like(x), expand(jnp.sqrt(jnp.square(sigmas[n]) - jnp.square(prev)), x)


# ---------------------------------------------------------------------------------------------
# Scores from models.


def score_from_eps(eps: jnp.ndarray, std: jnp.ndarray) -> jnp.ndarray:
  """grad log p_t(x) = -eps / sigma: the score of a noise prediction (std broadcastable)."""
  return -eps / std


def eps_from_score(score: jnp.ndarray, std: jnp.ndarray) -> jnp.ndarray:
  """eps = -sigma * score, the inverse of `score_from_eps`."""
  return -std * score


def score_fn_from_model(model_fn: ModelFn, sde: SDE, *, prediction: Prediction = "eps",
                        time_input: TimeInput = "discrete", var_type: VarType = "fixedlarge"
                        ) -> ScoreFn:
  """score_fn(x, t) for continuous t from a network's model_fn, so any model runs on any sampler.

  Args:
    model_fn: model_fn(x [B, ...], time [B]) -> output [B, ...] (2C channels with a learned variance).
    sde: the process the model was trained on (for a DDPM model, `VPSDE.from_schedule` or
      `PiecewiseVPSDE.from_schedule` of its schedule).
    prediction: what the model outputs: "eps" (noise; score = -eps / sigma), "x0" (the clean
      data; score = (a x0 - x) / sigma^2), "v" (Salimans & Ho's v = a eps - sigma x0, VP-type
      SDEs only) or "score" (the score itself, e.g. NCSN).
    time_input: what the model was trained to see. "discrete": the int32 step
      `sde.step_index(t)` (DDPM's timestep index, NCSN's level), with the discrete chain's
      coefficients `sde.step_marginal_coefs` (exactly the DDPM schedule's alpha-bar);
      "continuous": the fractional step `sde.time_to_step(t)` (float32), with the SDE's
      continuous `marginal_coefs(t)`.
    var_type: the model's variance output (config.diffusion.var_type); a learned variance's
      channels are dropped.

  Returns:
    score_fn(x [B, ...], t scalar or [B]) -> score [B, ...].
  """
  check_option("prediction", prediction, PREDICTIONS)
  check_option("time_input", time_input, TIME_INPUTS)
  check_option("var_type", var_type, diffusion.VAR_TYPES)
  if prediction == "v" and not isinstance(sde, VPChainSDE):
    raise ValueError(f"prediction='v' needs a variance-preserving SDE (a^2 + sigma^2 = 1); got "
                     f"{type(sde).__name__}. Use 'eps', 'x0' or 'score'.")

  def score_fn(x, t):
    t = batch_time(x, t)
    if time_input == "discrete":
      n = sde.step_index(t)
      output, (a, std) = model_fn(x, n), sde.step_marginal_coefs(n)
    else:
      output, (a, std) = model_fn(x, sde.time_to_step(t)), sde.marginal_coefs(t)
    output, _ = diffusion.split_model_output(output, x, var_type)
    a, std = expand(a, x), expand(std, x)
    if prediction == "score":
      return output
    if prediction == "eps":
      return score_from_eps(output, std)
    if prediction == "x0":
      return (a * output - x) / jnp.square(std)
    return score_from_eps(std * x + a * output, std)  # "v": eps = sigma x + a v

  return score_fn


def denoise(score_fn: ScoreFn, sde: SDE, x: jnp.ndarray, t) -> jnp.ndarray:
  """Tweedie's formula E[x0 | x(t)] = (x + sigma(t)^2 s(x, t)) / a(t), [B, ...]."""
  t = batch_time(x, t)
  a, std = (expand(c, x) for c in sde.marginal_coefs(t))
  return (x + jnp.square(std) * score_fn(x, t)) / a
