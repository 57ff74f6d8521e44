"""Tests of the U-Net: embedding, parameter counts against diffusers, ADM options, dropout, dtype.

Numerical equivalence with diffusers' UNet2DModel (layer by layer) lives in convert_test.py.
"""

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.models import UNet, layers, timestep_embedding

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")


def _init_shapes(model, size=32, channels=3, batch=1):
  y = jnp.zeros((batch,), jnp.int32) if model.num_classes else None
  return jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((batch, size, size, channels)),
                         jnp.zeros((batch,), jnp.int32), y))["params"]


def _count(model, size, channels=3):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(_init_shapes(model, size, channels)))


def _diffusers_count(**cfg):
  """Parameter count of a diffusers UNet2DModel, built on the meta device (nothing allocated)."""
  with torch.device("meta"):
    model = diffusers.UNet2DModel(**cfg)
  return sum(p.numel() for p in model.parameters())


def _diffusers_layout(size, ch, ch_mult, attn_resolutions, *, updown=False, **extra):
  """Our (ch, ch_mult, attn_resolutions) written as diffusers block types."""
  attn = [size // 2 ** i in attn_resolutions for i in range(len(ch_mult))]
  plain_down = "ResnetDownsampleBlock2D" if updown else "DownBlock2D"
  plain_up = "ResnetUpsampleBlock2D" if updown else "UpBlock2D"
  cfg = dict(
      sample_size=size,
      block_out_channels=tuple(ch * m for m in ch_mult),
      down_block_types=tuple("AttnDownBlock2D" if a else plain_down for a in attn),
      up_block_types=tuple("AttnUpBlock2D" if a else plain_up for a in reversed(attn)),
  )
  if updown:
    cfg.update(downsample_type="resnet", upsample_type="resnet")
  cfg.update(extra)
  return cfg


# ------------------------------------------------------------------------------- embedding


@pytest.mark.parametrize("dim", [128, 33])
def test_timestep_embedding_ddpm_matches_float64_closed_form_and_diffusers(dim):
  t = np.array([0, 1, 17, 500, 999])
  got = np.asarray(timestep_embedding(jnp.asarray(t, jnp.int32), dim))
  # DDPM code (nn.get_timestep_embedding): log(10000)/(half-1) spacing, [sin, cos].
  half = dim // 2
  freqs = np.exp(-np.log(10000.0) * np.arange(half, dtype=np.float64) / (half - 1))
  args = t[:, None].astype(np.float64) * freqs[None]
  want = np.concatenate([np.sin(args), np.cos(args)], axis=1)
  if dim % 2:
    want = np.pad(want, ((0, 0), (0, 1)))
  # float32 phases of t*freq up to 999 rad: error ~ 999 * 2^-24 * few.
  np.testing.assert_allclose(got, want, atol=2e-4, rtol=0)
  ref = diffusers.models.embeddings.get_timestep_embedding(
      torch.tensor(t), dim, flip_sin_to_cos=False, downscale_freq_shift=1).numpy()
  np.testing.assert_allclose(got, ref, atol=2e-4, rtol=0)
  assert got.shape == (5, dim)


def test_timestep_embedding_improved_convention():
  t = np.array([0, 5, 250, 3999])
  got = np.asarray(timestep_embedding(jnp.asarray(t), 64, convention="improved"))
  # improved-diffusion nn.timestep_embedding: exp(-log(P) k / half), [cos, sin].
  freqs = np.exp(-np.log(10000.0) * np.arange(32, dtype=np.float64) / 32)
  args = t[:, None] * freqs[None]
  np.testing.assert_allclose(got, np.concatenate([np.cos(args), np.sin(args)], 1), atol=5e-4)
  ref = diffusers.models.embeddings.get_timestep_embedding(
      torch.tensor(t), 64, flip_sin_to_cos=True, downscale_freq_shift=0).numpy()
  np.testing.assert_allclose(got, ref, atol=5e-4, rtol=0)
  # The two conventions really differ (a checkpoint needs its own).
  other = np.asarray(timestep_embedding(jnp.asarray(t), 64))
  assert np.abs(other - got).max() > 0.5


def test_timestep_embedding_rejects_bad_convention():
  with pytest.raises(ValueError, match="ddpm"):
    timestep_embedding(jnp.zeros((2,), jnp.int32), 16, convention="adm")


# --------------------------------------------------------------------------- parameter counts


def test_param_count_cifar10_is_35_7m_and_equals_diffusers():
  ours = _count(UNet(), 32)
  ref = _diffusers_count(**_diffusers_layout(32, 128, (1, 2, 2, 2), (16,)), layers_per_block=2,
                         attention_head_dim=None, norm_eps=1e-6, flip_sin_to_cos=False,
                         freq_shift=1, downsample_padding=0)
  assert ours == ref
  assert round(ours / 1e6, 1) == 35.7


def test_param_count_256_is_113_7m_and_equals_diffusers():
  ours = _count(UNet(ch_mult=(1, 1, 2, 2, 4, 4), dropout=0.0), 256)
  ref = _diffusers_count(**_diffusers_layout(256, 128, (1, 1, 2, 2, 4, 4), (16,)),
                         layers_per_block=2, attention_head_dim=None, norm_eps=1e-6,
                         flip_sin_to_cos=False, freq_shift=1, downsample_padding=0)
  assert ours == ref
  assert round(ours / 1e6, 1) == 113.7


def test_param_count_adm_imagenet64_equals_diffusers():
  # ADM ImageNet 64x64 (Dhariwal & Nichol, Table 14 / guided-diffusion flags): ~296M params.
  model = UNet(ch=192, ch_mult=(1, 2, 3, 4), num_res_blocks=3, attn_resolutions=(32, 16, 8),
               num_head_channels=64, resblock_updown=True, use_scale_shift_norm=True,
               num_classes=1000, out_ch=6, norm_eps=1e-5, downsample_padding=1,
               temb_convention="improved", dropout=0.1)
  ours = _count(model, 64)
  ref = _diffusers_count(**_diffusers_layout(64, 192, (1, 2, 3, 4), (32, 16, 8), updown=True),
                         layers_per_block=3, attention_head_dim=64,
                         resnet_time_scale_shift="scale_shift", attn_norm_num_groups=32,
                         num_class_embeds=1000, out_channels=6)
  assert ours == ref
  assert 295e6 < ours < 297e6


# --------------------------------------------------------------------------------- ADM shapes


_SMALL = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0)


