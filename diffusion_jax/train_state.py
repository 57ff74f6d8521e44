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


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Gradient clipping by global norm, then Adam with the warmup schedule."""
  training = config.training
  adam = optax.adam(learning_rate_schedule(config), b1=training.adam_b1, b2=training.adam_b2,
                    eps=training.adam_eps)
  if training.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(training.grad_clip), adam)
  return adam


def create_train_state(params: Params, tx: optax.GradientTransformation,
                       loss_history: Any = None) -> TrainState:
  """A state at step 0 whose EMA starts at the initial parameters."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params),
                    loss_history=loss_history)


def update_ema(ema_params: Params, params: Params, decay: float) -> Params:
  """ema <- decay * ema + (1 - decay) * params, leaf by leaf."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)
