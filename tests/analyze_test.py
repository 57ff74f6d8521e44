"""--mode=analyze (main.run's mode dispatch) on a tiny checkpoint: every figure, and the
rate-distortion curve's end point against the bits/dim of --mode=eval."""

import json
import os

import numpy as np
import pytest
from PIL import Image

import main as main_py
from configs import tiny
from diffusion_jax import analyze, errors, inference, schedules, train


def test_resolve_fills_defaults_and_names_bad_fields():
  config = tiny.get_config()
  opts = analyze.resolve(config)
  assert opts["kinds"] == analyze.KINDS and opts["interpolation_t"] == 10
  assert opts["timesteps"][0] == 19 and opts["timesteps"][-1] == 0 and len(opts["timesteps"]) == 8
  assert opts["lambdas"][0] == 0.0 and opts["lambdas"][-1] == 1.0
  for field, value in (("kind", "fig5"), ("timesteps", (19, 20)), ("interpolation_t", -1),
                       ("num_lambdas", 1), ("ddim_steps", 21)):
    bad = tiny.get_config()
    bad.analysis[field] = value
    with pytest.raises(errors.ConfigError, match=f"analysis.{field}"):
      analyze.resolve(bad)


@pytest.mark.slow
def test_analyze_writes_every_figure_and_rate_distortion_ends_at_eval_bpd(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  config = tiny.get_config()
  # Cosine betas: with T = 20 they still end near pure noise (tiny.py's linear ones do not).
  config.diffusion.beta_schedule = "cosine"
  config.training.sample_every_steps = 0
  train.train_and_evaluate(config, workdir)
  # The bits/dim of --mode=eval (inference.evaluate runs exactly this for it).
  model, diffusion_, params, step = inference.restore(config, workdir, None)
  eval_bpd = inference.evaluate_bpd(config, workdir, params, step, model, diffusion_)
  config.analysis.update(num_images=4, num_samples=2, num_lambdas=3, ddim_steps=10)
  main_py.run(config, workdir, "analyze")  # what `main.py --mode=analyze` calls
  assert "analysis rate_distortion (step 20)" in capsys.readouterr().out

  def load(kind):
    image = np.asarray(Image.open(os.path.join(workdir, "analysis", f"{kind}_20.png")), np.float64)
    assert image.std() > 10.0  # drawn, not blank
    with open(os.path.join(workdir, "analysis", f"{kind}_20.json")) as f:
      return image, json.load(f)

  image, progressive = load("progressive")
  # 4 chains x (8 timesteps + the sample) of 8x8 tiles with 1-pixel borders, upscaled 4x.
  assert image.shape[:2] == (4 * (4 * 9 + 1), 4 * (9 * 9 + 1))
  rmse = progressive["rmse_to_sample"]
  assert rmse[-1] < rmse[0]  # x0_hat at t = 0 is nearly the sample; at T-1 it is not
  _, shared = load("shared_latent")
  assert shared["rmse_to_image"][-1] < shared["rmse_to_image"][0]  # t = 0 keeps the image
  _, interp = load("interpolation")
  for name in ("reverse_chain", "ddim"):
    to_a, to_b = interp[name]["rmse_to_a"], interp[name]["rmse_to_b"]
    assert to_a[0] < to_a[-1] and to_b[-1] < to_b[0]  # lambda moves the decode from a to b

  _, rd = load("rate_distortion")
  assert rd["num_examples"] == eval_bpd["num_examples"] == 32
  np.testing.assert_allclose(rd["total_bpd"], eval_bpd["total_bpd"], rtol=1e-9)
  rate, distortion = np.asarray(rd["rate_bpd"]), np.asarray(rd["distortion_rmse"])
  assert rate.shape == (20,) and np.all(np.diff(rate) <= 1e-6) and rate[-1] > 0  # monotone in t
  # The rate ends, with the decoder term, at the total; the distortion falls from about the
  # data's spread at T-1 to the order of the noise left at t = 0 (for T = 1000 linear betas,
  # 1.3 grey levels of 255: the 8-bit floor).
  assert rate[0] < rd["total_bpd"]
  floor = 127.5 * np.sqrt(schedules.get_beta_schedule("cosine", 20)[0])
  np.testing.assert_allclose(rd["distortion_floor"], floor, rtol=1e-5)
  assert distortion[-1] > 5 * floor and distortion[0] < 3 * floor
