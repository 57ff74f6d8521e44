"""The one place where a Flax module and its parameters become `model_fn(x_t, t) -> output`.

Losses, samplers and the bits/dim loop only ever see a `model_fn`; everything a network call
needs besides (x_t, t) is bound here: parameters, class labels, train mode and dropout keys.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

ModelFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def make_model_fn(model: nn.Module, params: Any, *, labels: Optional[jnp.ndarray] = None,
                  train: bool = False, dropout_keys: Optional[jax.Array] = None) -> ModelFn:
  """Binds a U-Net (or any module called as `model(x, t, y, train=..., dropout_keys=...)`) to
  its parameters.

  Args:
    model: the module.
    params: its parameters (the `params` collection).
    labels: int32 [B] class labels of a class-conditional model, else None.
    train: training mode (dropout on).
    dropout_keys: with train, one PRNG key per example [B] (e.g. from the global example
      index): example i's dropout masks come from key i alone, so they do not depend on how
      the batch is split over devices or hosts. None when the model has no dropout.

  Returns:
    model_fn(x_t [B, H, W, C], t [B]) -> output [B, H, W, C_out].
  """
  variables = {"params": params}
  if dropout_keys is None:
    return lambda x_t, t: model.apply(variables, x_t, t, labels, train=train)
  return lambda x_t, t: model.apply(variables, x_t, t, labels, train=train,
                                    dropout_keys=dropout_keys)
