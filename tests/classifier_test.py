"""ADM's noisy classifier: architecture, parameter counts, and its x_t-gradient under jit and pmap."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import guidance
from diffusion_jax.models import NoisyClassifier, UNet, classifier

TINY = dict(num_classes=10, ch=32, ch_mult=(1, 2), attn_resolutions=(4,), num_head_channels=16)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _adm_count(image_size, ch_mult, depth, ch=128, head_ch=64, classes=1000, in_ch=3, attn=(32, 16, 8)):
  """Parameters of guided-diffusion's EncoderUNetModel (attention pool, BigGAN down blocks,
  scale-shift norm), counted layer by layer from its definition."""
  emb = 4 * ch

  def res(cin, cout):  # GN, conv3x3, Linear(emb -> 2 cout), GN, conv3x3, 1x1 skip if widths differ
    return (2 * cin + 9 * cin * cout + cout + emb * 2 * cout + 2 * cout + 2 * cout + 9 * cout * cout + cout
            + (cin * cout + cout if cin != cout else 0))

  def attention(c):  # GN, qkv conv1x1, proj conv1x1
    return 2 * c + 3 * c * c + 3 * c + c * c + c

  n = ch * emb + emb + emb * emb + emb + 9 * in_ch * ch + ch
  c, size = ch, image_size
  for level, mult in enumerate(ch_mult):
    for _ in range(depth):
      n += res(c, mult * ch)
      c = mult * ch
      n += attention(c) if size in attn else 0
    if level != len(ch_mult) - 1:
      n += res(c, c)
      size //= 2
  n += 2 * res(c, c) + attention(c) + 2 * c
  return n + c * (size * size + 1) + 3 * c * c + 3 * c + c * classes + classes   # AttentionPool2d


@pytest.mark.parametrize("image_size,ch_mult,depth", [
    (64, (1, 2, 3, 4), 4), (128, (1, 1, 2, 3, 4), 2), (256, (1, 1, 2, 2, 4, 4), 2)])
def test_adm_classifier_parameter_counts(image_size, ch_mult, depth):
  model = NoisyClassifier(ch_mult=ch_mult, num_res_blocks=depth)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3)),
                                             jnp.zeros((1,), jnp.int32)))
  # 65.4M (64x64, depth 4), 42.6M (128x128), 54.1M (256x256).
  assert _count(shapes) == _adm_count(image_size, ch_mult, depth)


def test_trunk_is_the_unets_encoder():
  unet_params = jax.eval_shape(lambda: UNet(ch=32, ch_mult=(1, 2), attn_resolutions=(4,), num_head_channels=16).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,), jnp.int32)))["params"]
  cls_params = jax.eval_shape(lambda: NoisyClassifier(**TINY, resblock_updown=False, use_scale_shift_norm=False,
                                                      temb_convention="ddpm", norm_eps=1e-6,
                                                      downsample_padding=0).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,), jnp.int32)))["params"]
  head = {"norm_out", "pool"}
  assert set(cls_params) - head <= set(unet_params)
  for name in set(cls_params) - head:
    assert jax.tree_util.tree_map(lambda a: a.shape, cls_params[name]) == \
        jax.tree_util.tree_map(lambda a: a.shape, unet_params[name]), name


def _random_params(model, x, t, seed=0):
  """Random weights of the right shapes everywhere (also where the init is ~zero), from numpy:
  no init to compile, and gradients that are not trivial."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t))["params"]
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if "scale" in name:                    # GroupNorm gains
      return jnp.asarray(1.0 + 0.1 * rng.normal(size=leaf.shape), jnp.float32)
    fan_in = int(np.prod(leaf.shape[:-1])) if leaf.ndim > 1 else 100
    return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.mark.parametrize("pool", classifier.POOLS)
def test_logits_shape_and_dtype(pool):
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 1))
  t = jnp.array([0, 10, 999])
  model = NoisyClassifier(**TINY, pool=pool)
  logits = model.apply({"params": _random_params(model, x, t)}, x, t)
  assert logits.shape == (3, 10) and logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
  assert float(jnp.std(logits)) > 0.1


def test_errors_name_the_field():
  x, t = jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,), jnp.int32)
  with pytest.raises(ValueError, match="pool='max'.*'attention', 'adaptive'"):
    NoisyClassifier(**TINY, pool="max").init(jax.random.PRNGKey(0), x, t)
  with pytest.raises(ValueError, match="num_classes=1"):
    NoisyClassifier(**{**TINY, "num_classes": 1}).init(jax.random.PRNGKey(0), x, t)
  with pytest.raises(ValueError, match="not divisible by 2"):
    NoisyClassifier(**TINY).init(jax.random.PRNGKey(0), jnp.zeros((1, 7, 7, 1)), t)


def test_gradient_is_with_respect_to_x_t_only_under_jit_and_pmap():
  model = NoisyClassifier(num_classes=10, ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(),
                          num_head_channels=16)                                 # small graph: fast compiles
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 8, 8, 1))
  t = jnp.arange(8, dtype=jnp.int32) * 120
  labels = jnp.arange(8, dtype=jnp.int32) % 10
  params = _random_params(model, x, t)
  grad = lambda p, x, t, y: guidance.class_log_prob_grad(classifier.classifier_fn(model, p), x, t, y)
  log_prob = jax.jit(lambda x: guidance.class_log_prob(classifier.classifier_fn(model, params), x, t, labels))
  g = jax.jit(grad)(params, x, t, labels)
  assert g.shape == x.shape and float(jnp.abs(g).max()) > 0
  # Richardson-extrapolated central differences along a random direction, per example.
  direction = jax.random.normal(jax.random.PRNGKey(3), x.shape)
  fd = lambda h: (log_prob(x + h * direction) - log_prob(x - h * direction)) / (2 * h)
  np.testing.assert_allclose(jnp.sum(g * direction, axis=(1, 2, 3)), (4 * fd(1e-2) - fd(2e-2)) / 3,
                             rtol=1e-3, atol=1e-4)
  # Per example: moving example 0 leaves the gradients of the others unchanged.
  np.testing.assert_allclose(jax.jit(grad)(params, x.at[0].add(1.0), t, labels)[1:], g[1:], atol=1e-6)
  sharded = jax.pmap(grad, in_axes=(None, 0, 0, 0))(params, x.reshape(8, 1, 8, 8, 1), t.reshape(8, 1),
                                                    labels.reshape(8, 1))
  np.testing.assert_allclose(np.asarray(sharded).reshape(x.shape), g, atol=1e-5)
  # The parameters are frozen: log p(y | x_t) through classifier_fn passes no gradient to them.
  param_grad = jax.jit(jax.grad(lambda p: jnp.sum(guidance.class_log_prob(
      classifier.classifier_fn(model, p), x, t, labels))))(params)
  assert all(float(jnp.abs(l).max()) == 0.0 for l in jax.tree_util.tree_leaves(param_grad))
