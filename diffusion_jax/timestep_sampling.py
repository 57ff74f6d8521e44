"""Which timesteps a training batch sees: uniform or importance sampling (Improved DDPM, Sec. 3.3).

Training draws `t` for every example. Uniform sampling is the DDPM default. Nichol & Dhariwal
observe that L_vlb has very different magnitudes across t, so a uniformly sampled estimate of it
is noisy; they sample instead with

  p_t ∝ sqrt(E[L_t^2]),    sum_t p_t = 1,    L_vlb = E_{t ~ p_t}[L_t / p_t] / T        (Sec. 3.3)

where E[L_t^2] is estimated from the last 10 losses seen at each t, and t is drawn uniformly
until every t has 10 of them. As in the paper's code the distribution is mixed with a little of
the uniform one, p <- (1 - u) p + u / T, so that no timestep is starved.

The weights returned with the timesteps are w_t = 1 / (T p_t); scaling each example's loss by
its weight keeps the objective unbiased: E_{t~p}[w_t L_t] = (1 / T) sum_t L_t, the uniform mean.

Everything here is pure and has fixed shapes, so it runs inside a jitted/pmapped train step.
The history (`LossHistory`) is a pytree that lives in the TrainState and is checkpointed with it.
Under `pmap`, `gather_and_update` gathers the per-device timesteps and losses over the batch axis
and applies the same update on every replica, so the replicas' histories stay identical.
"""

from __future__ import annotations

from typing import Literal

import chex
import flax.struct
import jax
import jax.numpy as jnp

TIMESTEP_SAMPLERS = ("uniform", "loss_second_moment")
TimestepSampler = Literal["uniform", "loss_second_moment"]


@flax.struct.dataclass
class LossHistory:
  """The last `history_per_term` training losses seen at each timestep.

  Row t of `losses` holds t's losses from oldest to newest in slots [0, counts[t]); the
  remaining slots are 0. When a row is full the oldest loss is dropped (FIFO).

  Attributes:
    losses: float32 [T, history_per_term].
    counts: int32 [T], number of valid entries per row (saturates at history_per_term).
  """
  losses: jnp.ndarray
  counts: jnp.ndarray

  @property
  def num_timesteps(self) -> int:
    return self.losses.shape[0]

  @property
  def history_per_term(self) -> int:
    return self.losses.shape[1]


def init_loss_history(num_timesteps: int, history_per_term: int = 10) -> LossHistory:
  """An empty history: zero losses, zero counts.

  Args:
    num_timesteps: T, the length of the diffusion chain.
    history_per_term: how many recent losses to keep per timestep (the paper uses 10).

  Returns:
    LossHistory with losses float32 [T, history_per_term] and counts int32 [T].
  """
  if int(num_timesteps) < 1:
    raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}.")
  if int(history_per_term) < 1:
    raise ValueError(f"history_per_term must be >= 1, got {history_per_term}.")
  return LossHistory(
      losses=jnp.zeros((num_timesteps, history_per_term), jnp.float32),
      counts=jnp.zeros((num_timesteps,), jnp.int32))


def is_warmed_up(history: LossHistory) -> jnp.ndarray:
  """bool []: True once every timestep has a full history (importance sampling starts then)."""
  return jnp.all(history.counts >= history.history_per_term)


def _check_uniform_prob(uniform_prob) -> None:
  # Only Python numbers can be checked here; a traced value is the caller's responsibility.
  if isinstance(uniform_prob, (int, float)) and not 0.0 <= uniform_prob <= 1.0:
    raise ValueError(f"uniform_prob must be in [0, 1], got {uniform_prob}.")