@pytest.mark.parametrize(
    "heads,scale_shift,updown,classes,out_ch",
    list(itertools.product([(1, -1), (4, -1), (1, 16)], [False, True], [False, True],
                           [None, 10], [None, 6]))[::3])  # 8 of the 48 combinations
def test_adm_option_shapes(heads, scale_shift, updown, classes, out_ch):
  num_heads, head_ch = heads
  model = UNet(**_SMALL, num_heads=num_heads, num_head_channels=head_ch,
               use_scale_shift_norm=scale_shift, resblock_updown=updown, num_classes=classes,
               out_ch=out_ch)
  x = jnp.zeros((2, 8, 8, 3))
  t = jnp.array([0, 999], jnp.int32)
  y = jnp.array([1, 9], jnp.int32) if classes else None
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t, y))
  out = jax.eval_shape(lambda v: model.apply(v, x, t, y), variables)
  assert out.shape == (2, 8, 8, out_ch or 3) and out.dtype == jnp.float32
  p = variables["params"]
  assert p["down_0_block_0"]["temb_proj"]["kernel"].shape == (128, 64 if scale_shift else 32)
  assert ("label_emb" in p) == bool(classes)
  assert ("norm1" in p["down_0_downsample"]) == updown  # a res block, not a conv
  assert p["mid_attn"]["q"]["kernel"].shape == (64, 64)


