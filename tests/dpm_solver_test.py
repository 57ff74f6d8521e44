"""DPM-Solver(++) against diffusers' DPMSolver{Multistep,Singlestep}Scheduler, DDIM, and the exact
probability-flow ODE of a Gaussian mixture (float64 scipy, bench.samplers.exact_pf_ode)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler

from bench.samplers import continuous_eps_fn, exact_pf_ode
from diffusion_jax import schedules
from diffusion_jax.gaussian_mixture import GaussianMixture
from diffusion_jax.samplers import ddim, dpm_solver, grids
from transforms import assert_jit_and_pmap_agree

T = 1000
SHAPE = (4, 4, 4, 2)


def _schedule(name="linear"):
  return schedules.DiffusionSchedule.from_betas(schedules.get_beta_schedule(name, T))


def _mixture(scale=0.8):
  rng = np.random.default_rng(0)
  means = rng.uniform(-scale, scale, (2,) + SHAPE[1:])
  return GaussianMixture.create([0.3, 0.7], means, [0.1, 0.2]), means


def _run_diffusers(sched, eps_fn, x_T):
  x = torch.from_numpy(np.array(x_T))
  for t in sched.timesteps:
    eps = eps_fn(jnp.asarray(x.numpy()), jnp.full((SHAPE[0],), int(t), jnp.int32))
    x = sched.step(torch.from_numpy(np.array(eps)), t, x).prev_sample
  return x.numpy()


def _assert_close(ours, ref):
  err = np.abs(np.asarray(ours) - ref)
  # diffusers computes alpha, sigma, lambda from float32 tables.
  assert np.median(err) < 5e-6 and err.max() < 1e-4, (np.median(err), err.max())


@pytest.mark.parametrize("order,num_steps,algorithm,final", [
    (2, 10, "dpmsolver++", "zero"), (3, 10, "dpmsolver++", "zero"), (2, 20, "dpmsolver++", "zero"),
    (3, 20, "dpmsolver++", "zero"), (3, 20, "dpmsolver", "sigma_min"), (2, 10, "dpmsolver", "sigma_min")])
def test_multistep_matches_diffusers(order, num_steps, algorithm, final):
  sched, (mixture, _) = _schedule(), _mixture()
  eps_fn = jax.jit(mixture.eps_model_fn(sched))
  ref_sched = DPMSolverMultistepScheduler(num_train_timesteps=T, solver_order=order,
                                          algorithm_type=algorithm, final_sigmas_type=final)
  ref_sched.set_timesteps(num_steps)
  x_T = jax.random.normal(jax.random.PRNGKey(order), SHAPE)
  ref = _run_diffusers(ref_sched, eps_fn, x_T)
  # diffusers' default grid, linspace(0, T-1, n+1).round()[::-1][:-1], ends at step 100 for n = 10
  # and jumps from there; ours ends at step 0 (grids.TimeGrid). Here we run on theirs.
  timesteps = ref_sched.timesteps.numpy()
  if final == "sigma_min":
    timesteps = np.append(timesteps, 0)   # their sigma_min is sigma at step 0
  ours = dpm_solver.dpm_solver_sample(eps_fn, sched, SHAPE, jax.random.PRNGKey(0), num_steps=num_steps,
                                      order=order, algorithm=algorithm, final=final,
                                      timesteps=timesteps, x_T=x_T)
  _assert_close(ours, ref)


def test_multistep_thresholding_matches_diffusers():
  # diffusers caps the threshold at sample_max_value (s = clip(q, 1, max)); with a cap that never
  # binds its s = max(q, 1) is the papers' rule with max_value = 1, so it is a reference for ours.
  sched, (mixture, _) = _schedule(), _mixture(scale=1.4)  # x0 predictions beyond [-1, 1]
  eps_fn = jax.jit(mixture.eps_model_fn(sched))
  ref_sched = DPMSolverMultistepScheduler(num_train_timesteps=T, solver_order=2, thresholding=True,
                                          dynamic_thresholding_ratio=0.9, sample_max_value=1e6)
  ref_sched.set_timesteps(10)
  x_T = jax.random.normal(jax.random.PRNGKey(9), SHAPE)
  ref = _run_diffusers(ref_sched, eps_fn, x_T)
  ours = dpm_solver.dpm_solver_sample(eps_fn, sched, SHAPE, jax.random.PRNGKey(0), num_steps=10,
                                      timesteps=ref_sched.timesteps.numpy(), thresholding=True,
                                      dynamic_thresholding_ratio=0.9, sample_max_value=1.0, x_T=x_T)
  _assert_close(ours, ref)
  plain = dpm_solver.dpm_solver_sample(eps_fn, sched, SHAPE, jax.random.PRNGKey(0), num_steps=10,
                                       timesteps=ref_sched.timesteps.numpy(), x_T=x_T)
  assert float(jnp.max(jnp.abs(ours))) <= 1.0 + 1e-6 < float(jnp.max(jnp.abs(plain)))


def _threshold_float64(x0, ratio, max_value):
  """Saharia et al. 2022 / DPM-Solver++ Sec. 5, restated: s = max(quantile_p |x0|, max_value)."""
  flat = np.abs(np.asarray(x0, np.float64)).reshape(x0.shape[0], -1)
  s = np.maximum(np.quantile(flat, ratio, axis=1), max_value).reshape(-1, 1, 1, 1)
  return np.clip(x0, -s, s) / s


def test_dynamic_threshold_does_more_than_clip():
  rng = np.random.default_rng(3)
  # Example 0 stays mostly inside [-1.3, 1.3] (plain clip then / 1.3); example 1 spreads to +-3,
  # so its threshold is its own 0.9-quantile and the whole prediction is rescaled.
  x0 = np.stack([rng.uniform(-1.2, 1.2, (4, 4, 1)), rng.uniform(-3.0, 3.0, (4, 4, 1))])
  x0 = x0.astype(np.float32)
  ours = np.asarray(dpm_solver.dynamic_threshold(jnp.asarray(x0), 0.9, 1.3))
  expected = _threshold_float64(x0, 0.9, 1.3)
  np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-7)
  clipped = np.clip(x0, -1.0, 1.0)
  assert np.abs(ours[1] - clipped[1]).max() > 0.1  # not plain clipping
  assert np.abs(ours).max() <= 1.0 + 1e-6  # always back in [-1, 1]
  s1 = np.quantile(np.abs(x0[1].astype(np.float64)), 0.9)
  assert s1 > 1.3
  np.testing.assert_allclose(ours[1], np.clip(x0[1], -s1, s1) / s1, rtol=1e-6, atol=1e-7)


def _block_orders(step_orders):
  """diffusers' per-step order list [1, 2, 3, 1, ...] -> our per-block orders [3, 1, ...]."""
  return [o for i, o in enumerate(step_orders) if i == len(step_orders) - 1 or step_orders[i + 1] == 1]