def sampling_probabilities(history: LossHistory, uniform_prob: float = 0.001) -> jnp.ndarray:
  """The importance-sampling distribution over timesteps (Improved DDPM, Sec. 3.3).

  p_t ∝ sqrt(mean of the stored L_t^2), then p <- (1 - uniform_prob) p + uniform_prob / T.
  Until every timestep has a full history (or if all stored losses are 0), p is uniform.

  Args:
    history: the LossHistory, T rows.
    uniform_prob: weight u of the uniform distribution in the mixture, in [0, 1].

  Returns:
    float32 [T], non-negative, sums to 1.
  """
  _check_uniform_prob(uniform_prob)
  num_timesteps = history.num_timesteps
  uniform = jnp.full((num_timesteps,), 1.0 / num_timesteps, jnp.float32)
  # Slots beyond counts are 0; once warmed up every slot is valid, so the row mean is E[L_t^2].
  second_moment = jnp.mean(jnp.square(history.losses.astype(jnp.float32)), axis=-1)
  root = jnp.sqrt(second_moment)
  total = jnp.sum(root)
  usable = is_warmed_up(history) & (total > 0) & jnp.isfinite(total)
  probs = root / jnp.where(usable, total, 1.0)
  probs = (1.0 - uniform_prob) * probs + uniform_prob / num_timesteps
  return jnp.where(usable, probs, uniform)


