"""The one sampler dispatch, `samplers.sample`: names, options and agreement with the direct calls."""
import jax
import numpy as np
import pytest

from diffusion_jax import samplers, schedules
from diffusion_jax.gaussian_mixture import GaussianMixture
from diffusion_jax.samplers import analytic, ancestral, ddim, dpm_solver, edm, ode

T = 100
SHAPE = (2, 4, 4, 1)


def _setup():
  sched = schedules.DiffusionSchedule.from_betas(schedules.get_beta_schedule("linear_scaled", T))
  rng = np.random.default_rng(0)
  mixture = GaussianMixture.create([0.5, 0.5], rng.uniform(-0.5, 0.5, (2,) + SHAPE[1:]), [0.2, 0.1])
  return sched, mixture.eps_model_fn(sched)


def test_every_name_reaches_its_sampler_with_the_options(monkeypatch):
  sched, eps_fn = _setup()
  calls = []
  record = lambda name: (lambda *args, **kwargs: calls.append((name, args, kwargs)) or name)
  monkeypatch.setattr(ancestral, "p_sample_loop", record("ancestral"))
  monkeypatch.setattr(ddim, "ddim_sample_loop", record("ddim"))
  monkeypatch.setattr(dpm_solver, "dpm_solver_sample", record("dpm"))
  monkeypatch.setattr(analytic, "analytic_sample_loop", record("analytic"))
  monkeypatch.setattr(edm, "heun_sample", record("heun"))
  monkeypatch.setattr(edm, "stochastic_sample", record("stochastic"))
  monkeypatch.setattr(ode, "ode_sample", record("ode"))
  ms = np.full(T, 0.9)
  common = dict(mean_type="v", var_type="fixedsmall", clip_denoised=False, x_T=None,
                return_trajectory=False)
  expected = {
      "ancestral": ("ancestral", {}),
      "ddim": ("ddim", dict(num_steps=10, spacing="quadratic", eta=0.5)),
      "dpm_solver": ("dpm", dict(num_steps=10, order=3, method="singlestep", algorithm="dpmsolver",
                                 time_grid="karras", final="sigma_min", lower_order_final=False,
                                 thresholding=False, integer_timesteps=True)),
      "dpm_solver++": ("dpm", dict(num_steps=10, order=3, method="singlestep", algorithm="dpmsolver++",
                                   time_grid="karras", final="sigma_min", lower_order_final=False,
                                   thresholding=False, integer_timesteps=True)),
      "analytic_ddpm": ("analytic", dict(ms_eps=ms, num_steps=10, spacing="quadratic", eta=1.0,
                                         clip_last_steps=2)),
      "analytic_ddim": ("analytic", dict(ms_eps=ms, num_steps=10, spacing="quadratic", eta=0.0,
                                         clip_last_steps=2)),
      "edm_heun": ("heun", dict(num_steps=10, rho=5.0, sigma_min=None, sigma_max=2.0)),
      "edm_stochastic": ("stochastic", dict(num_steps=10, rho=7.0, sigma_min=0.1, sigma_max=None,
                                            s_churn=5.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0)),
      # num_steps is ignored (the tolerances set the cost), so it is not passed on.
      "ode": ("ode", dict(solver="dopri5", rtol=1e-4, atol=1e-5, t_min=None, denoise=False,
                          time_input="continuous", max_steps=8192, stats_callback=ode.log_stats)),
  }
  dpm_options = dict(order=3, method="singlestep", time_grid="karras", final_step="sigma_min",
                     lower_order_final=False, integer_timesteps=True)
  options = {"ancestral": {}, "ddim": dict(spacing="quadratic", eta=0.5),
             "dpm_solver": dpm_options, "dpm_solver++": dpm_options,
             "analytic_ddpm": dict(spacing="quadratic", clip_last_steps=2, ms_eps=ms),
             "analytic_ddim": dict(spacing="quadratic", clip_last_steps=2, ms_eps=ms),
             "edm_heun": dict(rho=5.0, sigma_max=2.0), "edm_stochastic": dict(sigma_min=0.1, s_churn=5.0),
             "ode": dict(solver="dopri5", rtol=1e-4, denoise=False)}
  thresholds = dict(dynamic_thresholding_ratio=0.995, sample_max_value=1.0)  # the defaults
  # The predictor-corrector and Langevin samplers are dispatched in pc_test.py.
  assert set(expected) == set(samplers.SAMPLERS) - {"pc", "annealed_langevin"}
  for name, (fn, kwargs) in expected.items():
    calls.clear()
    out = samplers.sample(eps_fn, sched, SHAPE, jax.random.PRNGKey(0), sampler=name,
                          num_steps=None if name == "ancestral" else 10, mean_type="v",
                          var_type="fixedsmall", clip_denoised=False, **options[name])
    assert out == fn and len(calls) == 1, name
    _, args, got = calls[0]
    assert args[1] is sched and args[2] == SHAPE, name
    if fn == "dpm":
      kwargs = {**kwargs, **thresholds}
    expected_common = ({k: v for k, v in common.items() if k != "return_trajectory"} if fn == "ode"
                       else common)
    assert got == {**kwargs, **expected_common}, (name, got)


def test_real_runs_match_the_direct_calls():
  sched, eps_fn = _setup()
  key = jax.random.PRNGKey(1)
  got, traj = samplers.sample(eps_fn, sched, SHAPE, key, sampler="dpm_solver++", num_steps=7,
                              method="singlestep", time_grid="karras", integer_timesteps=True,
                              return_trajectory=True)
  expected = dpm_solver.dpm_solver_sample(eps_fn, sched, SHAPE, key, num_steps=7, method="singlestep",
                                          time_grid="karras", clip_denoised=True, integer_timesteps=True)
  np.testing.assert_allclose(got, expected, atol=1e-6)
  assert traj.x.shape[1:] == SHAPE
  # ancestral with fewer steps walks the respaced chain (unchanged behaviour).
  got = samplers.sample(eps_fn, sched, SHAPE, key, sampler="ancestral", num_steps=10)
  respaced, _ = schedules.respace(sched, schedules.space_timesteps(T, [10]))
  np.testing.assert_allclose(got, ancestral.p_sample_loop(eps_fn, respaced, SHAPE, key), atol=1e-6)


def test_errors_list_the_choices():
  sched, eps_fn = _setup()
  with pytest.raises(ValueError, match="'ddim'.*'dpm_solver\\+\\+'.*'analytic_ddim'"):
    samplers.sample(eps_fn, sched, SHAPE, jax.random.PRNGKey(0), sampler="plms")
  with pytest.raises(ValueError, match="ms_eps.*eps_mean_square"):
    samplers.sample(eps_fn, sched, SHAPE, jax.random.PRNGKey(0), sampler="analytic_ddpm", num_steps=5)
  with pytest.raises(ValueError, match="time_grid"):
    samplers.sample(eps_fn, sched, SHAPE, jax.random.PRNGKey(0), sampler="dpm_solver", num_steps=5,
                    time_grid="uniform")
