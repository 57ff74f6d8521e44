"""Runs every notebook in notebooks/ top to bottom in a fresh kernel and checks what it computed.

Each test executes one notebook with nbclient (a failing cell, including a notebook's own
asserts, fails the test), then runs one extra cell that prints the arrays behind the figures as
JSON. The checks below recompute the expected values from the papers' closed forms (float64
numpy) rather than trusting the notebook's own, and every figure must be a non-blank image.
"""
import base64
import io
import json
import math
import os
import pathlib

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from PIL import Image

from diffusion_jax import schedules

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
# ~10-30 s per notebook on 2 idle cores (a kernel, jax and the compiles), minutes under load.
pytestmark = pytest.mark.slow


def run_notebook(name: str, probe: str, monkeypatch) -> tuple[dict, list[np.ndarray]]:
  """Executes notebooks/<name> plus a `probe` cell printing JSON; returns (it, the figures)."""
  path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
  monkeypatch.setenv("PYTHONPATH", path)
  monkeypatch.delenv("XLA_FLAGS", raising=False)  # the notebooks need no fake devices
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  code_cells = [c for c in nb.cells if c.cell_type == "code"]
  assert not any(c.get("outputs") for c in code_cells), f"{name} is committed with outputs"
  nb.cells.append(nbformat.v4.new_code_cell("import json\nprint(json.dumps(" + probe + "))"))
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
  probe_out = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
  figures = []
  for cell in nb.cells:
    for out in cell.get("outputs", []):
      if "image/png" in out.get("data", {}):
        image = Image.open(io.BytesIO(base64.b64decode(out["data"]["image/png"]))).convert("L")
        figures.append(np.asarray(image, np.float64))
  return json.loads(probe_out), figures


def assert_figures_drawn(figures: list[np.ndarray], expected: int) -> None:
  assert len(figures) == expected
  for fig in figures:
    # Not blank: a fair share of non-white pixels and real contrast.
    assert np.mean(fig < 200) > 0.02 and fig.std() > 20.0


def closed_form_abar(name: str) -> np.ndarray:
  return np.cumprod(1.0 - schedules.get_beta_schedule(name, 1000))


def test_forward_process_notebook(monkeypatch):
  values, figures = run_notebook("01_forward_process.ipynb", """dict(
      log_snr={k: v["log_snr"].tolist() for k, v in curves.items()},
      check_t=list(check_t), n=N, x0=x0_vec.tolist(),
      mean_hat=[mc[t]["mean_hat"].tolist() for t in check_t],
      cov_hat=[mc[t]["cov_hat"].tolist() for t in check_t],
      q_grid={k: v.tolist() for k, v in q_grids.items()}, show_t=list(show_t),
      x0_images=np.asarray(x0).tolist(), corr_t=corr_t.tolist(),
      corr_measured={k: v["measured"].tolist() for k, v in correlations.items()},
      data_var=s2, beta0=zero[:, :4].tolist(), beta1=one[:, :200].tolist())""", monkeypatch)
  assert_figures_drawn(figures, 5)

  for name, log_snr in values["log_snr"].items():
    abar = closed_form_abar(name)
    np.testing.assert_allclose(log_snr, np.log(abar / (1.0 - abar)), rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(log_snr) < 0), name

  # Monte Carlo of the chain vs DDPM Eq. 4, in units of the estimates' standard errors.
  abar, x0, n = closed_form_abar("linear"), np.asarray(values["x0"]), values["n"]
  z = []
  for t, mean_hat, cov_hat in zip(values["check_t"], values["mean_hat"], values["cov_hat"]):
    var = 1.0 - abar[t]
    z.extend((np.asarray(mean_hat) - math.sqrt(abar[t]) * x0) / math.sqrt(var / n))
    cov = var * np.eye(x0.size)
    se = np.sqrt((cov**2 + var**2) / (n - 1))
    z.extend(((np.asarray(cov_hat) - cov) / se)[np.triu_indices(x0.size)])
  z = np.asarray(z)
  assert z.size == 5 * (8 + 36) and np.abs(z).max() < 4.5 and 0.7 < np.mean(z**2) < 1.3

  # q_sample grid: the digits at t = 0, noise at t = 999; the correlation curve is the closed form.
  x0_images = np.asarray(values["x0_images"])
  for grid in values["q_grid"].values():
    grid = np.asarray(grid)
    assert np.corrcoef(grid[:, 0].ravel(), x0_images.ravel())[0, 1] > 0.99
    assert abs(np.corrcoef(grid[:, -1].ravel(), x0_images.ravel())[0, 1]) < 0.25
  s2 = values["data_var"]
  for name, measured in values["corr_measured"].items():
    a = closed_form_abar(name)[values["corr_t"]]
    np.testing.assert_allclose(measured, np.sqrt(a * s2 / (a * s2 + 1.0 - a)), atol=0.02)
    assert measured[0] > 0.99 and measured[-1] < 0.1

  beta0, beta1 = np.asarray(values["beta0"]), np.asarray(values["beta1"])
  assert np.array_equal(beta0, np.broadcast_to(beta0[0], beta0.shape))  # beta = 0: nothing moves
  # beta = 1: pure noise after one step.
  assert abs(np.corrcoef(beta1[1].ravel(), beta1[0].ravel())[0, 1]) < 0.05
  assert abs(beta1[1:].var() - 1.0) < 0.05


