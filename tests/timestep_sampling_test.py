"""Tests for diffusion_jax.timestep_sampling (Improved DDPM, Sec. 3.3 importance sampling).

References are independent of the code under test: a plain-Python `collections.deque` per
timestep for the FIFO history, float64 numpy for the probabilities and weights, and exact
float64 means/variances for the Monte-Carlo unbiasedness checks.
"""

import collections
import functools

from absl.testing import absltest
import chex
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import timestep_sampling as ts

# Jitted entry points for the tests that are not about jit (eager dispatch is slow on 2 cores);
# the chex variants cover eager, jit and pmap explicitly.
_update = jax.jit(ts.update_loss_history)
_probs = jax.jit(ts.sampling_probabilities, static_argnames="uniform_prob")
_sample = jax.jit(ts.sample_timesteps, static_argnums=(1, 2),
                  static_argnames=("sampler", "uniform_prob"))


def _deque_reference(entries, num_timesteps, hist_len):
  """Plain-Python FIFO: one deque(maxlen=H) per t, appended in order. -> (losses, counts)."""
  rows = [collections.deque(maxlen=hist_len) for _ in range(num_timesteps)]
  for t, loss in entries:
    rows[int(t)].append(np.float32(loss))
  losses = np.zeros((num_timesteps, hist_len), np.float32)
  for t, row in enumerate(rows):
    losses[t, :len(row)] = list(row)
  return losses, np.array([len(r) for r in rows], np.int32)


def _reference_probs(hist_losses, uniform_prob):
  """float64 Improved-DDPM distribution: p ∝ sqrt(E[L^2]), mixed with uniform."""
  hist = np.asarray(hist_losses, np.float64)
  root = np.sqrt(np.mean(hist**2, axis=1))
  p = root / root.sum()
  return (1.0 - uniform_prob) * p + uniform_prob / hist.shape[0]


def _filled_history(per_t_scale, hist_len, rng):
  """A full history whose row t holds positive losses around per_t_scale[t]."""
  num_timesteps = len(per_t_scale)
  noise = 1.0 + 0.3 * rng.uniform(-1.0, 1.0, size=(num_timesteps, hist_len))
  losses = (np.asarray(per_t_scale)[:, None] * noise).astype(np.float32)
  return ts.LossHistory(losses=jnp.asarray(losses),
                        counts=jnp.full((num_timesteps,), hist_len, jnp.int32))


class UpdateLossHistoryTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  def test_fifo_matches_deque_with_repeated_timesteps(self):
    num_timesteps, hist_len = 6, 4
    update = self.variant(ts.update_loss_history)
    rng = np.random.default_rng(0)
    history = ts.init_loss_history(num_timesteps, hist_len)
    entries = []
    # Batch sizes 7, and 16 (> H: a row receives more than H entries in one batch).
    for n in (16, 7, 16):
      t = rng.integers(0, num_timesteps, size=n).astype(np.int32)
      if n == 16:
        t[:9] = 2  # 9 entries for t=2 in one batch: the first 5 must fall off.
        rng.shuffle(t)
      losses = rng.normal(size=n).astype(np.float32)
      history = update(history, jnp.asarray(t), jnp.asarray(losses))
      entries += list(zip(t, losses))
      ref_losses, ref_counts = _deque_reference(entries, num_timesteps, hist_len)
      np.testing.assert_array_equal(np.asarray(history.losses), ref_losses)
      np.testing.assert_array_equal(np.asarray(history.counts), ref_counts)
    self.assertEqual(history.losses.dtype, jnp.float32)
    self.assertEqual(history.counts.dtype, jnp.int32)

  def test_fifo_matches_deque_at_paper_scale(self):
    # T = 4000 (Improved DDPM CIFAR), H = 10, N = 256; t concentrated on a few hundred values
    # so rows saturate and shift.
    num_timesteps, hist_len, n = 4000, 10, 256
    update = _update
    rng = np.random.default_rng(1)
    history = ts.init_loss_history(num_timesteps, hist_len)
    entries = []
    for _ in range(6):
      t = np.concatenate([rng.integers(0, 40, n // 2), rng.integers(0, num_timesteps, n // 2)])
      t = rng.permutation(t).astype(np.int32)
      losses = rng.exponential(size=n).astype(np.float32)
      history = update(history, t, losses)
      entries += list(zip(t, losses))
    ref_losses, ref_counts = _deque_reference(entries, num_timesteps, hist_len)
    np.testing.assert_array_equal(np.asarray(history.losses), ref_losses)
    np.testing.assert_array_equal(np.asarray(history.counts), ref_counts)
    self.assertEqual(int(ref_counts.max()), hist_len)  # saturation was exercised.

  def test_out_of_range_timesteps_are_ignored(self):
    history = ts.init_loss_history(3, 2)
    t = jnp.array([0, 3, -1, 2, 0], jnp.int32)
    losses = jnp.array([1.0, 9.0, 9.0, 2.0, 3.0])
    out = _update(history, t, losses)
    ref_losses, ref_counts = _deque_reference([(0, 1.0), (2, 2.0), (0, 3.0)], 3, 2)
    np.testing.assert_array_equal(np.asarray(out.losses), ref_losses)
    np.testing.assert_array_equal(np.asarray(out.counts), ref_counts)

  def test_no_gradient_flows_into_history(self):
    history = ts.init_loss_history(4, 3)
    t = jnp.array([1, 1, 2], jnp.int32)
    grad = jax.grad(lambda l: jnp.sum(_update(history, t, l).losses))(
        jnp.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(np.asarray(grad), np.zeros(3))

  def test_rejects_mismatched_shapes(self):
    history = ts.init_loss_history(4, 3)
    with self.assertRaises(AssertionError):
      _update(history, jnp.zeros((3,), jnp.int32), jnp.zeros((4,)))


class ProbabilitiesTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  def test_probabilities_follow_sqrt_second_moment(self):
    rng = np.random.default_rng(2)
    scale = np.exp(rng.uniform(-4.0, 2.0, size=37))  # ~3 orders of magnitude across t.
    history = _filled_history(scale, 10, rng)
    # uniform_prob passed as an array: one trace serves all values (and covers traced u).
    probs_fn = self.variant(ts.sampling_probabilities)
    for uniform_prob in (0.001, 0.0, 0.5):
      probs = probs_fn(history, jnp.float32(uniform_prob))
      ref = _reference_probs(history.losses, uniform_prob)
      self.assertEqual(probs.dtype, jnp.float32)
      np.testing.assert_allclose(np.asarray(probs, np.float64), ref, rtol=2e-6, atol=0)
      self.assertAlmostEqual(float(jnp.sum(probs)), 1.0, delta=1e-6)

  def test_uniform_until_every_timestep_has_full_history(self):
    num_timesteps, hist_len = 9, 3
    rng = np.random.default_rng(3)
    history = ts.init_loss_history(num_timesteps, hist_len)
    # Fill every row except t = 4, which gets H - 1 entries; losses differ wildly across t.
    t = np.array([i for i in range(num_timesteps) for _ in range(hist_len) if i != 4]
                 + [4] * (hist_len - 1), np.int32)
    losses = (np.exp(t.astype(np.float64)) * rng.uniform(0.5, 1.5, t.size)).astype(np.float32)
    history = _update(history, t, losses)
    self.assertFalse(bool(ts.is_warmed_up(history)))
    probs = _probs(history)
    np.testing.assert_array_equal(np.asarray(probs),
                                  np.full(num_timesteps, 1.0 / num_timesteps, np.float32))
    t_s, w = _sample(jax.random.PRNGKey(0), 4096, num_timesteps,
                     sampler="loss_second_moment", history=history)
    np.testing.assert_array_equal(np.asarray(w), np.ones(4096, np.float32))
    # Uniform draws: every t appears, each within 5 sigma of 4096/9.
    counts = np.bincount(np.asarray(t_s), minlength=num_timesteps)
    expected = 4096 / num_timesteps
    sigma = np.sqrt(4096 * (1 / num_timesteps) * (1 - 1 / num_timesteps))
    self.assertLess(np.max(np.abs(counts - expected)), 5 * sigma)

    # The last missing loss switches importance sampling on.
    history = _update(history, jnp.array([4], jnp.int32), jnp.array([3.0]))
    self.assertTrue(bool(ts.is_warmed_up(history)))
    probs = _probs(history)
    np.testing.assert_allclose(np.asarray(probs, np.float64),
                               _reference_probs(history.losses, 0.001), rtol=2e-6)
    self.assertGreater(float(probs[-1] / probs[0]), 100.0)

  def test_all_zero_history_falls_back_to_uniform(self):
    history = ts.LossHistory(losses=jnp.zeros((5, 2)), counts=jnp.full((5,), 2, jnp.int32))
    probs = _probs(history)
    np.testing.assert_array_equal(np.asarray(probs), np.full(5, 0.2, np.float32))


class SampleTimestepsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  def test_weights_are_inverse_probabilities(self):
    rng = np.random.default_rng(4)
    num_timesteps = 50
    history = _filled_history(np.exp(rng.uniform(-3.0, 3.0, num_timesteps)), 10, rng)
    sample = self.variant(functools.partial(
        ts.sample_timesteps, batch_size=256, num_timesteps=num_timesteps,
        sampler="loss_second_moment", uniform_prob=0.01))
    t, w = sample(jax.random.PRNGKey(5), history=history)
    t, w = np.asarray(t), np.asarray(w)
    self.assertEqual(t.dtype, np.int32)
    self.assertEqual(w.dtype, np.float32)
    self.assertTrue(np.all((t >= 0) & (t < num_timesteps)))
    ref_p = _reference_probs(history.losses, 0.01)
    np.testing.assert_allclose(w, 1.0 / (num_timesteps * ref_p[t]), rtol=5e-6)

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  def test_uniform_sampler(self):
    sample = self.variant(functools.partial(ts.sample_timesteps, batch_size=8192,
                                            num_timesteps=16, sampler="uniform"))
    t, w = sample(jax.random.PRNGKey(6))
    np.testing.assert_array_equal(np.asarray(w), np.ones(8192, np.float32))
    counts = np.bincount(np.asarray(t), minlength=16)
    self.assertEqual(counts.size, 16)
    sigma = np.sqrt(8192 * (1 / 16) * (15 / 16))
    self.assertLess(np.max(np.abs(counts - 8192 / 16)), 5 * sigma)

  def test_sampled_frequencies_match_probabilities(self):
    rng = np.random.default_rng(7)
    num_timesteps, draws = 40, 200_000
    history = _filled_history(np.exp(rng.uniform(-3.0, 3.0, num_timesteps)), 10, rng)
    t, _ = jax.jit(functools.partial(ts.sample_timesteps, batch_size=draws,
                                     num_timesteps=num_timesteps,
                                     sampler="loss_second_moment"))(jax.random.PRNGKey(8),
                                                                    history=history)
    freq = np.bincount(np.asarray(t), minlength=num_timesteps) / draws
    p = _reference_probs(history.losses, 0.001)
    # Binomial standard error per bin; 5 sigma over 40 bins (false alarm < 1e-4).
    np.testing.assert_array_less(np.abs(freq - p), 5 * np.sqrt(p * (1 - p) / draws) + 1e-12)

  def test_importance_weighted_mean_is_unbiased(self):
    # Synthetic per-t loss spanning ~4 orders of magnitude (like L_vlb across t), history noisy
    # around it, and a per-t mismatch so importance sampling is not a zero-variance estimator.
    rng = np.random.default_rng(9)
    num_timesteps, draws = 100, 100_000
    steps = np.arange(num_timesteps)
    scale = 10.0 * np.exp(-steps / 12.0) + 1e-3
    history = _filled_history(scale, 10, rng)
    true_loss = scale * rng.uniform(0.5, 1.5, num_timesteps)  # L_t at evaluation, float64.
    mu = true_loss.mean()  # the uniform-t objective.

    t, w = jax.jit(functools.partial(ts.sample_timesteps, batch_size=draws,
                                     num_timesteps=num_timesteps,
                                     sampler="loss_second_moment"))(jax.random.PRNGKey(10),
                                                                    history=history)
    t, w = np.asarray(t), np.asarray(w, np.float64)
    weighted = w * true_loss[t]
    estimate = weighted.mean()

    # Exact per-draw variance of w_t L_t under p (float64); the mean of `draws` i.i.d. draws
    # has standard error sqrt(var / draws). Bound: 5 standard errors (two-sided
    # false-alarm probability ~6e-7 under the CLT).
    p = _reference_probs(history.losses, 0.001)
    var_is = np.sum(p * (true_loss / (num_timesteps * p))**2) - mu**2
    bound = 5.0 * np.sqrt(var_is / draws)
    self.assertLess(abs(estimate - mu), bound)

    # The bound can fail: dropping the weights (a plain mean of L_t with t ~ p) is biased far
    # beyond it.
    self.assertGreater(abs(true_loss[t].mean() - mu), 20 * bound)
    # And the point of the method: much lower variance than uniform sampling (exact values).
    var_uniform = np.mean(true_loss**2) - mu**2
    self.assertLess(var_is, 0.2 * var_uniform)
    # The empirical variance agrees with the exact one (to 10%, ample for 1e5 draws).
    np.testing.assert_allclose(weighted.var(), var_is, rtol=0.1)

  def test_uniform_sampler_is_unbiased(self):
    rng = np.random.default_rng(11)
    true_loss = 10.0 * np.exp(-np.arange(100) / 12.0) * rng.uniform(0.5, 1.5, 100)
    t, w = _sample(jax.random.PRNGKey(12), 100_000, 100, sampler="uniform")
    estimate = np.mean(np.asarray(w, np.float64) * true_loss[np.asarray(t)])
    bound = 5.0 * np.sqrt(true_loss.var() / 100_000)
    self.assertLess(abs(estimate - true_loss.mean()), bound)


class ValidationTest(absltest.TestCase):

  def test_unknown_sampler_lists_valid_values(self):
    with self.assertRaisesRegex(ValueError, r"uniform.*loss_second_moment.*'importance'"):
      ts.sample_timesteps(jax.random.PRNGKey(0), 4, 10, sampler="importance")

  def test_missing_history(self):
    with self.assertRaisesRegex(ValueError, r"loss_second_moment.*history=.*init_loss_history"):
      ts.sample_timesteps(jax.random.PRNGKey(0), 4, 10, sampler="loss_second_moment")

  def test_history_of_wrong_length(self):
    with self.assertRaisesRegex(ValueError, r"history has 5 timesteps but num_timesteps=10"):
      ts.sample_timesteps(jax.random.PRNGKey(0), 4, 10, sampler="loss_second_moment",
                          history=ts.init_loss_history(5))

  def test_bad_numbers(self):
    with self.assertRaisesRegex(ValueError, "uniform_prob must be in"):
      ts.sample_timesteps(jax.random.PRNGKey(0), 4, 10, sampler="uniform", uniform_prob=1.5)
    with self.assertRaisesRegex(ValueError, "batch_size must be"):
      ts.sample_timesteps(jax.random.PRNGKey(0), 0, 10, sampler="uniform")
    with self.assertRaisesRegex(ValueError, "history_per_term must be"):
      ts.init_loss_history(10, 0)
    with self.assertRaisesRegex(ValueError, "num_timesteps must be"):
      ts.init_loss_history(0)

  def test_init(self):
    h = ts.init_loss_history(4000)
    self.assertEqual(h.losses.shape, (4000, 10))
    self.assertEqual(h.losses.dtype, jnp.float32)
    self.assertEqual(h.counts.shape, (4000,))
    self.assertEqual(h.counts.dtype, jnp.int32)
    self.assertEqual(len(jax.tree.leaves(h)), 2)  # a pytree of two arrays (checkpointable).


class PmapTest(absltest.TestCase):

  def test_gather_and_update_keeps_replicas_equal(self):
    n_dev = jax.local_device_count()
    self.assertEqual(n_dev, 8, "tests/conftest.py should provide 8 fake CPU devices")
    num_timesteps, hist_len, per_device = 7, 4, 6
    rng = np.random.default_rng(13)
    single = ts.init_loss_history(num_timesteps, hist_len)
    replicated = jax.tree.map(lambda x: np.broadcast_to(x, (n_dev,) + x.shape), single)
    step = jax.pmap(ts.gather_and_update, axis_name="batch")
    entries = []
    for _ in range(3):
      t = rng.integers(0, num_timesteps, (n_dev, per_device)).astype(np.int32)
      losses = rng.normal(size=(n_dev, per_device)).astype(np.float32)
      replicated = step(replicated, t, losses)
      single = _update(single, t.reshape(-1), losses.reshape(-1))
      entries += list(zip(t.reshape(-1), losses.reshape(-1)))
      rep_losses, rep_counts = np.asarray(replicated.losses), np.asarray(replicated.counts)
      for d in range(n_dev):
        np.testing.assert_array_equal(rep_losses[d], np.asarray(single.losses))
        np.testing.assert_array_equal(rep_counts[d], np.asarray(single.counts))
    ref_losses, ref_counts = _deque_reference(entries, num_timesteps, hist_len)
    np.testing.assert_array_equal(np.asarray(single.losses), ref_losses)
    np.testing.assert_array_equal(np.asarray(single.counts), ref_counts)

  def test_train_step_pattern_under_pmap(self):
    # The trainer's pattern: per-device key via fold_in(axis_index), sample, weight, update.
    n_dev, num_timesteps, per_device = jax.local_device_count(), 20, 4
    true_loss = jnp.linspace(0.1, 2.0, num_timesteps)

    def step(history, key):
      key = jax.random.fold_in(key, jax.lax.axis_index("batch"))
      t, w = ts.sample_timesteps(key, per_device, num_timesteps, sampler="loss_second_moment",
                                 history=history)
      loss = jax.lax.pmean(jnp.mean(w * true_loss[t]), "batch")
      return ts.gather_and_update(history, t, true_loss[t]), loss, t

    history = ts.init_loss_history(num_timesteps, 2)
    history = jax.tree.map(lambda x: np.broadcast_to(x, (n_dev,) + x.shape), history)
    p_step = jax.pmap(step, axis_name="batch", in_axes=(0, None))
    for i in range(20):
      history, loss, t = p_step(history, jax.random.PRNGKey(i))
    t = np.asarray(t)
    self.assertGreater(len({tuple(row) for row in t}), 1)  # devices draw different t.
    for leaf in jax.tree.leaves(history):
      leaf = np.asarray(leaf)
      for d in range(1, n_dev):
        np.testing.assert_array_equal(leaf[d], leaf[0])
    self.assertTrue(bool(ts.is_warmed_up(jax.tree.map(lambda x: x[0], history))))
    # With the history holding exactly L_t, p ∝ L_t and every draw's w_t L_t equals mean(L) up
    # to the uniform mixing (u = 0.001 moves it by < 1.5% at the smallest L_t here).
    np.testing.assert_allclose(np.asarray(loss), float(jnp.mean(true_loss)), rtol=1.5e-2)


if __name__ == "__main__":
  absltest.main()
