"""The training state: step, parameters, their EMA, optimizer state (and the timestep-loss history).

The state is a plain pytree with no functions inside, so orbax saves and restores it as is;
the optimizer (`make_optimizer`) is rebuilt from the config on every run.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from diffusion_jax.models import ops

Params = Any


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training.

  Attributes:
    step: int32 scalar, the number of optimizer steps taken.
    params: the model parameters being optimized.
    ema_params: exponential moving average of `params` (what is sampled and evaluated).
    opt_state: optax state of `make_optimizer(config)`.
    loss_history: `timestep_sampling.LossHistory` for importance-sampled timesteps, else None.
  """
  step: jnp.ndarray
  params: Params
  ema_params: Params
  opt_state: optax.OptState
  loss_history: Any = None


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup from 0 to `training.learning_rate` over `warmup_steps`, then constant.

  As in the DDPM code: lr(step) = lr * min(step / warmup_steps, 1).
  """
  lr = config.training.learning_rate
  warmup = config.training.warmup_steps
  if warmup <= 0:
    return optax.constant_schedule(lr)
  return optax.linear_schedule(init_value=0.0, end_value=lr, transition_steps=warmup)


def global_norm(tree: Any) -> jnp.ndarray:
  """sqrt of the sum of the squares of every entry of every leaf (`optax.global_norm`), float32.

  Each leaf's sum is `ops.sum_rows` (a product with ones on CPU, where XLA rewrites a long
  plain sum into a slow reduce-window tree).
  """
  def sum_of_squares(x):
    x = jnp.square(jnp.asarray(x, jnp.float32))
    return jnp.sum(ops.sum_rows(x.reshape(-1, x.shape[-1] if x.ndim else 1)))
  return jnp.sqrt(sum(sum_of_squares(x) for x in jax.tree.leaves(tree)))


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """`optax.clip_by_global_norm` (same state, same result) with our `global_norm`: updates
  are scaled by max_norm / norm when their global norm is at least max_norm."""

  def update(updates, state, params=None):
    del params
    norm = global_norm(updates)
    clip = lambda t: jnp.where(norm < max_norm, t, (t / norm.astype(t.dtype)) * max_norm)
    return jax.tree.map(clip, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Gradient clipping by global norm, then Adam with the warmup schedule."""
  training = config.training
  adam = optax.adam(learning_rate_schedule(config), b1=training.adam_b1, b2=training.adam_b2,
                    eps=training.adam_eps)
  if training.grad_clip > 0:
    return optax.chain(clip_by_global_norm(training.grad_clip), adam)
  return adam


def create_train_state(params: Params, tx: optax.GradientTransformation,
                       loss_history: Any = None) -> TrainState:
  """A state at step 0 whose EMA starts at the initial parameters."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params),
                    loss_history=loss_history)


def update_ema(ema_params: Params, params: Params, decay: float) -> Params:
  """ema <- decay * ema + (1 - decay) * params, leaf by leaf, computed as
  ema + (1 - decay) * (params - ema): one product feeding one sum, so XLA's FMA contraction has
  a single form wherever the update is fused (n_jitted_steps' bit-identity needs that)."""
  return jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), ema_params, params)
