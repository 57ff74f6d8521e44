"""ADM's noisy-image classifier p(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021, Sec. 4).

The network is the encoder half of the U-Net (`models.unet`: the same time embedding, conv_in,
downsampling path and middle block, built by the same code under the same parameter names)
followed by GroupNorm, swish and a pooling head that returns logits. Its defaults are ADM's
classifier settings (width 128, 2 residual blocks per level, attention at 32, 16 and 8 pixels
with 64-channel heads, BigGAN up/down blocks, scale-shift norm, attention pooling, ADM's norm
epsilon, padding and timestep embedding); ADM sets ch_mult by resolution:

  64x64:   NoisyClassifier(ch_mult=(1, 2, 3, 4), num_res_blocks=4)   (the released 64x64 model)
  128x128: NoisyClassifier(ch_mult=(1, 1, 2, 3, 4))
  256x256: NoisyClassifier(ch_mult=(1, 1, 2, 2, 4, 4))

It is trained on q_sample'd images at uniformly drawn t with cross-entropy, and used through
`classifier_fn(model, params)` with `diffusion_jax.guidance`.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models import layers, unet

Array = jax.Array
Pool = Literal["attention", "adaptive"]
POOLS: tuple[str, ...] = ("attention", "adaptive")


class NoisyClassifier(nn.Module):
  """ADM's encoder half-U-Net classifier on noisy NHWC images: (x_t, t) -> logits [B, K].

  Attributes:
    num_classes: K, the number of logits.
    pool: "attention" (ADM: the mean token attends over all positions, `layers.AttentionPool`)
      or "adaptive" (global average pooling and a zero-initialised linear layer).
    Every other field means what it means on `models.UNet` (ch, ch_mult, num_res_blocks,
    attn_resolutions, dropout, resamp_with_conv, num_heads, num_head_channels, resblock_updown,
    use_scale_shift_norm, skip_rescale, dtype, temb_convention, norm_groups, norm_eps,
    downsample_padding, remat); the defaults here are ADM's classifier's.
  """
  num_classes: int = 1000
  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 3, 4)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (32, 16, 8)
  dropout: float = 0.0
  resamp_with_conv: bool = True
  num_heads: int = 1
  num_head_channels: Optional[int] = 64
  resblock_updown: bool = True
  use_scale_shift_norm: bool = True
  skip_rescale: bool = False
  pool: Pool = "attention"
  dtype: Any = jnp.float32
  temb_convention: layers.TimestepConvention = "improved"
  norm_groups: int = 32
  norm_eps: float = 1e-5
  downsample_padding: int = 1
  remat: bool = False

  def __post_init__(self):
    unet.freeze_sequences(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, t: Array, train: bool = False) -> Array:
    """Logits of p(y | x_t, t).

    Args:
      x: [B, H, W, C] noisy images x_t; H and W divisible by 2**(len(ch_mult) - 1).
      t: [B] timesteps (the original index; float t is embedded the same way).
      train: enables dropout (needs a 'dropout' rng).

    Returns:
      [B, num_classes] float32 logits.
    """
    unet.check_inputs(self, x, t)
    if self.pool not in POOLS:
      raise ValueError(f"pool={self.pool!r} is not supported; choose one of {', '.join(map(repr, POOLS))}.")
    if not self.num_classes or self.num_classes < 2:
      raise ValueError(f"num_classes={self.num_classes}: a classifier needs at least 2 classes.")
    dtype = jnp.dtype(self.dtype)
    h, _ = unet.encoder(self, x, unet.time_embedding(self, t), train)
    h = layers.GroupNorm(self.norm_groups, self.norm_eps, dtype, name="norm_out")(h, swish=True)
    if self.pool == "attention":
      logits = layers.AttentionPool(self.num_classes, unet.attention_heads(self, h.shape[-1]),
                                    dtype=dtype, name="pool")(h)
    else:
      logits = layers.dense(self.num_classes, init_scale=0.0, dtype=dtype, name="pool")(h.mean(axis=(1, 2)))
    return logits.astype(jnp.float32)


def classifier_fn(model: NoisyClassifier, params: Any) -> Callable[[Array, Array], Array]:
  """classifier_fn(x_t, t) -> logits [B, K] with `params` frozen, for `diffusion_jax.guidance`.

  The parameters pass through `stop_gradient`, so gradients of guided sampling reach x_t only
  (`guidance.class_log_prob_grad`), also when the function is traced under jit or pmap.
  """
  frozen = jax.lax.stop_gradient

  def logits(x_t: Array, t: Array) -> Array:
    return model.apply({"params": frozen(params)}, x_t, t, train=False)

  return logits
