"""Schedules against float64 closed forms, diffusers' DDPMScheduler and improved-diffusion's grids."""
import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from diffusion_jax import schedules


@pytest.mark.parametrize("ours, theirs", [("linear", "linear"), ("quad", "scaled_linear"),
                                          ("cosine", "squaredcos_cap_v2")])
@pytest.mark.parametrize("num_timesteps", [1000, 4000, 50])
def test_betas_match_diffusers(ours, theirs, num_timesteps):
  ref = DDPMScheduler(num_train_timesteps=num_timesteps, beta_schedule=theirs)
  betas = schedules.get_beta_schedule(ours, num_timesteps)
  assert betas.dtype == np.float64 and betas.shape == (num_timesteps,)
  # diffusers stores float32 tables.
  np.testing.assert_allclose(betas, ref.betas.double().numpy(), rtol=2e-6, atol=0)
  sched = schedules.DiffusionSchedule.from_betas(betas)
  np.testing.assert_allclose(sched.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=2e-5, atol=1e-9)


def test_linear_scaled_is_linear_with_rescaled_endpoints():
  ref = DDPMScheduler(num_train_timesteps=4000, beta_start=0.25e-4, beta_end=0.005)
  np.testing.assert_allclose(schedules.get_beta_schedule("linear_scaled", 4000), ref.betas.double().numpy(), rtol=2e-6)
  np.testing.assert_array_equal(schedules.get_beta_schedule("linear_scaled", 1000),
                                schedules.get_beta_schedule("linear", 1000))


def test_cosine_closed_form_float64():
  T, s = 1000, 0.008
  f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2
  expected = np.array([min(1 - f(i + 1) / f(i), 0.999) for i in range(T)])
  np.testing.assert_allclose(schedules.get_beta_schedule("cosine", T), expected, rtol=1e-13)
  assert schedules.get_beta_schedule("cosine", T)[-1] == 0.999  # the clip is active at the end


def test_ddpm_code_schedules_closed_forms():
  T = 100
  np.testing.assert_allclose(schedules.get_beta_schedule("quad", T)[[0, -1]], [1e-4, 0.02], rtol=1e-12)
  np.testing.assert_array_equal(schedules.get_beta_schedule("const", T), np.full(T, 0.02))
  np.testing.assert_allclose(schedules.get_beta_schedule("jsd", T), [1.0 / (T - i) for i in range(T)], rtol=1e-14)
  w10 = schedules.get_beta_schedule("warmup10", T)
  np.testing.assert_allclose(w10[:10], np.linspace(1e-4, 0.02, 10), rtol=1e-14)
  np.testing.assert_array_equal(w10[10:], 0.02)
  w50 = schedules.get_beta_schedule("warmup50", T)
  np.testing.assert_allclose(w50[:50], np.linspace(1e-4, 0.02, 50), rtol=1e-14)
  np.testing.assert_array_equal(w50[50:], 0.02)


def test_unknown_schedule_lists_valid_names():
  with pytest.raises(ValueError, match=r"name='lin'.*linear, quad, const, jsd, warmup10, warmup50, cosine, linear_scaled"):
    schedules.get_beta_schedule("lin", 10)


def test_coefficients_float64_closed_forms():
  betas = schedules.get_beta_schedule("linear", 1000)
  s = schedules.DiffusionSchedule.from_betas(betas)
  assert s.num_timesteps == 1000 and s.betas.dtype == np.float32
  abar = np.cumprod(1 - betas)
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  var = betas * (1 - abar_prev) / (1 - abar)          # DDPM Eq. 7
  assert var[0] == 0.0 and float(s.posterior_variance[0]) == 0.0
  np.testing.assert_allclose(s.posterior_variance, var, rtol=1e-6, atol=0)
  np.testing.assert_allclose(s.posterior_log_variance_clipped[0], np.log(var[1]), rtol=1e-6)
  np.testing.assert_allclose(s.posterior_log_variance_clipped[1:], np.log(var[1:]), rtol=1e-6)
  np.testing.assert_allclose(s.posterior_mean_coef1, np.sqrt(abar_prev) * betas / (1 - abar), rtol=1e-6)
  np.testing.assert_allclose(s.posterior_mean_coef2, np.sqrt(1 - betas) * (1 - abar_prev) / (1 - abar), rtol=1e-6)
  np.testing.assert_allclose(s.sqrt_recipm1_alphas_cumprod, np.sqrt(1 / abar - 1), rtol=1e-6)
  np.testing.assert_allclose(s.fixedlarge_log_variance, np.log(np.append(var[1], betas[1:])), rtol=1e-6)
  np.testing.assert_array_equal(s.timestep_map, np.arange(1000))


