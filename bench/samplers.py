"""Fast samplers: accuracy on an exact denoiser (fixed budgets and the adaptive PF-ODE),
Analytic-DPM's bound, SDE samplers on the exact score, and speed against diffusers.

  python -m bench.samplers                          # all five parts, small defaults (minutes)
  python -m bench.samplers --parts=accuracy --nfe=10,15,20,50,100
  python -m bench.samplers --parts=sde --sde_nfe=50,100,200,500,1000
  python -m bench.samplers --parts=accuracy,adaptive --tolerances=1e-3,1e-5 --solvers=tsit5
  python -m bench.samplers --parts=speed --speed_models=digits,cifar10 --cifar_batch=8
  python -m bench.samplers --parts=speed --speed_models=digits --xla_cpu_ynnpack=off

accuracy: data is a Gaussian mixture, so E[x_0 | x_t] is exact and any error is the sampler's.
  Every sampler starts from the same x_T at step T-1 of the linear T = 1000 schedule; its result
  is compared with the exact probability-flow ODE solution from the same x_T, integrated in
  float64 with scipy's DOP853 (rtol 1e-11) in the EDM form dy/ds = (y - D(y; s)) / s, y = x/alpha,
  s = sigma/alpha. Samplers ending with a jump to sigma = 0 (final=zero; DDIM always) are compared
  with the ODE solution at sigma = 0, samplers stopping at sigma_min with the solution at step 0.
  Error: RMS over all pixels of the batch. "slope" is the least-squares slope of log(error) vs
  log(NFE), the empirical convergence order.
adaptive: the probability-flow ODE solved by diffrax's adaptive Runge-Kutta solvers at several
  tolerances (`samplers.ode.ode_sample`), NFE and error against the same exact solution.
analytic: the variational bound (bits/dim) of the DDPM-type reverse process on K-step sub-chains
  with fixedlarge, fixedsmall and Analytic-DPM variances (same x_t draws for all three; the mixture
  samples are quantized to 8 bits; Gamma_n from 512 Monte-Carlo samples).
sde: the stochastic samplers of the score SDEs (predictors with and without the Langevin corrector,
  corrector-only, NCSN's annealed Langevin) and two ODE solvers as peers, with the mixture's exact
  score on the VP and VE SDEs. A stochastic sampler has no pathwise reference, so the error is
  distributional: the Frechet distance between the samples' mean / covariance and the mixture's
  exact ones, and the total variation between the samples' component frequencies (each sample
  assigned to its most probable component) and the weights. "exact samples" draws as many points
  from the mixture itself: the floor that sampling error alone leaves. NFE counts every score
  evaluation (predictor, corrector and the final denoising step).
speed: samples/s of whole sampling loops, our jitted samplers vs diffusers' schedulers driving the
  same-config PyTorch UNet2DModel (randomly initialised: speed does not depend on the weights),
  converted weights so both compute the same function; alternated runs, medians.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import losses, schedules, sde as sde_lib, xla_flags
from diffusion_jax.evaluation import frechet_distance
from diffusion_jax.gaussian_mixture import GaussianMixture
from diffusion_jax.samplers import analytic, ddim, dpm_solver, edm, grids, langevin, ode, pc

T = 1000


# ------------------------------------------------------------------------------------------------
# The exact probability-flow ODE of a Gaussian mixture, float64.


def _responsibilities64(weights, means, stds, y: np.ndarray, s: float):
  """Posterior component probabilities [B, K] and residuals y - mu_k [B, K, D] for y = x_0 + s n."""
  var = stds**2 + s**2                                       # [K]
  resid = y[:, None, :] - means[None]                        # [B, K, D]
  dim = y.shape[-1]
  log_lik = -0.5 * (np.sum(resid**2, -1) / var + dim * np.log(2 * np.pi * var)) + np.log(weights)
  resp = np.exp(log_lik - log_lik.max(-1, keepdims=True))
  return resp / resp.sum(-1, keepdims=True), resid, var


def mixture_denoiser64(weights, means, stds, y: np.ndarray, s: float) -> np.ndarray:
  """E[x_0 | y] for y = x_0 + s n (y = x_t / alpha, s = sigma / alpha), float64 [B, D]."""
  resp, resid, var = _responsibilities64(weights, means, stds, y, s)
  return np.einsum("bk,bkd->bd", resp, means[None] + (stds**2 / var)[None, :, None] * resid)


def exact_pf_ode(weights, means, stds, x_start: np.ndarray, abar_start: float, abar_end: float
                 ) -> np.ndarray:
  """Solves the probability-flow ODE from x_start at abar_start to abar_end (1.0 = sigma 0).

  In y = x / alpha, s = sigma / alpha the ODE is dy/ds = (y - D(y; s)) / s (Karras et al. Eq. 4
  with D = E[x_0 | x]), smooth down to s = 0 for components with positive std.

  Args:
    weights [K], means [K, D], stds [K]: the mixture (float64).
    x_start: [B, D].
  Returns:
    x at abar_end, float64 [B, D].
  """
  from scipy.integrate import solve_ivp
  weights, means, stds = (np.asarray(a, np.float64) for a in (weights, means, stds))
  shape = x_start.shape
  s0 = np.sqrt((1 - abar_start) / abar_start)
  s1 = np.sqrt((1 - abar_end) / abar_end)
  y0 = np.asarray(x_start, np.float64) / np.sqrt(abar_start)

  def rhs(s, y):
    # (y - D(y; s)) / s = sum_k p(k | y) s / (s_k^2 + s^2) (y - mu_k): no division by s.
    resp, resid, var = _responsibilities64(weights, means, stds, y.reshape(shape), s)
    return np.einsum("bk,bkd->bd", resp * (s / var)[None], resid).ravel()

  sol = solve_ivp(rhs, (s0, s1), y0.ravel(), method="DOP853", rtol=1e-11, atol=1e-12)
  assert sol.success, sol.message
  return sol.y[:, -1].reshape(shape) * np.sqrt(abar_end)


def make_mixture(dim_shape=(4, 4, 3), num_components=4, seed=0):
  rng = np.random.default_rng(seed)
  weights = rng.dirichlet(np.full(num_components, 3.0))
  means = rng.uniform(-0.7, 0.7, (num_components,) + dim_shape)
  stds = rng.uniform(0.1, 0.3, num_components)
  return GaussianMixture.create(weights, means, stds), (weights, means.reshape(num_components, -1), stds)


def continuous_eps_fn(mixture: GaussianMixture, schedule: schedules.DiffusionSchedule):
  """The mixture's exact eps at any (float) timestep of the continuous-time process."""
  return continuous_model_fn(mixture, schedule, "eps")