def _random_params(model, x, t, y=None, seed=0):
  """Random O(1)-output parameters without compiling `init` (threefry init is slow on CPU).

  Every tensor is non-zero, unlike the DDPM init whose zero-ish layers hide most paths.
  """
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t, y))["params"]
  rng = np.random.RandomState(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.endswith("['kernel']"):
      std = 1.0 / np.sqrt(np.prod(leaf.shape[:-1]))
    elif name.endswith("['embedding']"):
      std = 1.0
    else:
      std = 0.1
    base = 1.0 if name.endswith("['scale']") else 0.0
    return jnp.asarray(base + std * rng.randn(*leaf.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def test_small_adm_model_runs_and_labels_matter():
  model = UNet(**_SMALL, num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True,
               num_classes=10, out_ch=6, skip_rescale=True)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
  t, y = jnp.array([3, 700], jnp.int32), jnp.array([0, 9], jnp.int32)
  params = _random_params(model, x, t, y)
  apply = jax.jit(model.apply)
  a = np.asarray(apply({"params": params}, x, t, y))
  b = np.asarray(apply({"params": params}, x, t, jnp.array([5, 2], jnp.int32)))
  assert a.shape == (2, 8, 8, 6) and np.all(np.isfinite(a))
  assert np.abs(a - b).max() > 1e-3


def test_default_init_is_ddpm_variance_scaling():
  # DDPM nn.default_init: variance_scaling(scale, 'fan_avg', 'uniform'), scale 0 -> 1e-10.
  shape = (3, 3, 64, 128)
  fan_avg = 9 * (64 + 128) / 2
  for scale in (1.0, 0.0):
    w = np.asarray(layers.default_init(scale)(jax.random.PRNGKey(0), shape))
    limit = np.sqrt(3 * (scale or 1e-10) / fan_avg)
    assert np.abs(w).max() <= limit
    np.testing.assert_allclose(w.std(), limit / np.sqrt(3), rtol=0.02)


# ------------------------------------------------------------------------------ train / dtype


def _tiny(**kw):
  return UNet(**{**_SMALL, "dropout": 0.5, **kw})


def _tiny_inputs():
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
  return x, jnp.array([10, 500], jnp.int32)


def test_dropout_only_in_train_and_driven_by_rng():
  model = _tiny()
  x, t = _tiny_inputs()
  params = _random_params(model, x, t)
  apply = jax.jit(lambda p, k, train: model.apply({"params": p}, x, t, train=train,
                                                  rngs={"dropout": k}), static_argnums=2)
  k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
  e1 = np.asarray(apply(params, k1, False))
  d1, d1b, d2 = (np.asarray(apply(params, k, True)) for k in (k1, k1, k2))
  np.testing.assert_array_equal(d1, d1b)
  assert np.abs(d1 - d2).max() > 1e-3
  assert np.abs(d1 - e1).max() > 1e-3
  with pytest.raises(Exception, match="dropout"):
    jax.eval_shape(lambda p: model.apply({"params": p}, x, t, train=True), params)


class _Dropout(nn.Module):
  """example_dropout inside a module, as a ResBlock calls it."""
  rate: float

  @nn.compact
  def __call__(self, x, keys=None):
    return layers.example_dropout(self, x, self.rate, keys)


class _TwoDropouts(nn.Module):

  @nn.compact
  def __call__(self, x, keys):
    return _Dropout(0.25, name="a")(x, keys), _Dropout(0.25, name="b")(x, keys)


def test_example_dropout_masks_follow_each_examples_key():
  x = jnp.ones((4, 16, 16, 8))
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(5), i))(jnp.arange(4))
  out = np.asarray(_Dropout(0.25).apply({}, x, keys))
  # Inverted dropout: kept units are 1 / (1 - rate), the rest 0, about 25% of them.
  np.testing.assert_allclose(np.unique(out), [0.0, 4 / 3], rtol=1e-6)
  assert abs((out == 0).mean() - 0.25) < 0.02
  # Example i's mask depends on key i only: the same from a batch of one or another batch.
  for i in range(4):
    np.testing.assert_array_equal(_Dropout(0.25).apply({}, x[:1], keys[i:i + 1])[0], out[i])
  assert not np.array_equal(out[0], out[1])
  # Two layers (two module paths) draw different masks from the same keys.
  a, b = _TwoDropouts().apply({}, x, keys)
  assert not np.array_equal(a, b)


def test_per_example_dropout_in_the_unet_does_not_depend_on_the_batch_split():
  model = _tiny()
  x, t = _tiny_inputs()
  params = _random_params(model, x, t)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(7), i))(jnp.arange(2))
  apply = jax.jit(lambda x, t, k: model.apply({"params": params}, x, t, train=True,
                                              dropout_keys=k))
  both = np.asarray(apply(x, t, keys))
  halves = np.concatenate([apply(x[i:i + 1], t[i:i + 1], keys[i:i + 1]) for i in range(2)])
  np.testing.assert_allclose(halves, both, rtol=1e-5, atol=1e-5)
  swapped = np.asarray(apply(x, t, keys[::-1]))  # other masks: other outputs
  assert np.abs(swapped - both).max() > 1e-3
  eval_out = np.asarray(jax.jit(lambda: model.apply({"params": params}, x, t))())
  assert np.abs(both - eval_out).max() > 1e-3


def test_bfloat16_compute_keeps_float32_params_and_output():
  x, t = _tiny_inputs()
  f32 = _tiny(dropout=0.0)
  bf16 = _tiny(dropout=0.0, dtype="bfloat16")
  params = jax.eval_shape(bf16.init, jax.random.PRNGKey(0), x, t)["params"]
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(params))
  params = _random_params(f32, x, t)
  ref = np.asarray(jax.jit(f32.apply)({"params": params}, x, t))
  got = jax.jit(bf16.apply)({"params": params}, x, t)
  assert got.dtype == jnp.float32
  # bf16 has 8 mantissa bits: relative error ~1e-2 through the network.
  err = np.abs(np.asarray(got) - ref).max() / np.abs(ref).max()
  assert err < 5e-2, err
  assert err > 0  # really computed in low precision