@pytest.mark.parametrize("order,algorithm", [(1, "dpmsolver++"), (2, "dpmsolver++"), (2, "dpmsolver")])
def test_singlestep_matches_diffusers(order, algorithm):
  sched, (mixture, _) = _schedule(), _mixture()
  eps_fn = jax.jit(mixture.eps_model_fn(sched))
  final = "zero" if algorithm == "dpmsolver++" else "sigma_min"
  ref_sched = DPMSolverSinglestepScheduler(num_train_timesteps=T, solver_order=order,
                                           algorithm_type=algorithm, final_sigmas_type=final)
  ref_sched.set_timesteps(11)
  x_T = jax.random.normal(jax.random.PRNGKey(order), SHAPE)
  ref = _run_diffusers(ref_sched, eps_fn, x_T)
  timesteps = ref_sched.timesteps.numpy()
  if final == "sigma_min":
    timesteps = np.append(timesteps, 0)
  orders = _block_orders(ref_sched.get_order_list(11))
  ours = dpm_solver.dpm_solver_sample(eps_fn, sched, SHAPE, jax.random.PRNGKey(0), num_steps=11,
                                      order=order, method="singlestep", algorithm=algorithm,
                                      final=final, timesteps=timesteps, orders=orders, x_T=x_T)
  _assert_close(ours, ref)


def test_singlestep_third_order_differs_from_diffusers_only_in_its_intermediate_stage():
  # Deliberate difference: our third-order singlestep forms its second intermediate point with
  # DPM-Solver's Algorithm (the phi_2 term with r2 / r1), diffusers with its second-order midpoint
  # step; both are third-order accurate, so they agree to O(h^3) but not to float tolerance.
  sched, (mixture, _) = _schedule(), _mixture()
  eps_fn = jax.jit(mixture.eps_model_fn(sched))
  ref_sched = DPMSolverSinglestepScheduler(num_train_timesteps=T, solver_order=3)
  ref_sched.set_timesteps(30)
  x_T = jax.random.normal(jax.random.PRNGKey(3), SHAPE)
  ref = _run_diffusers(ref_sched, eps_fn, x_T)
  ours = dpm_solver.dpm_solver_sample(eps_fn, sched, SHAPE, jax.random.PRNGKey(0), num_steps=30, order=3,
                                      method="singlestep", timesteps=ref_sched.timesteps.numpy(),
                                      orders=_block_orders(ref_sched.get_order_list(30)), x_T=x_T)
  err = float(jnp.sqrt(jnp.mean(jnp.square(ours - ref))))
  assert 1e-6 < err < 3e-3, err


