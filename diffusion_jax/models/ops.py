"""Array functions of the U-Net layers whose backward passes are written out (custom_vjp).

Autodiff of GroupNorm (+ swish) and of a bias add is correct but expensive on XLA:CPU: it
fuses each sum over positions with the whole elementwise chain in front of it, emits it as a
scalar loop over the strided positions, and recomputes that chain in every such fusion. The
rules here take each gradient in few passes, and on CPU compute every sum over positions as a
product with a vector of ones, which XLA hands to its matrix kernels
(`python -m bench.profile_step`, README "Speed and memory on CPU against PyTorch").

Like any custom_vjp, these support reverse-mode differentiation (grad, vjp) but not
forward-mode (jvp, linearize); the library differentiates models only in reverse mode.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array


def _sums_by_matmul() -> bool:
  """Sums over positions as matrix products on XLA:CPU; elsewhere XLA's fused reductions."""
  return jax.default_backend() == "cpu"


def sum_rows(a: Array) -> Array:
  """[..., C] -> [C] float32: the sum over every axis but the last."""
  a2 = a.reshape(-1, a.shape[-1])
  if not _sums_by_matmul():
    return jnp.sum(a2, axis=0, dtype=jnp.float32)
  ones = jnp.ones((1, a2.shape[0]), a2.dtype)
  return jnp.matmul(ones, a2, preferred_element_type=jnp.float32)[0]


def sum_positions(x: Array) -> Array:
  """[B, H, W, C] -> [B, C] float32: each example's sum over its H x W positions."""
  b, h, w, c = x.shape
  if not _sums_by_matmul():
    return jnp.sum(x, axis=(1, 2), dtype=jnp.float32)
  ones = jnp.ones((b, 1, h * w), x.dtype)
  return jnp.matmul(ones, x.reshape(b, h * w, c), preferred_element_type=jnp.float32)[:, 0]


def _sum_like(g: Array, bias: Array) -> Array:
  """The gradient of a bias broadcast to g: `sum_rows` for [C], `sum_positions` for [B, C]."""
  return (sum_rows(g) if bias.ndim == 1 else sum_positions(g)).astype(bias.dtype)


@jax.custom_vjp
def add_bias(x: Array, bias: Array) -> Array:
  """x + bias in x's dtype: a bias [C] for x [..., C], or one per example, [B, C] for x
  [B, H, W, C] (the time embedding a residual block adds)."""
  return x + _broadcastable(bias, x)


def _broadcastable(v: Array, x: Array) -> Array:
  """[C] as is, [B, C] as [B, 1, 1, C], in x's dtype."""
  return (v if v.ndim == 1 else v[:, None, None, :]).astype(x.dtype)


add_bias.defvjp(lambda x, bias: (add_bias(x, bias), jnp.zeros_like(bias)),
                lambda bias_like, g: (g, _sum_like(g, bias_like)))


@jax.custom_vjp
def scale_shift(x: Array, scale: Array, shift: Array) -> Array:
  """x * (1 + scale) + shift for x [B, H, W, C] and per-example scale, shift [B, C] (ADM's
  adaptive group norm)."""
  return x * (1 + _broadcastable(scale, x)) + _broadcastable(shift, x)


def _scale_shift_bwd(residuals, g):
  x, scale, shift = residuals
  return (g * (1 + _broadcastable(scale, g)), _sum_like(g * x, scale), _sum_like(g, shift))


scale_shift.defvjp(lambda x, scale, shift: (scale_shift(x, scale, shift), (x, scale, shift)),
                   _scale_shift_bwd)


def _group_mean(sums: Array, num_groups: int, n: int) -> Array:
  """Per-channel sums [B, C] -> each channel's group mean, [B, 1, 1, C] (n terms a group)."""
  b, c = sums.shape
  group = sums.reshape(b, num_groups, c // num_groups).sum(axis=2) / n
  return jnp.repeat(group, c // num_groups, axis=1)[:, None, None, :]


def _group_norm_fwd(x, scale, bias, num_groups, epsilon, swish):
  b, h, w, c = x.shape
  n = h * w * (c // num_groups)
  x = x.astype(jnp.float32)
  mean = _group_mean(sum_positions(x), num_groups, n)
  var = _group_mean(sum_positions(jnp.square(x - mean)), num_groups, n)  # two-pass
  inv_std = jax.lax.rsqrt(var + epsilon)
  x_hat = (x - mean) * inv_std
  y = x_hat * scale + bias
  out = y * jax.nn.sigmoid(y) if swish else y
  return out, (x_hat, inv_std, scale, bias)


def _group_norm_bwd(num_groups, epsilon, swish, x_dtype, residuals, d_out):
  """With y = x_hat * scale + bias and dy its gradient (through swish if fused):
  d_scale = sum x_hat dy and d_bias = sum dy over (B, H, W); with g = dy * scale and
  mean_G the mean over an example's group, dx = inv_std (g - mean_G(g) - x_hat mean_G(g x_hat)).
  """
  del epsilon
  x_hat, inv_std, scale, bias = residuals
  b, h, w, c = x_hat.shape
  n = h * w * (c // num_groups)
  dy = d_out
  if swish:  # d/dy [y sigmoid(y)] = sigmoid(y) (1 + y (1 - sigmoid(y)))
    y = x_hat * scale + bias
    sig = jax.nn.sigmoid(y)
    dy = dy * (sig * (1 + y * (1 - sig)))
  sum_dy, sum_dy_x_hat = sum_positions(dy), sum_positions(dy * x_hat)  # [B, C] each
  mean_g = _group_mean(sum_dy * scale, num_groups, n)
  mean_g_x_hat = _group_mean(sum_dy_x_hat * scale, num_groups, n)
  dx = inv_std * (dy * scale - mean_g - x_hat * mean_g_x_hat)
  return dx.astype(x_dtype), sum_rows(sum_dy_x_hat), sum_rows(sum_dy)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _group_norm(x, scale, bias, num_groups, epsilon, swish, x_dtype):
  return _group_norm_fwd(x, scale, bias, num_groups, epsilon, swish)[0]


_group_norm.defvjp(
    lambda x, scale, bias, num_groups, epsilon, swish, x_dtype: _group_norm_fwd(
        x, scale, bias, num_groups, epsilon, swish),
    _group_norm_bwd)


def group_norm(x: Array, scale: Array, bias: Array, *, num_groups: int, epsilon: float,
               swish: bool = False) -> Array:
  """GroupNorm (Wu & He 2018) of each example, then `* scale + bias`, then swish if asked.

  Statistics are taken in float32 over each example's H x W positions and the C / G channels
  of a group, the variance in two passes (no cancellation). The backward pass recomputes from
  the normalised input x_hat, kept instead of x, and needs one pass for the per-example sums
  and one for dx.

  Args:
    x: [B, H, W, C], any float dtype.
    scale, bias: [C] float32.
    num_groups: G, dividing C.
    epsilon: added to the variance.
    swish: apply y * sigmoid(y) to the result (GN -> swish of the pre-activation blocks).

  Returns:
    [B, H, W, C] float32.
  """
  return _group_norm(x, scale, bias, num_groups, epsilon, swish, jnp.dtype(x.dtype))