def test_extract_broadcasts_and_checks_batch():
  s = schedules.DiffusionSchedule.from_betas(schedules.get_beta_schedule("linear", 10))
  out = schedules.extract(s.betas, np.array([0, 9], np.int32), (2, 4, 4, 3))
  assert out.shape == (2, 1, 1, 1)
  np.testing.assert_allclose(out[:, 0, 0, 0], [1e-4, 0.02], rtol=1e-6)
  with pytest.raises(ValueError, match="batch size 3"):
    schedules.extract(s.betas, np.zeros(3, np.int32), (2, 4))


def test_from_betas_rejects_bad_betas():
  with pytest.raises(ValueError, match=r"\(0, 1\]"):
    schedules.DiffusionSchedule.from_betas(np.array([0.1, 0.0]))
  with pytest.raises(ValueError, match="1-D"):
    schedules.DiffusionSchedule.from_betas(np.ones((2, 2)) * 0.1)


# Grids produced by openai/improved-diffusion's respace.space_timesteps, written out.
IMPROVED_DIFFUSION_GRIDS = [
    (1000, "10", [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]),
    (1000, "10,10,10", [0, 37, 74, 111, 148, 185, 222, 259, 296, 333, 334, 371, 408, 445, 482, 518, 555,
                        592, 629, 666, 667, 704, 741, 778, 815, 851, 888, 925, 962, 999]),
    (300, "10,15,20", [0, 11, 22, 33, 44, 55, 66, 77, 88, 99, 100, 107, 114, 121, 128, 135, 142, 149, 157,
                       164, 171, 178, 185, 192, 199, 200, 205, 210, 216, 221, 226, 231, 236, 242, 247, 252,
                       257, 263, 268, 273, 278, 283, 289, 294, 299]),
    (4000, "25", [0, 167, 333, 500, 666, 833, 1000, 1166, 1333, 1500, 1666, 1833, 2000, 2166, 2333, 2499,
                  2666, 2833, 2999, 3166, 3332, 3499, 3666, 3832, 3999]),
    (1000, "ddim10", [0, 100, 200, 300, 400, 500, 600, 700, 800, 900]),
    (100, "7", [0, 16, 33, 50, 66, 82, 99]),
    (1000, "1,5", [0, 500, 625, 750, 874, 999]),
]


@pytest.mark.parametrize("num_timesteps, spec, expected", IMPROVED_DIFFUSION_GRIDS)
def test_space_timesteps_matches_improved_diffusion(num_timesteps, spec, expected):
  np.testing.assert_array_equal(schedules.space_timesteps(num_timesteps, spec), expected)
  if not spec.startswith("ddim"):  # section grids contain both ends; "ddimN" may miss T-1
    assert expected[0] == 0 and expected[-1] == num_timesteps - 1


def test_space_timesteps_errors():
  with pytest.raises(ValueError, match="holds only 10"):
    schedules.space_timesteps(10, "11")
  with pytest.raises(ValueError, match="exactly 7 steps"):
    schedules.space_timesteps(10, "ddim7")
  with pytest.raises(ValueError, match="'10,x'"):
    schedules.space_timesteps(100, "10,x")


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_respace_keeps_alpha_bar_exactly(name):
  betas = schedules.get_beta_schedule(name, 1000)
  keep = schedules.space_timesteps(1000, "50")
  sched, tmap = schedules.respace(betas, keep)
  np.testing.assert_array_equal(tmap, keep)
  np.testing.assert_array_equal(sched.timestep_map, keep)
  assert sched.num_timesteps == 50
  new_betas = np.asarray(sched.betas, np.float64)
  # float64 reference: walk the original chain, emitting 1 - abar_i / abar_last at kept steps.
  abar = np.cumprod(1 - betas)
  expected_betas, last = [], 1.0
  for i in range(1000):
    if i in set(keep.tolist()):
      expected_betas.append(1 - abar[i] / last)
      last = abar[i]
  np.testing.assert_allclose(new_betas, expected_betas, rtol=1e-6)
  np.testing.assert_allclose(sched.alphas_cumprod, abar[keep], rtol=1e-6)
  # From a float32 schedule the kept alpha-bars are still exact copies.
  sched32, _ = schedules.respace(schedules.DiffusionSchedule.from_betas(betas), keep)
  np.testing.assert_allclose(sched32.alphas_cumprod, abar[keep], rtol=1e-6)


def test_respace_of_respaced_maps_to_original_timesteps():
  base = schedules.DiffusionSchedule.from_betas(schedules.get_beta_schedule("linear", 1000))
  s1, _ = schedules.respace(base, schedules.space_timesteps(1000, "100"))
  s2, tmap = schedules.respace(s1, [0, 50, 99])
  np.testing.assert_array_equal(tmap, np.asarray(s1.timestep_map)[[0, 50, 99]])
  torch_ref = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod.numpy()
  np.testing.assert_allclose(s2.alphas_cumprod, torch_ref[tmap], rtol=2e-5)
