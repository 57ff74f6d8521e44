"""The DDPM U-Net (Ho et al. 2020) with the options of Improved DDPM and ADM, in Flax linen.

With its defaults `UNet()` is the DDPM CIFAR-10 network (35.7M parameters), layer for layer the
network of the DDPM code and of diffusers' `UNet2DModel` with the google/ddpm-cifar10-32 layout
(so those checkpoints import through `diffusion_jax.models.convert`). The 256x256 networks of the
paper (CelebA-HQ, LSUN; 113.7M parameters) are `UNet(ch_mult=(1, 1, 2, 2, 4, 4), dropout=0.0)`.

An ADM ImageNet-64-like network:

  UNet(ch=192, ch_mult=(1, 2, 3, 4), num_res_blocks=3, attn_resolutions=(32, 16, 8),
       num_head_channels=64, resblock_updown=True, use_scale_shift_norm=True,
       num_classes=1000, out_ch=6, norm_eps=1e-5, downsample_padding=1,
       temb_convention="improved")
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models import layers

Array = jax.Array


class UNet(nn.Module):
  """DDPM / Improved DDPM / ADM U-Net on NHWC images.

  Attributes:
    ch: base width; level i has `ch * ch_mult[i]` channels, the time embedding `4 * ch`.
    ch_mult: width multipliers, one per resolution level (len(ch_mult) - 1 downsamplings).
    num_res_blocks: residual blocks per level on the way down (the way up has one more).
    attn_resolutions: feature-map sizes (in pixels, e.g. 16 for 16x16) that get self-attention
      after every residual block, on both paths.
    dropout: dropout rate inside the residual blocks; active only with `train=True`.
    out_ch: output channels; None = the input's channels (predicting eps). Use 2C for a learned
      variance (Improved DDPM / ADM).
    resamp_with_conv: conv after nearest upsampling / stride-2 conv downsampling (else
      plain nearest / 2x2 average pooling).
    num_heads: attention heads, used when `num_head_channels == -1`.
    num_head_channels: channels per head (ADM uses 64); -1 (or None) = use `num_heads`.
    resblock_updown: resample with BigGAN residual blocks instead of Upsample/Downsample.
    use_scale_shift_norm: AdaGN, `GN(h) * (1 + scale) + shift` from the time (+class) embedding.
    skip_rescale: divide every residual sum (res and attention blocks) by sqrt(2).
    num_classes: class-conditional when > 0 (a learned class embedding is added to the time
      embedding, ADM); None or 0 = unconditional.
    dtype: computation dtype (e.g. jnp.bfloat16 or "bfloat16"); parameters stay float32 and
      GroupNorm / softmax run in float32; the output is float32.
    temb_convention: timestep embedding convention, "ddpm" (default, loads DDPM checkpoints) or
      "improved" (improved/guided-diffusion); see `layers.timestep_embedding`.
    norm_groups: GroupNorm groups (32 in all reference networks).
    norm_eps: GroupNorm epsilon: 1e-6 in the DDPM code, 1e-5 (torch default) in ADM.
    downsample_padding: 0 = DDPM's asymmetric (0, 1) padding of the stride-2 conv; 1 = ADM's
      symmetric padding.
    remat: rematerialize every residual block (flax `nn.remat`): the backward pass recomputes
      a block's activations from its input instead of keeping them, for less memory (256-px
      models) at the cost of a second forward through the blocks. Same parameters and results.
  """
  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  out_ch: Optional[int] = None
  resamp_with_conv: bool = True
  num_heads: int = 1
  num_head_channels: Optional[int] = -1
  resblock_updown: bool = False
  use_scale_shift_norm: bool = False
  skip_rescale: bool = False
  num_classes: Optional[int] = None
  dtype: Any = jnp.float32
  temb_convention: layers.TimestepConvention = "ddpm"
  norm_groups: int = 32
  norm_eps: float = 1e-6
  downsample_padding: int = 0
  remat: bool = False

  def __post_init__(self):
    freeze_sequences(self)
    super().__post_init__()

  def _check_inputs(self, x: Array, t: Array, y: Optional[Array]) -> None:
    check_inputs(self, x, t)
    b = x.shape[0]
    if self.num_classes:
      if y is None:
        raise ValueError(f"num_classes={self.num_classes}: the model is class-conditional, "
                         "pass labels y of shape [B] (or set num_classes=None).")
      if y.shape != (b,):
        raise ValueError(f"y must have shape [B] = ({b},), got {y.shape}.")
    elif y is not None:
      raise ValueError("labels y were given but num_classes is None/0; set num_classes to "
                       "build a class-conditional model or pass y=None.")

  @nn.compact
  def __call__(self, x: Array, t: Array, y: Optional[Array] = None, train: bool = False,
               dropout_keys: Optional[Array] = None) -> Array:
    """Predicts the network output (eps, or [eps, variance] when out_ch = 2C).

    Args:
      x: [B, H, W, C] noisy images; H and W divisible by 2**(len(ch_mult) - 1).
      t: [B] timesteps: int32 steps (the original index in [0, T)) or float32 for
        continuous-time models (the fractional step `sde.SDE.time_to_step(t)`, on the same
        scale, e.g. N t - 1 for VP); the sinusoidal embedding takes both, and an integer-valued
        float gives exactly the int's output.
      y: [B] int32 class labels, required iff `num_classes` > 0.
      train: enables dropout.
      dropout_keys: with train, one PRNG key per example [B]: example i's dropout masks come
        from key i alone (`layers.example_dropout`). None: from the 'dropout' rng
        (`rngs={'dropout': key}`).

    Returns:
      [B, H, W, out_ch] float32.
    """
    self._check_inputs(x, t, y)
    dtype = jnp.dtype(self.dtype)
    out_ch = self.out_ch or x.shape[-1]
    temb = time_embedding(self, t)
    if self.num_classes:
      temb = temb + nn.Embed(self.num_classes, temb.shape[-1], param_dtype=jnp.float32,
                             dtype=dtype, name="label_emb")(y)
    h, hs = encoder(self, x, temb, train, dropout_keys)

    # Upsampling path: num_res_blocks + 1 blocks per level, each eats one skip ([h, skip] order).
    for i in reversed(range(len(self.ch_mult))):
      for j in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, hs.pop()], axis=-1)
        h = _resblock(self, self.ch * self.ch_mult[i], f"up_{i}_block_{j}")(
            h, temb, train, dropout_keys)
        if h.shape[1] in self.attn_resolutions:
          h = _attention(self, h, f"up_{i}_attn_{j}")
      if i != 0:
        if self.resblock_updown:
          h = _resblock(self, h.shape[-1], f"up_{i}_upsample", up=True)(
              h, temb, train, dropout_keys)
        else:
          h = layers.Upsample(self.resamp_with_conv, dtype=dtype, name=f"up_{i}_upsample")(h)
    assert not hs, "skip connections left over"

    h = layers.GroupNorm(self.norm_groups, self.norm_eps, dtype, name="norm_out")(h, swish=True)
    h = layers.conv(out_ch, init_scale=0.0, dtype=dtype, name="conv_out")(h)
    return h.astype(jnp.float32)


# The trunk shared with the noisy classifier (`models.classifier`), which is ADM's encoder half of
# this network: `m` is a UNet or a NoisyClassifier (any module with the architecture fields above);
# called inside its compact `__call__`, the layers become its submodules under these names.


def freeze_sequences(m: nn.Module) -> None:
  """ch_mult and attn_resolutions as int tuples: configs may hand over lists, and hashable
  fields keep the module usable as a jit static argument (call from __post_init__)."""
  object.__setattr__(m, "ch_mult", tuple(int(v) for v in m.ch_mult))
  object.__setattr__(m, "attn_resolutions", tuple(int(r) for r in m.attn_resolutions))


def check_inputs(m: nn.Module, x: Array, t: Array) -> None:
  """Errors for images the trunk cannot take: not NHWC, a size it cannot halve, t not [B]."""
  if x.ndim != 4:
    raise ValueError(f"x must be [B, H, W, C] (NHWC), got shape {x.shape}.")
  b, hgt, wid, _ = x.shape
  factor = 2 ** (len(m.ch_mult) - 1)
  if hgt % factor or wid % factor:
    raise ValueError(
        f"image size {hgt}x{wid} is not divisible by 2**(len(ch_mult)-1) = {factor} "
        f"(ch_mult={m.ch_mult}); pad/resize the images or use a shorter ch_mult.")
  if t.shape != (b,):
    raise ValueError(f"t must be an array of shape [B] = ({b},) (int steps or float times), "
                     f"got shape {t.shape}.")
  if m.temb_convention not in layers.TIMESTEP_CONVENTIONS:
    raise ValueError(f"temb_convention={m.temb_convention!r}; use one of "
                     f"{layers.TIMESTEP_CONVENTIONS}.")


def attention_heads(m: nn.Module, channels: int) -> int:
  """Heads of an attention layer over `channels`: channels / num_head_channels, else num_heads."""
  if m.num_head_channels is None or m.num_head_channels == -1:
    return m.num_heads
  if channels % m.num_head_channels:
    raise ValueError(
        f"num_head_channels={m.num_head_channels} does not divide the attention width "
        f"{channels}; choose a divisor of every ch * ch_mult at attn_resolutions.")
  return channels // m.num_head_channels


def _resblock(m: nn.Module, out: int, name: str, **kw) -> layers.ResBlock:
  # static_argnums counts the module: (self, x, temb, train, dropout_keys); train is a bool.
  block = nn.remat(layers.ResBlock, static_argnums=(3,)) if m.remat else layers.ResBlock
  return block(
      out, dropout=m.dropout, use_scale_shift_norm=m.use_scale_shift_norm,
      skip_rescale=m.skip_rescale, norm_groups=m.norm_groups, norm_eps=m.norm_eps,
      dtype=jnp.dtype(m.dtype), name=name, **kw)


def _attention(m: nn.Module, h: Array, name: str) -> Array:
  return layers.AttnBlock(
      attention_heads(m, h.shape[-1]), skip_rescale=m.skip_rescale, norm_groups=m.norm_groups,
      norm_eps=m.norm_eps, dtype=jnp.dtype(m.dtype), name=name)(h)


def time_embedding(m: nn.Module, t: Array) -> Array:
  """temb [B, 4 ch] = Dense(swish(Dense(sinusoid(t, ch)))) (DDPM; ADM's `time_embed`)."""
  dtype = jnp.dtype(m.dtype)
  temb = layers.timestep_embedding(t, m.ch, convention=m.temb_convention)
  temb = layers.dense(4 * m.ch, dtype=dtype, name="temb_dense0")(temb)
  return layers.dense(4 * m.ch, dtype=dtype, name="temb_dense1")(nn.swish(temb))


def encoder(m: nn.Module, x: Array, temb: Array, train: bool,
            dropout_keys: Optional[Array] = None) -> tuple[Array, list[Array]]:
  """conv_in, the downsampling path and the middle (res - attn - res).

  Returns:
    (h after the middle block [B, H / 2^(L-1), W / 2^(L-1), ch * ch_mult[-1]], the activations
    the up path takes as skip connections, in order).
  """
  dtype = jnp.dtype(m.dtype)
  h = layers.conv(m.ch, dtype=dtype, name="conv_in")(x.astype(dtype))
  hs = [h]
  for i, mult in enumerate(m.ch_mult):
    for j in range(m.num_res_blocks):
      h = _resblock(m, m.ch * mult, f"down_{i}_block_{j}")(h, temb, train, dropout_keys)
      if h.shape[1] in m.attn_resolutions:
        h = _attention(m, h, f"down_{i}_attn_{j}")
      hs.append(h)
    if i != len(m.ch_mult) - 1:
      if m.resblock_updown:
        h = _resblock(m, h.shape[-1], f"down_{i}_downsample", down=True)(
            h, temb, train, dropout_keys)
      else:
        h = layers.Downsample(m.resamp_with_conv, m.downsample_padding, dtype=dtype,
                              name=f"down_{i}_downsample")(h)
      hs.append(h)
  h = _resblock(m, h.shape[-1], "mid_block_0")(h, temb, train, dropout_keys)
  h = _attention(m, h, "mid_attn")
  h = _resblock(m, h.shape[-1], "mid_block_1")(h, temb, train, dropout_keys)
  return h, hs