def test_gradients_reach_every_parameter():
  model = _tiny(dropout=0.1, num_head_channels=16)
  x, t = _tiny_inputs()
  params = _random_params(model, x, t)

  def loss(p):
    out = model.apply({"params": p}, x, t, train=True, rngs={"dropout": jax.random.PRNGKey(3)})
    return jnp.mean((out - x) ** 2)

  grads = jax.jit(jax.grad(loss))(params)
  zero = [jax.tree_util.keystr(p) for p, g in jax.tree_util.tree_leaves_with_path(grads)
          if not np.any(np.asarray(g))]
  assert not zero, zero


@pytest.mark.parametrize("scale_shift", [False, True])
def test_remat_computes_the_same_with_the_same_parameters(scale_shift):
  """remat=True recomputes the residual blocks in the backward pass: same parameter tree, same
  output and gradients (with per-example dropout), and the gradient's program runs every block's
  first convolution twice (the second one's output is not needed backwards). (XLA:CPU drops the barriers that keep the recomputation apart and merges
  it back, so the memory saved shows on accelerators only: `python -m bench.gpu --remat`.)"""
  x, t = _tiny_inputs()
  plain = _tiny(dropout=0.1, use_scale_shift_norm=scale_shift)
  remat = plain.clone(remat=True)
  params = _random_params(plain, x, t)
  assert (jax.tree.map(jnp.shape, _init_shapes(remat, x.shape[1], x.shape[-1]))
          == jax.tree.map(jnp.shape, params))
  keys = jax.random.split(jax.random.PRNGKey(3), x.shape[0])

  def loss(model, p):
    return jnp.mean((model.apply({"params": p}, x, t, train=True, dropout_keys=keys) - x) ** 2)

  grad = {m.remat: jax.jit(jax.value_and_grad(functools.partial(loss, m))) for m in (plain, remat)}
  (loss_plain, g_plain), (loss_remat, g_remat) = grad[False](params), grad[True](params)
  np.testing.assert_allclose(loss_remat, loss_plain, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g_remat,
               g_plain)
  convs = {k: str(jax.make_jaxpr(g)(params)).count("conv_general_dilated") for k, g in grad.items()}
  forward = str(jax.make_jaxpr(lambda p: plain.apply({"params": p}, x, t))(params))
  blocks = sum("conv1" in block for block in params.values())
  assert convs[True] == convs[False] + blocks, (convs, blocks)
  assert forward.count("conv_general_dilated") < convs[False]


# --------------------------------------------------------------------------------- validation


def _abstract_init(model, *args):
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args))


def test_rejects_image_size_not_divisible():
  model = UNet()
  with pytest.raises(ValueError, match=r"not divisible by 2\*\*\(len\(ch_mult\)-1\) = 8"):
    _abstract_init(model, jnp.zeros((1, 20, 20, 3)), jnp.zeros((1,), jnp.int32))


def test_rejects_bad_labels_and_timesteps():
  x, t = jnp.zeros((2, 8, 8, 3)), jnp.zeros((2,), jnp.int32)
  with pytest.raises(ValueError, match="num_classes"):
    _abstract_init(_tiny(num_classes=10), x, t)
  with pytest.raises(ValueError, match="num_classes"):
    _abstract_init(_tiny(), x, t, jnp.zeros((2,), jnp.int32))
  with pytest.raises(ValueError, match=r"t must"):
    _abstract_init(_tiny(), x, jnp.zeros((), jnp.int32))
  with pytest.raises(ValueError, match="temb_convention"):
    _abstract_init(_tiny(temb_convention="adm"), x, t)
  with pytest.raises(ValueError, match="num_head_channels"):
    _abstract_init(_tiny(num_head_channels=24), x, t)


def test_config_lists_are_accepted_and_module_is_hashable():
  model = UNet(ch=32, ch_mult=[1, 2], attn_resolutions=[4], num_res_blocks=1)
  assert model.ch_mult == (1, 2) and model.attn_resolutions == (4,)
  hash(model)
  assert _count(model, 8) == _count(UNet(ch=32, ch_mult=(1, 2), attn_resolutions=(4,),
                                         num_res_blocks=1), 8)


def test_defaults_are_the_ddpm_cifar10_layout():
  m = UNet()
  assert (m.ch, m.ch_mult, m.num_res_blocks, m.attn_resolutions, m.dropout) == (
      128, (1, 2, 2, 2), 2, (16,), 0.1)
  assert m.norm_eps == 1e-6 and m.temb_convention == "ddpm" and m.downsample_padding == 0