def test_losses_notebook(monkeypatch):
  values, figures = run_notebook("02_losses.ipynb", """dict(
      table={k: v.tolist() for k, v in table.items()}, table_t=table_t.tolist(),
      timings=timings, lam={k: v.tolist() for k, v in lam.items()},
      curve_t=curve_t.tolist(),
      loss_by_t={k: v.tolist() for k, v in loss_by_t.items()})""", monkeypatch)
  assert_figures_drawn(figures, 1)
  betas = schedules.get_beta_schedule("linear", 1000)
  abar = np.cumprod(1.0 - betas)
  t = np.asarray(values["table_t"])
  table = {k: np.asarray(v) for k, v in values["table"].items()}
  # DDPM Eq. 12's weight with sigma_t^2 = beta_t, from the float64 betas.
  weight = betas[t] / (2.0 * (1.0 - betas[t]) * (1.0 - abar[t]))
  np.testing.assert_allclose(table["weight"], weight, rtol=1e-5)
  np.testing.assert_allclose(table["eq12"], weight * table["l_simple"], rtol=1e-5)
  # Eq. 8 is the unweighted mean MSE over 2 sigma_t^2, and equals Eq. 12.
  np.testing.assert_allclose(table["eq8"], table["mse_mean"] / (2.0 * betas[t]), rtol=1e-4)
  np.testing.assert_allclose(table["eq8"], table["eq12"], rtol=2e-4)
  # The library's bound term (bits/dim) = (C_t + Eq. 12) / ln 2, C_t the variance mismatch KL.
  beta_tilde = betas[t] * (1.0 - abar[t - 1]) / (1.0 - abar[t])
  c_t = 0.5 * (np.log(betas[t] / beta_tilde) + beta_tilde / betas[t] - 1.0)
  np.testing.assert_allclose(table["kl_eps"] * math.log(2.0), c_t + table["eq12"], rtol=2e-4,
                             atol=1e-9)

  for median, fastest in values["timings"].values():
    assert 0.0 < fastest <= median < 1.0

  lam_large = np.asarray(values["lam"]["fixedlarge"])
  lam_small = np.asarray(values["lam"]["fixedsmall"])
  ts = np.arange(1, 1000)
  np.testing.assert_allclose(lam_large, betas[ts] / (2.0 * (1.0 - betas[ts]) * (1.0 - abar[ts])),
                             rtol=1e-5)
  assert np.all(lam_small >= lam_large) and lam_large.argmax() == 0
  assert lam_large[0] / lam_large.min() > 20
  # The denoiser's L_simple falls with t (eps gets easier to guess as x_t becomes noise).
  assert np.all(np.diff(values["loss_by_t"]["mse"]) < 0.05) and values["loss_by_t"]["mse"][0] > 0.9


def test_sampling_notebook(monkeypatch):
  values, figures = run_notebook("03_sampling.ipynb", """dict(
      weights=weights.tolist(), n=n, fractions={k: v.tolist() for k, v in fractions.items()},
      ode_errors={f"{s}_{k}": v for (s, k), v in ode_errors.items()},
      held_out={k: v.tolist() for k, v in held_out_loss.items()}, scores=scores,
      show_t=list(show_t),
      precisions=precisions, train_loss=train_loss.tolist(),
      final_x={k: np.asarray(v[-1]).tolist() for k, v in paths.items()})""", monkeypatch)
  assert_figures_drawn(figures, 3)
  weights, n = np.asarray(values["weights"]), values["n"]
  for name, fractions in values["fractions"].items():
    se = np.sqrt(weights * (1 - weights) / n)
    assert np.all(np.abs(np.asarray(fractions) - weights) < 4.5 * se), name
  errors = values["ode_errors"]
  assert errors["ddim_10"] > errors["ddim_20"] > errors["dpm++2_10"] > 0
  # The two ODE solvers map each x_T to nearly the same point; the ancestral chain does not.
  final = {k: np.asarray(v) for k, v in values["final_x"].items()}
  rms = lambda a, b: np.sqrt(np.mean(np.sum((a - b) ** 2, -1)))
  ddim_x, dpm_x, anc_x = (final[k] for k in ("DDIM, 20 steps", "DPM-Solver++(2M), 10 steps",
                                              "ancestral, 1000 steps"))
  assert rms(ddim_x, dpm_x) < 0.1 and rms(anc_x, ddim_x) > 0.3

  train_loss = np.asarray(values["train_loss"])
  assert train_loss[-300:].mean() < train_loss[:100].mean()
  mlp = np.asarray(values["held_out"]["trained MLP"])
  exact = np.asarray(values["held_out"]["exact denoiser"])
  assert mlp.mean() >= exact.mean() and np.all(mlp < exact * 1.5 + 0.01)
  # Reverse states score like forward states where the chain is noisy; samples land on the data.
  scores, show_t = values["scores"], values["show_t"]
  for j, t in enumerate(show_t):
    tol = 0.15 if t >= 150 else 0.4
    assert abs(scores["trained MLP"][j] - scores["forward"][j]) < tol, t
    assert abs(scores["exact denoiser"][j] - scores["forward"][j]) < 0.15, t
  precisions = values["precisions"]
  assert precisions["trained MLP"] > 0.75 and abs(precisions["exact denoiser"] - 0.9) < 0.05