def continuous_model_fn(mixture: GaussianMixture, schedule: schedules.DiffusionSchedule,
                        mean_type: str = "eps"):
  """The mixture's exact eps, x0, v or score (of x_t) at any (float) timestep, as a model_fn."""
  def model(x, t):
    abar = grids.alphas_cumprod_at(schedule, t)
    a = abar.reshape((-1,) + (1,) * (x.ndim - 1))
    x0 = mixture.posterior_mean(x, abar)
    eps = (x - jnp.sqrt(a) * x0) / jnp.sqrt(1.0 - a)
    return {"eps": eps, "x0": x0, "v": jnp.sqrt(a) * eps - jnp.sqrt(1.0 - a) * x0,
            "score": -eps / jnp.sqrt(1.0 - a)}[mean_type]
  return model


# ------------------------------------------------------------------------------------------------
# Accuracy.


def _accuracy_methods():
  """(name, final, fn(model, schedule, shape, x_T, nfe))."""
  def dpm(order, method, algorithm, time_grid="logSNR", final="zero", **kw):
    return lambda m, s, shape, x, n: dpm_solver.dpm_solver_sample(
        m, s, shape, jax.random.PRNGKey(0), num_steps=n, order=order, method=method,
        algorithm=algorithm, time_grid=time_grid, final=final, x_T=x, **kw)

  def ddim_fn(spacing):
    return lambda m, s, shape, x, n: ddim.ddim_sample_loop(
        m, s, shape, jax.random.PRNGKey(0), num_steps=n, spacing=spacing, clip_denoised=False, x_T=x)

  def edm_heun(m, s, shape, x, n):
    # N Heun steps cost 2N - 1 evaluations: the largest N within the column's budget.
    return edm.heun_sample(m, s, shape, jax.random.PRNGKey(0), num_steps=(n + 1) // 2, x_T=x)

  def diffusers_grid(order):
    # diffusers' default: timesteps linspace(0, T-1, n+1).round()[::-1][:-1], then x0 jump.
    return lambda m, s, shape, x, n: dpm_solver.dpm_solver_sample(
        m, s, shape, jax.random.PRNGKey(0), num_steps=n, order=order, final="zero", x_T=x,
        timesteps=np.linspace(0, T - 1, n + 1).round()[::-1][:-1])

  return [
      ("DDIM (uniform)", "zero", ddim_fn("uniform")),
      ("DDIM (quadratic)", "zero", ddim_fn("quadratic")),
      ("DDIM (karras)", "zero", ddim_fn("karras")),
      ("DPM-Solver-1", "zero", dpm(1, "singlestep", "dpmsolver")),
      ("DPM-Solver-2 (single)", "zero", dpm(2, "singlestep", "dpmsolver")),
      ("DPM-Solver-3 (single)", "zero", dpm(3, "singlestep", "dpmsolver")),
      ("DPM-Solver-2M", "zero", dpm(2, "multistep", "dpmsolver")),
      ("DPM-Solver-3M", "zero", dpm(3, "multistep", "dpmsolver")),
      ("DPM-Solver++-2 (single)", "zero", dpm(2, "singlestep", "dpmsolver++")),
      ("DPM-Solver++-3 (single)", "zero", dpm(3, "singlestep", "dpmsolver++")),
      ("DPM-Solver++(2M)", "zero", dpm(2, "multistep", "dpmsolver++")),
      ("DPM-Solver++(3M)", "zero", dpm(3, "multistep", "dpmsolver++")),
      ("DPM-Solver++(2M) time_uniform", "zero", dpm(2, "multistep", "dpmsolver++", "time_uniform")),
      ("DPM-Solver++(2M) time_quadratic", "zero", dpm(2, "multistep", "dpmsolver++", "time_quadratic")),
      ("DPM-Solver++(2M) karras", "zero", dpm(2, "multistep", "dpmsolver++", "karras")),
      ("DPM-Solver++(3M) karras", "zero", dpm(3, "multistep", "dpmsolver++", "karras")),
      ("DPM-Solver++(2M) sigma_min", "sigma_min", dpm(2, "multistep", "dpmsolver++", final="sigma_min")),
      ("DPM-Solver++(3M) sigma_min", "sigma_min", dpm(3, "multistep", "dpmsolver++", final="sigma_min")),
      ("DPM-Solver-3 (single) sigma_min", "sigma_min", dpm(3, "singlestep", "dpmsolver", final="sigma_min")),
      ("DPM-Solver++(3M) sigma_min, no lower-order final", "sigma_min",
       dpm(3, "multistep", "dpmsolver++", final="sigma_min", lower_order_final=False)),
      ("EDM Heun, NFE 2N-1 <= column", "zero", edm_heun),
      ("++(2M) on diffusers' default grid", "zero", diffusers_grid(2)),
      ("++(3M) on diffusers' default grid", "zero", diffusers_grid(3)),
  ]


def _accuracy_problem(batch, seed):
  """(schedule, exact eps model, shape, x_T, {"zero": x at sigma 0, "sigma_min": x at step 0})."""
  schedule = schedules.DiffusionSchedule.from_betas(schedules.get_beta_schedule("linear", T))
  abar64 = np.cumprod(1 - schedules.get_beta_schedule("linear", T))
  mixture, (w, mu, sd) = make_mixture(seed=seed)
  shape = (batch,) + mixture.event_shape
  x_T = jax.random.normal(jax.random.PRNGKey(seed + 1), shape)
  x_T64 = np.asarray(x_T, np.float64).reshape(batch, -1)
  refs = {"zero": exact_pf_ode(w, mu, sd, x_T64, abar64[-1], 1.0),
          "sigma_min": exact_pf_ode(w, mu, sd, x_T64, abar64[-1], abar64[0])}
  return schedule, continuous_eps_fn(mixture, schedule), shape, x_T, refs


def accuracy(nfes, batch, seed=0):
  t0 = time.perf_counter()
  schedule, model, shape, x_T, refs = _accuracy_problem(batch, seed)
  print(f"exact ODE solutions: {time.perf_counter() - t0:.1f}s; "
        f"|x0(ODE, sigma=0) - x(ODE, sigma_min)| RMS = {np.sqrt(np.mean((refs['zero'] - refs['sigma_min'])**2)):.2e}")
  rows = []
  for name, final, fn in _accuracy_methods():
    errs, errs_vs_data = [], []
    for n in nfes:
      x = np.asarray(jax.jit(lambda xt: fn(model, schedule, shape, xt, n))(x_T), np.float64).reshape(batch, -1)
      errs.append(np.sqrt(np.mean((x - refs[final]) ** 2)))
      errs_vs_data.append(np.sqrt(np.mean((x - refs["zero"]) ** 2)))
    slope = -np.polyfit(np.log(nfes), np.log(errs), 1)[0]
    rows.append((name, final, errs, slope, errs_vs_data))
  header = "| sampler | ends | " + " | ".join(f"NFE {n}" for n in nfes) + " | slope |"
  print("\nRMS error to the exact probability-flow ODE solution (same x_T; Gaussian mixture, "
        f"D={int(np.prod(shape[1:]))}, batch {batch}, linear T=1000)\n")
  print(header)
  print("|" + "---|" * (len(nfes) + 3))
  for name, final, errs, slope, _ in rows:
    print(f"| {name} | {final} | " + " | ".join(f"{e:.2e}" for e in errs) + f" | {slope:.2f} |")
  print("\nThe sigma_min rows measured against the ODE solution at sigma = 0 (the data) instead:")
  for name, final, _, _, errs0 in rows:
    if final == "sigma_min":
      print(f"| {name} | vs sigma=0 | " + " | ".join(f"{e:.2e}" for e in errs0) + " |")
  return rows


def adaptive(batch, tolerances, solvers, seed=0):
  """The probability-flow ODE with diffrax's adaptive solvers: error vs NFE at several tolerances.

  Same mixture, schedule and x_T as `accuracy`. The ODE stops at step 0 (sigma_min) and is
  compared with the exact solution there; with the final Tweedie step (denoise) it is compared
  with the solution at sigma = 0, like the "zero" rows of the fixed-budget table.
  """
  schedule, model, shape, x_T, refs = _accuracy_problem(batch, seed)
  rms = lambda x, ref: float(np.sqrt(np.mean((np.asarray(x, np.float64).reshape(batch, -1) - ref) ** 2)))
  print("\nProbability-flow ODE, diffrax adaptive solvers (PID controller, rtol = atol; same mixture "
        "and x_T as above; NFE from diffrax's step counts)\n")
  print("| solver | rtol = atol | NFE | steps (rejected) | RMS error at sigma_min | NFE with denoise | RMS error at 0 |")
  print("|---|---|---|---|---|---|---|")
  rows = []
  for solver in solvers:
    for tol in tolerances:
      run = jax.jit(lambda x, denoise: ode.ode_sample(model, schedule, shape, None, solver=solver, rtol=tol,
                                                       atol=tol, denoise=denoise, x_T=x, return_stats=True),
                    static_argnums=1)
      x_min, stats = run(x_T, False)
      x_0, stats_0 = run(x_T, True)
      row = (solver, tol, int(stats.nfe), rms(x_min, refs["sigma_min"]), int(stats_0.nfe), rms(x_0, refs["zero"]))
      rows.append(row)
      print(f"| {solver} | {tol:.0e} | {row[2]} | {int(stats.num_steps)} ({int(stats.num_rejected_steps)}) | "
            f"{row[3]:.2e} | {row[4]} | {row[5]:.2e} |", flush=True)
  return rows


# ------------------------------------------------------------------------------------------------
# Analytic-DPM.


def analytic_bpd(step_counts, batch, mc_samples, seed=0):
  betas = schedules.get_beta_schedule("linear", T)
  schedule = schedules.DiffusionSchedule.from_betas(betas)
  mixture, _ = make_mixture(seed=seed)
  eps_fn = mixture.eps_model_fn(schedule)
  data, _ = mixture.sample(jax.random.PRNGKey(seed + 2), mc_samples + batch)
  data = jnp.clip(jnp.round((data + 1) * 127.5) / 127.5 - 1, -1, 1)   # 8-bit data for the decoder
  x_eval, x_mc = data[:batch], data[batch:]
  needed = np.unique(np.concatenate([ddim.resolve_timesteps(schedule, k, None) for k in step_counts]))
  ms_eps = analytic.eps_mean_square(eps_fn, schedule, x_mc, jax.random.PRNGKey(seed + 3), timesteps=needed)
  print(f"\nVariational bound (bits/dim) of the DDPM-type reverse process on K-step sub-chains "
        f"(uniform grid from T-1 to 0; Gaussian mixture, 8-bit, D={int(np.prod(mixture.event_shape))}, "
        f"{batch} test points, Gamma from {mc_samples} MC samples)\n")
  print("| K | fixedlarge (beta) | fixedsmall (beta-tilde) | Analytic-DPM | beta-tilde <= sigma*^2 <= beta |")
  print("|---|---|---|---|---|")
  rows = []
  for k in step_counts:
    grid = ddim.resolve_timesteps(schedule, k, None)
    sub, _ = schedules.respace(betas, grid)
    sigma2, _ = analytic.analytic_variance(schedule, ms_eps, grid, eta=1.0)
    log_var = np.zeros(T)
    log_var[grid] = np.log(sigma2)
    # The decoder (last step) keeps the fixed variances' value, as in Analytic-DPM's code, so the
    # comparison isolates the KL terms.
    log_var[grid[-1]] = float(sub.posterior_log_variance_clipped[0])
    res = {}
    for name, fn, var_type in (("fixedlarge", eps_fn, "fixedlarge"), ("fixedsmall", eps_fn, "fixedsmall"),
                               ("analytic", analytic.with_log_variance(eps_fn, log_var), "learned")):
      terms = losses.calc_bpd_loop(fn, sub, x_eval, jax.random.PRNGKey(seed + 4), mean_type="eps",
                                   var_type=var_type)
      res[name] = float(jnp.mean(terms.total_bpd))
    small = np.asarray(sub.posterior_variance, np.float64)[::-1][:-1]
    large = np.asarray(sub.betas, np.float64)[::-1][:-1]
    inside = np.all(sigma2[:-1] >= small * (1 - 1e-6)) and np.all(sigma2[:-1] <= large * (1 + 1e-4))
    rows.append((k, res))
    print(f"| {k} | {res['fixedlarge']:.3f} | {res['fixedsmall']:.3f} | {res['analytic']:.3f} | {inside} |")
  return rows


# ------------------------------------------------------------------------------------------------
# SDE samplers on the exact score.


def _sde_methods(snr_vp, snr_ve):
  """(name, sde, fn(sde, score_fn, shape, key, nfe) or None where the NFE does not fit)."""
  vp, ve = sde_lib.VPSDE(), sde_lib.VESDE(sigma_min=0.01, sigma_max=5.0)

  def predictor(name, corrector, snr=0.0, discrete=False):
    def run(sde, score_fn, shape, key, nfe):
      points = nfe // 2 if corrector == "langevin" else nfe   # a corrector doubles the cost per point
      if discrete:  # the discrete predictors walk the SDE's own steps: N = points
        if isinstance(sde, sde_lib.VPSDE) and points <= sde.beta_max:
          return None
        sde = dataclasses.replace(sde, N=points)
      return jax.jit(lambda k: pc.pc_sample_loop(score_fn, sde, shape, k, predictor=name, corrector=corrector,
                                                 snr=snr, num_steps=points))(key)
    return run

  def ald(sde, score_fn, shape, key, nfe):
    # NCSN: L = 10 levels over the same sigma range, T = (NFE - 1) / L steps per level, NCSN's
    # eps = 2e-5 at sigma_L = 0.01, and the final denoising step.
    levels = dataclasses.replace(sde, N=10)
    return jax.jit(lambda k: langevin.annealed_langevin_sample(
        score_fn, levels, shape, k, n_steps_each=(nfe - 1) // 10, step_size=2e-5, init="prior"))(key)

  rows = []
  for label, sde, snr in (("VP", vp, snr_vp), ("VE", ve, snr_ve)):
    rows += [
        (f"{label} Euler-Maruyama", sde, predictor("euler_maruyama", "none")),
        (f"{label} Euler-Maruyama + Langevin", sde, predictor("euler_maruyama", "langevin", snr)),
        (f"{label} reverse diffusion", sde, predictor("reverse_diffusion", "none", discrete=True)),
        (f"{label} reverse diffusion + Langevin", sde, predictor("reverse_diffusion", "langevin", snr, True)),
        (f"{label} ancestral", sde, predictor("ancestral", "none", discrete=True)),
        (f"{label} ancestral + Langevin", sde, predictor("ancestral", "langevin", snr, True)),
        (f"{label} Langevin only", sde, predictor("none", "langevin", snr)),
    ]
  rows.append(("VE annealed Langevin (NCSN, L=10)", ve, ald))
  return rows


def sde_accuracy(nfes, num_samples, snr_vp, snr_ve, seed=0):
  mixture, (w, mu, sd) = make_mixture(seed=seed)
  dim = mu.shape[1]
  shape = (num_samples,) + mixture.event_shape
  # The mixture's exact mean and covariance: sum_k w_k (s_k^2 I + mu_k mu_k^T) - m m^T.
  mean = w @ mu
  cov = (mu.T * w) @ mu + np.sum(w * sd**2) * np.eye(dim) - np.outer(mean, mean)

  def errors(x):
    x = np.asarray(x, np.float64).reshape(num_samples, -1)
    log_joint = np.log(w) - 0.5 * (((x[:, None] - mu[None]) ** 2).sum(-1) / sd**2 + dim * np.log(sd**2))
    freq = np.bincount(log_joint.argmax(1), minlength=len(w)) / num_samples
    return frechet_distance(x.mean(0), np.cov(x, rowvar=False), mean, cov), 0.5 * np.abs(freq - w).sum()

  # The floor: the same errors for exact draws from the mixture, mean and std over 5 draws.
  draws = np.array([errors(mixture.sample(jax.random.PRNGKey(seed + 100 + i), num_samples)[0]) for i in range(5)])
  floor_mean, floor_std = draws.mean(0), draws.std(0)
  schedule = schedules.DiffusionSchedule.from_betas(schedules.get_beta_schedule("linear", T))
  ode_model = continuous_eps_fn(mixture, schedule)
  x_T = jax.random.normal(jax.random.PRNGKey(seed + 6), shape)
  peers = [("VP DDIM (eta=0, ODE)", lambda nfe: ddim.ddim_sample_loop(
               ode_model, schedule, shape, jax.random.PRNGKey(0), num_steps=nfe, clip_denoised=False, x_T=x_T)),
           ("VP DPM-Solver++(2M) (ODE)", lambda nfe: dpm_solver.dpm_solver_sample(
               ode_model, schedule, shape, jax.random.PRNGKey(0), num_steps=nfe, order=2, x_T=x_T))]
  results = []
  for name, sde, fn in _sde_methods(snr_vp, snr_ve):
    score_fn = mixture.score_fn(sde)
    cells = []
    for nfe in nfes:
      run = fn(sde, score_fn, shape, jax.random.PRNGKey(seed + 7), nfe)
      cells.append(None if run is None else errors(run))
    results.append((name, cells))
    print(f"  {name}: done", flush=True)
  for name, fn in peers:
    results.append((name, [errors(jax.jit(lambda: fn(n))()) for n in nfes]))
  print(f"\nSDE samplers with the exact score (Gaussian mixture, D={dim}, K={len(w)}, {num_samples} samples; "
        f"VP: VPSDE(0.1, 20), VE: VESDE(0.01, 5); snr {snr_vp} (VP) / {snr_ve} (VE)). Cells: Frechet "
        "distance to the mixture's exact mean and covariance / total variation of the component "
        "frequencies; '-' where the NFE does not fit (a VP chain needs N > beta_max = 20)\n")
  print("| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |")
  print("|" + "---|" * (len(nfes) + 1))
  print("| exact samples (floor: mean +- std of 5 draws) | "
        + " | ".join(f"{floor_mean[0]:.4f}+-{floor_std[0]:.4f} / {floor_mean[1]:.3f}+-{floor_std[1]:.3f}" for _ in nfes) + " |")
  for name, cells in results:
    print(f"| {name} | " + " | ".join("-" if c is None else f"{c[0]:.4f} / {c[1]:.3f}" for c in cells) + " |")
  return (floor_mean, floor_std), results


# ------------------------------------------------------------------------------------------------
# Speed.

def speed(models, batches, steps, reps, torch_threads):
  import diffusers
  import torch
  diffusers.utils.logging.set_verbosity_error()
  from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                         DPMSolverSinglestepScheduler)
  from diffusion_jax import samplers
  from bench import peers
  schedule = schedules.DiffusionSchedule.from_betas(schedules.get_beta_schedule("linear", T))
  print("\nSampling speed, samples/s (CPU, randomly initialised U-Nets of the config layouts; "
        "ours: jit, compile excluded; theirs: diffusers scheduler + UNet2DModel, torch.no_grad, "
        f"best of torch threads {torch_threads})\n")
  print("| model | batch | NFE | sampler | ours | diffusers | ours / diffusers |")
  print("|---|---|---|---|---|---|---|")
  for name in models:
    cfg, batch, nfe = peers.config(name), batches[name], steps[name]
    tmodel = peers.diffusers_unet(cfg, dropout=0.0).eval()
    net, params = peers.ours_from(tmodel, cfg, dropout=0.0)
    model_fn = lambda x, t: net.apply({"params": params}, x, t)
    size = cfg.data.image_size
    shape = (batch, size, size, cfg.data.num_channels)
    x_T = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    cases = [
        ("ancestral (DDPM, respaced)", lambda: samplers.sample(
            model_fn, schedule, shape, jax.random.PRNGKey(0), sampler="ancestral", num_steps=nfe,
            var_type="fixedsmall", x_T=x_T),
         lambda: DDPMScheduler(num_train_timesteps=T, timestep_spacing="leading"), {}),
        ("DDIM (eta=0)", lambda: ddim.ddim_sample_loop(model_fn, schedule, shape, jax.random.PRNGKey(0),
                                                       num_steps=nfe, x_T=x_T),
         lambda: DDIMScheduler(num_train_timesteps=T, timestep_spacing="leading", set_alpha_to_one=True), {}),
        ("DPM-Solver++(2M)", lambda: dpm_solver.dpm_solver_sample(
            model_fn, schedule, shape, jax.random.PRNGKey(0), num_steps=nfe, order=2, x_T=x_T),
         lambda: DPMSolverMultistepScheduler(num_train_timesteps=T, solver_order=2), {}),
        ("DPM-Solver++(3M)", lambda: dpm_solver.dpm_solver_sample(
            model_fn, schedule, shape, jax.random.PRNGKey(0), num_steps=nfe, order=3, x_T=x_T),
         lambda: DPMSolverMultistepScheduler(num_train_timesteps=T, solver_order=3), {}),
        ("DPM-Solver++-3 (singlestep)", lambda: dpm_solver.dpm_solver_sample(
            model_fn, schedule, shape, jax.random.PRNGKey(0), num_steps=nfe, order=3,
            method="singlestep", x_T=x_T),
         lambda: DPMSolverSinglestepScheduler(num_train_timesteps=T, solver_order=3,
                                              algorithm_type="dpmsolver++"), {}),
        ("Analytic-DPM (DDPM-type)", lambda: analytic.analytic_sample_loop(
            model_fn, schedule, shape, jax.random.PRNGKey(0), ms_eps=np.full(T, 0.5), num_steps=nfe, x_T=x_T),
         None, {}),
    ]
    xt = torch.from_numpy(x_T.transpose(0, 3, 1, 2).copy())
    for label, ours, make_sched, _ in cases:
      ours_jit = jax.jit(ours)
      jax.block_until_ready(ours_jit())  # compile

      def theirs():
        sched = make_sched()
        sched.set_timesteps(nfe)
        x = xt
        with torch.no_grad():
          for t in sched.timesteps:
            x = sched.step(tmodel(x, t).sample, t, x).prev_sample
        return x

      ours_t, theirs_t = [], {n: [] for n in torch_threads}
      for _ in range(reps):  # alternate, so background load hits both alike
        t0 = time.perf_counter()
        jax.block_until_ready(ours_jit())
        ours_t.append(time.perf_counter() - t0)
        if make_sched is not None:
          for n in torch_threads:
            torch.set_num_threads(n)
            t0 = time.perf_counter()
            theirs()
            theirs_t[n].append(time.perf_counter() - t0)
      o = batch / statistics.median(ours_t)
      if make_sched is not None:
        r = max(batch / statistics.median(v) for v in theirs_t.values())
        print(f"| {name} | {batch} | {nfe} | {label} | {o:.2f} | {r:.2f} | {o / r:.2f} |", flush=True)
      else:
        print(f"| {name} | {batch} | {nfe} | {label} | {o:.2f} | n/a | |", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--parts", default="accuracy,adaptive,analytic,sde,speed")
  parser.add_argument("--tolerances", default="1e-2,1e-3,1e-4,1e-5,1e-6", help="adaptive PF-ODE rtol = atol")
  parser.add_argument("--solvers", default="tsit5,dopri5,bosh3", help="adaptive PF-ODE diffrax solvers")
  parser.add_argument("--nfe", default="10,15,20,50")
  parser.add_argument("--batch", type=int, default=16, help="accuracy batch")
  parser.add_argument("--analytic_steps", default="10,25,100")
  parser.add_argument("--analytic_batch", type=int, default=128)
  parser.add_argument("--mc_samples", type=int, default=512)
  parser.add_argument("--sde_nfe", default="50,100,200,500,1000")
  parser.add_argument("--sde_samples", type=int, default=10000)
  parser.add_argument("--snr_vp", type=float, default=0.16, help="Langevin corrector's snr on the VP SDE")
  parser.add_argument("--snr_ve", type=float, default=0.16, help="Langevin corrector's snr on the VE SDE")
  parser.add_argument("--speed_models", default="digits,cifar10")
  parser.add_argument("--digits_batch", type=int, default=64)
  parser.add_argument("--cifar_batch", type=int, default=2)
  parser.add_argument("--digits_steps", type=int, default=20)
  parser.add_argument("--cifar_steps", type=int, default=10)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--torch_threads", default="1,2", help="torch thread counts tried; best reported")
  parser.add_argument("--xla_cpu_ynnpack", choices=("on", "off"), default="off",
                      help="XLA:CPU's YNNPACK fusions for the whole run (diffusion_jax.xla_flags): "
                      "off as the configs set it, or on (jaxlib's default)")
  args = parser.parse_args()
  os.environ["XLA_FLAGS"] = xla_flags.with_config_flags(  # before the first computation
      os.environ.get("XLA_FLAGS", ""), ynnpack=args.xla_cpu_ynnpack == "on")
  parts = args.parts.split(",")
  if "accuracy" in parts:
    accuracy([int(n) for n in args.nfe.split(",")], args.batch)
  if "adaptive" in parts:
    adaptive(args.batch, [float(t) for t in args.tolerances.split(",")], args.solvers.split(","))
  if "analytic" in parts:
    analytic_bpd([int(k) for k in args.analytic_steps.split(",")], args.analytic_batch, args.mc_samples)
  if "sde" in parts:
    sde_accuracy([int(n) for n in args.sde_nfe.split(",")], args.sde_samples, args.snr_vp, args.snr_ve)
  if "speed" in parts:
    speed(args.speed_models.split(","), {"digits": args.digits_batch, "cifar10": args.cifar_batch},
          {"digits": args.digits_steps, "cifar10": args.cifar_steps}, args.reps,
          [int(n) for n in args.torch_threads.split(",")])


if __name__ == "__main__":
  main()
