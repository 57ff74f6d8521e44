"""models.ops (written-out backward passes) and the optimizer's global norm, against independent
references: torch float64 autograd for GroupNorm (+ SiLU), float64 numpy sums for the bias,
AdaGN and position sums, and optax for the gradient clipping.

The whole U-Net's gradients against torch autograd through diffusers are in convert_test.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffusion_jax import train_state
from diffusion_jax.models import ops

torch = pytest.importorskip("torch")


@pytest.fixture(params=["matmul", "reduce"])
def sums(request, monkeypatch):
  """Both ways of summing over positions: products with ones (CPU) and XLA's reductions."""
  monkeypatch.setattr(ops, "_sums_by_matmul", lambda: request.param == "matmul")
  return request.param


def _torch_group_norm(x, scale, bias, d_out, groups, eps, swish):
  """Output and gradients (x, scale, bias) from torch float64 autograd, NHWC in and out."""
  xt = torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float64, requires_grad=True)
  st = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
  bt = torch.tensor(bias, dtype=torch.float64, requires_grad=True)
  y = torch.nn.functional.group_norm(xt, groups, st, bt, eps)
  if swish:
    y = torch.nn.functional.silu(y)
  y.backward(torch.tensor(d_out.transpose(0, 3, 1, 2), dtype=torch.float64))
  nhwc = lambda a: a.detach().numpy().transpose(0, 2, 3, 1)
  return nhwc(y), nhwc(xt.grad), st.grad.numpy(), bt.grad.numpy()


@pytest.mark.parametrize("shape,groups", [((4, 8, 8, 32), 8), ((2, 16, 16, 64), 32),
                                          ((3, 4, 4, 96), 8)])
@pytest.mark.parametrize("swish", [False, True])
def test_group_norm_matches_torch_float64(shape, groups, swish, sums):
  rng = np.random.default_rng(0)
  x = (rng.normal(size=shape) * 2 + 3).astype(np.float32)  # mean >> 0: cancellation would show
  scale = rng.uniform(0.5, 1.5, shape[-1]).astype(np.float32)
  bias = rng.normal(size=shape[-1]).astype(np.float32)
  d_out = rng.normal(size=shape).astype(np.float32)
  ref_y, ref_dx, ref_ds, ref_db = _torch_group_norm(x, scale, bias, d_out, groups, 1e-6, swish)

  f = lambda x, s, b: ops.group_norm(x, s, b, num_groups=groups, epsilon=1e-6, swish=swish)
  y, vjp = jax.vjp(f, x, scale, bias)
  dx, ds, db = vjp(jnp.asarray(d_out))
  for ours, ref in ((y, ref_y), (dx, ref_dx), (ds, ref_ds), (db, ref_db)):
    np.testing.assert_allclose(ours, ref, rtol=2e-5, atol=2e-5 * np.abs(ref).max())


def test_group_norm_keeps_dtypes_and_is_jittable():
  x = jnp.ones((2, 4, 4, 8), jnp.bfloat16) * jnp.arange(8, dtype=jnp.bfloat16)
  scale, bias = jnp.ones(8), jnp.zeros(8)
  f = jax.jit(lambda x, s, b: ops.group_norm(x, s, b, num_groups=2, epsilon=1e-5, swish=True))
  y = f(x, scale, bias)
  assert y.dtype == jnp.float32  # statistics and the affine map in float32
  dx, ds, db = jax.grad(lambda *a: jnp.sum(f(*a) ** 2), argnums=(0, 1, 2))(x, scale, bias)
  assert dx.dtype == jnp.bfloat16 and ds.dtype == db.dtype == jnp.float32


def test_group_norm_has_no_forward_mode():
  """Reverse mode only: jvp raises (the library never differentiates a model forward)."""
  f = lambda x: ops.group_norm(x, jnp.ones(4), jnp.zeros(4), num_groups=2, epsilon=1e-6)
  with pytest.raises(TypeError, match="custom_vjp"):
    jax.jvp(f, (jnp.ones((1, 2, 2, 4)),), (jnp.ones((1, 2, 2, 4)),))


def test_sums_match_float64(sums):
  x = np.random.default_rng(1).normal(size=(3, 5, 7, 6)).astype(np.float32)
  np.testing.assert_allclose(ops.sum_positions(x), x.astype(np.float64).sum(axis=(1, 2)),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ops.sum_rows(x), x.astype(np.float64).sum(axis=(0, 1, 2)),
                             rtol=1e-5, atol=1e-4)
  assert ops.sum_rows(x.astype(jnp.bfloat16)).dtype == jnp.float32


@pytest.mark.parametrize("per_example", [False, True])
def test_add_bias_gradient_is_the_sum_of_the_output_gradient(per_example, sums):
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
  bias = rng.normal(size=(2, 4) if per_example else (4,)).astype(np.float32)
  g = rng.normal(size=x.shape).astype(np.float32)
  y, vjp = jax.vjp(ops.add_bias, x, bias)
  np.testing.assert_allclose(y, x + (bias[:, None, None, :] if per_example else bias), rtol=1e-6)
  dx, db = vjp(jnp.asarray(g))
  np.testing.assert_array_equal(dx, g)
  axes = (1, 2) if per_example else (0, 1, 2)
  np.testing.assert_allclose(db, g.astype(np.float64).sum(axis=axes), rtol=1e-5, atol=1e-5)


def test_scale_shift_gradients_match_float64(sums):
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
  scale, shift = (rng.normal(size=(2, 4)).astype(np.float32) for _ in range(2))
  g = rng.normal(size=x.shape).astype(np.float32)
  y, vjp = jax.vjp(ops.scale_shift, x, scale, shift)
  s, x64, g64 = scale[:, None, None, :].astype(np.float64), x.astype(np.float64), g.astype(np.float64)
  np.testing.assert_allclose(y, x64 * (1 + s) + shift[:, None, None, :], rtol=1e-5, atol=1e-6)
  dx, dscale, dshift = vjp(jnp.asarray(g))
  np.testing.assert_allclose(dx, g64 * (1 + s), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dscale, (g64 * x64).sum(axis=(1, 2)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dshift, g64.sum(axis=(1, 2)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("max_norm", [1e-3, 1e3])  # clipping, and not
def test_clip_by_global_norm_equals_optax(max_norm, sums):
  rng = np.random.default_rng(4)
  tree = {"w": rng.normal(size=(3, 3, 8, 16)).astype(np.float32),
          "b": rng.normal(size=(16,)).astype(np.float32), "s": np.float32(2.0)}
  np.testing.assert_allclose(train_state.global_norm(tree), optax.global_norm(tree), rtol=1e-6)
  ours, state = train_state.clip_by_global_norm(max_norm).update(tree, optax.EmptyState())
  ref, _ = optax.clip_by_global_norm(max_norm).update(tree, optax.EmptyState())
  assert state == optax.EmptyState()
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, ref)
  if max_norm < 1:  # clipped to the bound
    np.testing.assert_allclose(optax.global_norm(ours), max_norm, rtol=1e-5)
  else:  # untouched
    jax.tree.map(np.testing.assert_array_equal, ours, tree)
