"""Building blocks of the DDPM / ADM U-Net (Flax linen, NHWC).

Structure follows the DDPM reference network (Ho et al. 2020, `diffusion_tf/models/unet.py`):
pre-activation residual blocks with GroupNorm + swish, a timestep embedding added after the first
convolution, single-head self-attention with a zero-initialised output projection, nearest
upsampling + conv and a stride-2 conv downsampling. ADM (Dhariwal & Nichol 2021) options are
added on top: adaptive group norm ("scale-shift norm"), BigGAN-style residual up/down sampling,
multi-head attention and 1/sqrt(2) residual scaling.

Mixed precision: parameters are always float32; convolutions and matmuls run in `dtype` (e.g.
bfloat16); GroupNorm statistics and the attention softmax are always computed in float32.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Literal, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models import ops

Array = jax.Array
Dtype = Any

TimestepConvention = Literal["ddpm", "improved"]
TIMESTEP_CONVENTIONS = ("ddpm", "improved")


def default_init(scale: float = 1.0) -> nn.initializers.Initializer:
  """The DDPM code's initializer: uniform variance scaling over fan_avg.

  The reference uses `scale=0` for layers that should start as the identity of the residual
  path (second conv of a res block, attention output, final conv); like it, we use 1e-10 there
  so the weights are tiny but not exactly zero (gradients still flow to every entry).
  """
  return nn.initializers.variance_scaling(
      1e-10 if scale == 0 else scale, "fan_avg", "uniform")


def timestep_embedding(
    t: Array,
    dim: int,
    *,
    convention: TimestepConvention = "ddpm",
    max_period: float = 10000.0,
) -> Array:
  """Sinusoidal timestep embedding (Transformer positional encoding).

  Two conventions are in use and they give different vectors, so a checkpoint only works with
  the one it was trained with:

  - `"ddpm"` (default; Ho et al.'s code and diffusers' `flip_sin_to_cos=False, freq_shift=1`):
    `freq_k = exp(-log(max_period) * k / (half - 1))`, output `[sin(t freq), cos(t freq)]`.
  - `"improved"` (improved-diffusion / guided-diffusion; diffusers' `flip_sin_to_cos=True,
    freq_shift=0`): `freq_k = exp(-log(max_period) * k / half)`, output `[cos, sin]`.

  Args:
    t: [B] timesteps (int or float), the original index in [0, T).
    dim: embedding width; an odd width gets a trailing zero column.
    convention: `"ddpm"` or `"improved"`.
    max_period: the largest period, 10000 in both reference codes.

  Returns:
    [B, dim] float32 embedding.
  """
  if convention not in TIMESTEP_CONVENTIONS:
    raise ValueError(
        f"convention={convention!r} is not supported; use one of {TIMESTEP_CONVENTIONS}.")
  if t.ndim != 1:
    raise ValueError(f"t must have shape [B], got {t.shape}.")
  half = dim // 2
  if convention == "ddpm" and half < 2:
    raise ValueError(f"dim={dim} is too small for the ddpm convention (needs dim >= 4).")
  denom = half - 1 if convention == "ddpm" else half
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / denom)
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]
  if convention == "ddpm":
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  else:
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class GroupNorm(nn.Module):
  """GroupNorm computed in float32 (`ops.group_norm`), result cast to `dtype`; `swish=True`
  fuses the activation that follows it."""
  num_groups: int = 32
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, swish: bool = False) -> Array:
    channels = x.shape[-1]
    if channels % self.num_groups:
      raise ValueError(
          f"GroupNorm: {channels} channels are not divisible by norm_groups={self.num_groups}; "
          "choose ch (times every ch_mult) as a multiple of norm_groups.")
    scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    y = ops.group_norm(x, scale, bias, num_groups=self.num_groups, epsilon=self.epsilon,
                       swish=swish)
    return y.astype(self.dtype)


class Conv(nn.Module):
  """A k x k convolution of NHWC images, kernel [k, k, I, O] and bias [O] (nn.Conv's names and
  shapes), float32 parameters, `dtype` compute; the bias gradient is `ops.add_bias`'s."""
  features: int
  kernel: int = 3
  stride: int = 1
  padding: Any = "SAME"
  init_scale: float = 1.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    shape = (self.kernel, self.kernel, x.shape[-1], self.features)
    kernel = self.param("kernel", default_init(self.init_scale), shape, jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), (self.stride, self.stride),
        self.padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return ops.add_bias(y, bias)


class Dense(nn.Module):
  """x [..., I] @ kernel [I, O] + bias [O] (nn.Dense's names and shapes), float32 parameters,
  `dtype` compute; the bias gradient is `ops.add_bias`'s."""
  features: int
  init_scale: float = 1.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    shape = (x.shape[-1], self.features)
    kernel = self.param("kernel", default_init(self.init_scale), shape, jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    # As one [rows, I] @ [I, O] product: the kernel gradient is then a 2-D product contracting
    # the rows, which XLA:CPU runs in place; contracting N, H, W of a 4-D input it transposed
    # both operands first.
    rows = x.reshape(-1, x.shape[-1]).astype(self.dtype)
    y = jnp.dot(rows, kernel.astype(self.dtype)).reshape(*x.shape[:-1], self.features)
    return ops.add_bias(y, bias)


def conv(features: int, *, kernel: int = 3, stride: int = 1, padding: Any = "SAME",
         init_scale: float = 1.0, dtype: Dtype = jnp.float32, name: str | None = None) -> Conv:
  """A kxk conv with DDPM init, float32 params and `dtype` compute (NHWC, kernel [k, k, I, O])."""
  return Conv(features, kernel, stride, padding, init_scale, dtype, name=name)


def dense(features: int, *, init_scale: float = 1.0, dtype: Dtype = jnp.float32,
          name: str | None = None) -> Dense:
  """A Dense (also the 1x1 "NIN" layers) with DDPM init, float32 params, `dtype` compute."""
  return Dense(features, init_scale, dtype, name=name)


def upsample_nearest(x: Array) -> Array:
  """[B, H, W, C] -> [B, 2H, 2W, C], nearest neighbour."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
  return x.reshape(b, 2 * h, 2 * w, c)


def avg_pool2(x: Array) -> Array:
  """[B, H, W, C] -> [B, H/2, W/2, C], 2x2 mean (ADM's non-conv downsampling)."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class Upsample(nn.Module):
  """Nearest 2x upsampling, optionally followed by a 3x3 conv (DDPM `upsample`)."""
  with_conv: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = upsample_nearest(x)
    if self.with_conv:
      x = conv(x.shape[-1], dtype=self.dtype, name="conv")(x)
    return x


class Downsample(nn.Module):
  """2x downsampling: stride-2 3x3 conv, or 2x2 average pooling.

  `padding=0` reproduces the DDPM code (TensorFlow 'SAME' with stride 2 on an even size pads
  0 before and 1 after); `padding=1` is the symmetric padding of ADM / diffusers' default.
  """
  with_conv: bool = True
  padding: int = 0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if not self.with_conv:
      return avg_pool2(x)
    if self.padding not in (0, 1):
      raise ValueError(f"downsample_padding must be 0 (DDPM) or 1 (ADM), got {self.padding}.")
    pad = ((0, 1), (0, 1)) if self.padding == 0 else ((1, 1), (1, 1))
    return conv(x.shape[-1], stride=2, padding=pad, dtype=self.dtype, name="conv")(x)


def example_dropout(module: nn.Module, x: Array, rate: float,
                    example_keys: Optional[Array]) -> Array:
  """Dropout (inverted: kept units scaled by 1 / (1 - rate)) inside `module`.

  With `example_keys` [B], example i's mask comes from key i folded with the module's path, so it
  does not depend on the other examples or on how the batch is split over devices, while the
  network runs on the whole batch (vmapping it per example, the earlier way, made the CIFAR-10
  train step ~9% slower on CPU: README). Without, the mask comes from the module's 'dropout'
  rng, as nn.Dropout's.
  """
  keep = 1.0 - rate
  if example_keys is None:
    mask = jax.random.bernoulli(module.make_rng("dropout"), keep, x.shape)
  else:
    layer = zlib.crc32("/".join(module.path).encode())
    draw = lambda key: jax.random.bernoulli(jax.random.fold_in(key, layer), keep, x.shape[1:])
    mask = jax.vmap(draw)(example_keys)
  return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


class ResBlock(nn.Module):
  """Pre-activation residual block with timestep conditioning.

  DDPM: `h = conv1(swish(GN(x))); h += Dense(swish(temb)); h = conv2(dropout(swish(GN(h))))`,
  output `shortcut(x) + h` (1x1 projection when the width changes).
  ADM options: `use_scale_shift_norm` replaces the addition by AdaGN,
  `GN(h) * (1 + scale) + shift` with `[scale, shift] = Dense(swish(temb))`; `up` / `down` resample
  both paths inside the block (BigGAN), after the first norm; `skip_rescale` divides the sum by
  sqrt(2).
  """
  out_ch: int
  dropout: float = 0.0
  use_scale_shift_norm: bool = False
  up: bool = False
  down: bool = False
  skip_rescale: bool = False
  norm_groups: int = 32
  norm_eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, temb: Array, train: bool = False,
               dropout_keys: Optional[Array] = None) -> Array:
    norm = lambda name: GroupNorm(self.norm_groups, self.norm_eps, self.dtype, name=name)
    h = norm("norm1")(x, swish=True)
    if self.up:
      h, x = upsample_nearest(h), upsample_nearest(x)
    elif self.down:
      h, x = avg_pool2(h), avg_pool2(x)
    h = conv(self.out_ch, dtype=self.dtype, name="conv1")(h)

    emb_ch = 2 * self.out_ch if self.use_scale_shift_norm else self.out_ch
    emb = dense(emb_ch, dtype=self.dtype, name="temb_proj")(nn.swish(temb))  # [B, emb_ch]
    if self.use_scale_shift_norm:
      scale, shift = jnp.split(emb, 2, axis=-1)
      h = nn.swish(ops.scale_shift(norm("norm2")(h), scale, shift))
    else:
      h = norm("norm2")(ops.add_bias(h, emb), swish=True)
    if train and self.dropout > 0:
      h = example_dropout(self, h, self.dropout, dropout_keys)
    h = conv(self.out_ch, init_scale=0.0, dtype=self.dtype, name="conv2")(h)

    if x.shape[-1] != self.out_ch:
      x = dense(self.out_ch, dtype=self.dtype, name="shortcut")(x)  # DDPM's `nin_shortcut`
    out = x.astype(self.dtype) + h
    if self.skip_rescale:
      out = out * (1.0 / math.sqrt(2.0))
    return out


class AttnBlock(nn.Module):
  """Self-attention over the H*W positions, with a residual connection.

  `num_heads=1` is DDPM's block. Queries, keys and values are 1x1 projections of `GN(x)`; heads
  are contiguous channel slices; logits are scaled by `head_dim ** -0.5` and softmaxed in float32;
  the output projection starts near zero so the block starts near the identity.
  """
  num_heads: int = 1
  skip_rescale: bool = False
  norm_groups: int = 32
  norm_eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, hgt, wid, c = x.shape
    if c % self.num_heads:
      raise ValueError(
          f"attention over {c} channels cannot be split into num_heads={self.num_heads} heads; "
          "choose num_heads / num_head_channels dividing every attention width.")
    d = c // self.num_heads
    h = GroupNorm(self.norm_groups, self.norm_eps, self.dtype, name="norm")(x)
    h = h.reshape(b, hgt * wid, c)
    q = dense(c, dtype=self.dtype, name="q")(h).reshape(b, hgt * wid, self.num_heads, d)
    k = dense(c, dtype=self.dtype, name="k")(h).reshape(b, hgt * wid, self.num_heads, d)
    v = dense(c, dtype=self.dtype, name="v")(h).reshape(b, hgt * wid, self.num_heads, d)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits * (d ** -0.5), axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, hgt, wid, c)
    out = dense(c, init_scale=0.0, dtype=self.dtype, name="proj_out")(out)
    out = x.astype(self.dtype) + out
    if self.skip_rescale:
      out = out * (1.0 / math.sqrt(2.0))
    return out


class AttentionPool(nn.Module):
  """Attention pooling of [B, H, W, C] to [B, out_features] (CLIP's head, used by ADM's classifier).

  The tokens are the H*W positions plus their mean, each with a learned position embedding; the
  mean token alone queries all tokens (multi-head attention over contiguous channel slices), and
  its attended value, projected to `out_features`, is the output.
  """
  out_features: int
  num_heads: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, hgt, wid, c = x.shape
    if c % self.num_heads:
      raise ValueError(f"attention pooling over {c} channels cannot be split into "
                       f"num_heads={self.num_heads} heads; choose num_head_channels dividing {c}.")
    d = c // self.num_heads
    tokens = x.reshape(b, hgt * wid, c)
    tokens = jnp.concatenate([tokens.mean(axis=1, keepdims=True), tokens], axis=1)
    pos = self.param("pos_emb", nn.initializers.normal(c ** -0.5), (hgt * wid + 1, c), jnp.float32)
    tokens = (tokens + pos[None]).astype(self.dtype)
    q = dense(c, dtype=self.dtype, name="q")(tokens[:, :1]).reshape(b, 1, self.num_heads, d)
    k = dense(c, dtype=self.dtype, name="k")(tokens).reshape(b, -1, self.num_heads, d)
    v = dense(c, dtype=self.dtype, name="v")(tokens).reshape(b, -1, self.num_heads, d)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits * (d ** -0.5), axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, c)
    return dense(self.out_features, dtype=self.dtype, name="proj_out")(out)