@pytest.mark.parametrize("algorithm,schedule_name,atol", [
    ("dpmsolver", "linear", 2e-5), ("dpmsolver++", "linear", 2e-5),
    # cosine: abar_{T-1} ~ 1e-8, so x0 = (x - sigma eps) / alpha at the first step loses ~4 digits
    # to float32 cancellation in either formula; the two roundings differ by ~1e-4 at the end.
    ("dpmsolver", "cosine", 5e-4), ("dpmsolver++", "cosine", 5e-4)])
def test_first_order_equals_ddim_eta0(algorithm, schedule_name, atol):
  sched, (mixture, _) = _schedule(schedule_name), _mixture()
  eps_fn = mixture.eps_model_fn(sched)
  grid = grids.ddim_timesteps(T, 12, "quadratic")
  a = ddim.ddim_sample_loop(eps_fn, sched, SHAPE, jax.random.PRNGKey(1), timesteps=grid, clip_denoised=True)
  for method in ("multistep", "singlestep"):
    b = dpm_solver.dpm_solver_sample(eps_fn, sched, SHAPE, jax.random.split(jax.random.PRNGKey(1))[0],
                                     num_steps=12, order=1, method=method, algorithm=algorithm,
                                     timesteps=grid, clip_denoised=True)
    np.testing.assert_allclose(a, b, atol=atol)


def test_continuous_time_wrapper():
  sched = _schedule("cosine")
  abar = np.cumprod(1 - schedules.get_beta_schedule("cosine", T))
  u = np.array([0.0, 1.0, 500.0, 999.0])
  np.testing.assert_allclose(grids.lambda_at(sched, u), 0.5 * np.log(abar / (1 - abar))[u.astype(int)], rtol=1e-6)
  # log alpha is linear between steps, and lambda is inverted exactly.
  la = 0.5 * np.log(abar)
  np.testing.assert_allclose(grids.log_alpha_at(sched, 10.25), 0.75 * la[10] + 0.25 * la[11], rtol=1e-6)  # float32 betas
  v = np.linspace(0, 999, 37)
  np.testing.assert_allclose(grids.u_from_lambda(sched, grids.lambda_at(sched, v)), v, atol=1e-6)
  np.testing.assert_allclose(grids.alphas_cumprod_at(sched, jnp.array([10.25]))[0],
                             np.exp(2 * (0.75 * la[10] + 0.25 * la[11])), rtol=1e-5)


@pytest.mark.parametrize("kind", grids.TIME_GRIDS)
def test_time_grids(kind):
  sched = _schedule()
  u = grids.continuous_timesteps(sched, 11, kind)
  assert u[0] == T - 1 and u[-1] == 0 and np.all(np.diff(u) < 0)
  lam = grids.lambda_at(sched, u)
  if kind == "logSNR":
    np.testing.assert_allclose(np.diff(lam), np.full(10, (lam[-1] - lam[0]) / 10), rtol=1e-6)
  if kind == "time_uniform":
    np.testing.assert_allclose(u, np.linspace(999, 0, 11))
  if kind == "time_quadratic":  # DPM-Solver: t = (u + 1) / T uniform in sqrt(t)
    np.testing.assert_allclose(np.diff(np.sqrt((u + 1) / T)), np.full(10, (np.sqrt(1 / T) - 1) / 10), rtol=1e-9)
  for method, order in (("multistep", 3), ("singlestep", 3), ("singlestep", 2)):
    for final in grids.FINAL_STEPS:
      grid, orders = dpm_solver.make_time_grid(sched, 10, method=method, order=order, time_grid=kind,
                                               final=final)
      assert grid.u[0] == T - 1 and np.nanmin(grid.u) == 0  # contains T-1, ends at step 0 ...
      assert (final == "zero") == np.isnan(grid.u[-1])          # ... then sigma = 0 when asked
      assert (len(orders) if method == "multistep" else sum(orders)) == 10
      assert orders[-1] == 1 or final == "sigma_min"
      rounded, _ = dpm_solver.make_time_grid(sched, 10, method=method, order=order, time_grid=kind,
                                             final=final, integer_timesteps=True)
      assert rounded.integer_times and len(rounded) == len(grid)
      assert np.all(np.diff(rounded.u[np.isfinite(rounded.u)]) < 0) and rounded.u[0] == T - 1
  # 200 NFE on the logSNR grid: many points fall between steps 0 and 1 (lambda drops by 0.4
  # there); rounding pushes them apart and keeps exactly 200 distinct evaluations.
  dense, _ = dpm_solver.make_time_grid(sched, 200, time_grid=kind, integer_timesteps=True)
  assert len(np.unique(dense.model_t[:-1])) == 200 and dense.integer_times