def sample_timesteps(key: jax.Array, batch_size: int, num_timesteps: int, *,
                     sampler: TimestepSampler,
                     history: LossHistory | None = None,
                     uniform_prob: float = 0.001) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Draws the training timesteps of a batch and their loss weights.

  Multiply each example's loss by its weight before averaging over the batch; the weighted
  loss is then an unbiased estimate of the uniform-t loss: E[w_t L_t] = (1 / T) sum_t L_t.

  Args:
    key: PRNG key.
    batch_size: B (per device when called inside pmap). Static.
    num_timesteps: T. Static; must equal history.losses.shape[0] when a history is given.
    sampler: 'uniform' (t ~ U{0..T-1}, weights 1) or 'loss_second_moment' (Improved DDPM's
      importance sampling, p_t ∝ sqrt(E[L_t^2]); uniform, with weights 1, until every t
      has a full history).
    history: the LossHistory; required for 'loss_second_moment', ignored for 'uniform'.
    uniform_prob: weight of the uniform distribution mixed into p (the paper's code: 0.001).

  Returns:
    (t int32 [B] in [0, T), weights float32 [B]) with weights = 1 / (T p_t).
  """
  if sampler not in TIMESTEP_SAMPLERS:
    raise ValueError(f"sampler must be one of {TIMESTEP_SAMPLERS}, got {sampler!r}.")
  if int(batch_size) < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  if int(num_timesteps) < 1:
    raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}.")
  _check_uniform_prob(uniform_prob)

  if sampler == "uniform":
    t = jax.random.randint(key, (batch_size,), 0, num_timesteps, dtype=jnp.int32)
    return t, jnp.ones((batch_size,), jnp.float32)

  if history is None:
    raise ValueError(
        "sampler='loss_second_moment' needs the loss history: pass history=<LossHistory> "
        "(create it with init_loss_history(num_timesteps) and keep it in the train state), "
        "or use sampler='uniform'.")
  if history.num_timesteps != num_timesteps:
    raise ValueError(
        f"history has {history.num_timesteps} timesteps but num_timesteps={num_timesteps}; "
        "create the history with init_loss_history(num_timesteps).")
  probs = sampling_probabilities(history, uniform_prob)
  t = jax.random.choice(key, num_timesteps, shape=(batch_size,), replace=True, p=probs)
  t = t.astype(jnp.int32)
  # Before warm-up p is exactly uniform; return weights of exactly 1 rather than 1/(T * (1/T)).
  weights = jnp.where(is_warmed_up(history), 1.0 / (num_timesteps * probs[t]), 1.0)
  return t, weights.astype(jnp.float32)


def update_loss_history(history: LossHistory, t: jnp.ndarray, losses: jnp.ndarray) -> LossHistory:
  """Appends each (t[i], losses[i]) to the history, in order, dropping the oldest when full.

  Equivalent to a sequential loop over i = 0..N-1 (later entries after earlier ones, repeated
  timesteps included) but vectorized: the rank of entry i among the batch's entries with the
  same timestep fixes its slot, so the whole update is one shift-gather and one scatter.
  Gradients do not flow into the history.

  Args:
    history: LossHistory with T rows of history_per_term (H) slots.
    t: int32 [N], timesteps in [0, T). Entries outside that range are ignored.
    losses: float [N], the per-example losses at those timesteps.

  Returns:
    The updated LossHistory (same shapes and dtypes).
  """
  chex.assert_rank([t, losses], 1)
  chex.assert_equal_shape([t, losses])
  num_timesteps, hist_len = history.losses.shape
  t = t.astype(jnp.int32)
  losses = jax.lax.stop_gradient(losses).astype(history.losses.dtype)
  valid = (t >= 0) & (t < num_timesteps)
  t_safe = jnp.where(valid, t, num_timesteps)  # out of range: dropped by every scatter below.

  # Rank of each entry among the batch entries with the same t (0 = earliest): a stable sort
  # groups equal t in batch order; rank = position in the sorted array - start of its group.
  n = t.shape[0]
  order = jnp.argsort(t_safe, stable=True)
  sorted_t = t_safe[order]
  group_start = jnp.searchsorted(sorted_t, sorted_t, side="left")
  rank = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32) - group_start)

  # Per row: old entries (counts) followed by the new ones (added); keep the last H.
  added = jnp.zeros((num_timesteps,), jnp.int32).at[t_safe].add(1, mode="drop")
  total = history.counts + added
  dropped = jnp.maximum(total - hist_len, 0)  # how many of the oldest fall off each row.

  # Surviving old entries shift left by `dropped`; slots they do not fill become 0.
  slot = jnp.arange(hist_len, dtype=jnp.int32)[None, :]
  src = slot + dropped[:, None]
  keep_old = src < history.counts[:, None]
  shifted = jnp.take_along_axis(history.losses, jnp.minimum(src, hist_len - 1), axis=1)
  new_losses = jnp.where(keep_old, shifted, 0.0)

  # New entry i lands at (old count + rank - dropped) of its row; a negative slot means a
  # later entry of the same t in this batch pushed it out, so it is dropped.
  t_clip = jnp.minimum(t_safe, num_timesteps - 1)
  dest = history.counts[t_clip] + rank - dropped[t_clip]
  row = jnp.where(dest >= 0, t_safe, num_timesteps)
  new_losses = new_losses.at[row, jnp.maximum(dest, 0)].set(losses, mode="drop")

  return LossHistory(losses=new_losses, counts=jnp.minimum(total, hist_len).astype(jnp.int32))


def gather_and_update(history: LossHistory, t: jnp.ndarray, losses: jnp.ndarray,
                      axis_name: str = "batch") -> LossHistory:
  """Inside pmap: all-gathers t and losses over `axis_name` and updates every replica alike.

  The gathered batch is in device order (device 0's entries first), so each replica computes
  exactly `update_loss_history(history, concat_over_devices(t), concat_over_devices(losses))`.

  Args:
    history: the replica's LossHistory (equal on all replicas).
    t: int32 [n], this device's timesteps.
    losses: float [n], this device's per-example losses.
    axis_name: the pmap axis name.

  Returns:
    The updated LossHistory, identical on every replica.
  """
  t_all = jax.lax.all_gather(t, axis_name, tiled=True)
  losses_all = jax.lax.all_gather(jax.lax.stop_gradient(losses), axis_name, tiled=True)
  return update_loss_history(history, t_all, losses_all)


def sample_continuous_times(key: jax.Array, shape, *, eps: float = 1e-5) -> jnp.ndarray:
  """t ~ U(eps, 1), float32 of `shape`: the times of continuous-time score matching (Song et al.
  2021 use eps = 1e-5, which keeps sigma(t) and the score's scale finite)."""
  if not 0.0 <= eps < 1.0:
    raise ValueError(f"eps={eps} must lie in [0, 1).")
  return jax.random.uniform(key, shape, minval=eps, maxval=1.0)