def test_orders_follow_the_papers():
  assert dpm_solver.multistep_orders(10, 3) == [1, 2, 3, 3, 3, 3, 3, 3, 2, 1]
  assert dpm_solver.multistep_orders(20, 3) == [1, 2] + [3] * 18
  assert dpm_solver.multistep_orders(20, 3, final_zero=True)[-1] == 1
  assert dpm_solver.singlestep_orders(10, 3) == [3, 3, 3, 1]     # DPM-Solver's NFE split
  assert dpm_solver.singlestep_orders(12, 3) == [3, 3, 3, 2, 1]
  assert dpm_solver.singlestep_orders(11, 3) == [3, 3, 3, 2]
  assert dpm_solver.singlestep_orders(11, 3, final_zero=True) == [3, 3, 3, 1, 1]
  assert dpm_solver.singlestep_orders(10, 2, final_zero=True) == [2, 2, 2, 2, 1, 1]


@pytest.mark.slow
def test_convergence_order_against_exact_ode():
  """Error to the exact PF-ODE solution shrinks like NFE^-order (sigma_min end, logSNR grid)."""
  sched, (mixture, means) = _schedule(), _mixture()
  eps_fn = continuous_eps_fn(mixture, sched)
  x_T = jax.random.normal(jax.random.PRNGKey(11), SHAPE)
  abar = np.cumprod(1 - schedules.get_beta_schedule("linear", T))
  ref = exact_pf_ode([0.3, 0.7], means.reshape(2, -1), [0.1, 0.2],
                     np.asarray(x_T, np.float64).reshape(SHAPE[0], -1), abar[-1], abar[0]).reshape(SHAPE)
  # Measured local slopes (80 -> 160 -> 320 NFE): 1.0/1.0, 1.76/1.89, 2.40/2.35, 1.84/2.53: at
  # 10-50 NFE this mixture (component std 0.1) is not yet in the asymptotic regime.
  nfes = np.array([80, 160, 320])
  for order, method, algorithm, min_slope in ((1, "multistep", "dpmsolver++", 0.9),
                                              (2, "multistep", "dpmsolver++", 1.7),
                                              (3, "multistep", "dpmsolver++", 2.1),
                                              (3, "singlestep", "dpmsolver", 1.9)):
    errs = [float(jnp.sqrt(jnp.mean(jnp.square(dpm_solver.dpm_solver_sample(
        eps_fn, sched, SHAPE, jax.random.PRNGKey(0), num_steps=int(n), order=order, method=method,
        algorithm=algorithm, final="sigma_min", x_T=x_T) - ref)))) for n in nfes]
    slope = -np.polyfit(np.log(nfes), np.log(errs), 1)[0]
    assert slope > min_slope, (order, method, errs, slope)


def test_bad_options_name_the_argument():
  sched = _schedule()
  with pytest.raises(ValueError, match="order"):
    dpm_solver.make_time_grid(sched, 10, order=4)
  with pytest.raises(ValueError, match="time_grid"):
    dpm_solver.make_time_grid(sched, 10, time_grid="log")
  with pytest.raises(ValueError, match="final"):
    dpm_solver.make_time_grid(sched, 10, orders=[1] * 9 + [2])
  with pytest.raises(ValueError, match="timesteps"):
    dpm_solver.make_time_grid(sched, 10, timesteps=[999, 0])
  with pytest.raises(ValueError, match="at most"):
    dpm_solver.make_time_grid(sched, 3, orders=[2, 2, 1])
  with pytest.raises(ValueError, match="thresholding"):
    dpm_solver.dpm_solver_sample(lambda x, t: x, sched, SHAPE, jax.random.PRNGKey(0), num_steps=3,
                                 algorithm="dpmsolver", thresholding=True)


@pytest.mark.parametrize("method", ["multistep", "singlestep"])
def test_jit_and_pmap_agree(method):
  sched, (mixture, _) = _schedule(), _mixture()
  eps_fn = continuous_eps_fn(mixture, sched)
  x_T = jax.random.normal(jax.random.PRNGKey(1), SHAPE)
  assert_jit_and_pmap_agree(
      lambda x: dpm_solver.dpm_solver_sample(eps_fn, sched, SHAPE, jax.random.PRNGKey(2),
                                             num_steps=7, order=3, method=method, x_T=x), x_T)
