"""Continuous-time VP SDE (score matching, Song et al. 2021) on the 8x8 digits, on a laptop CPU.

  python main.py --config=configs/vp_digits.py --workdir=/tmp/vp_digits

The digits demo's network and optimizer (configs/digits.py), trained with continuous denoising
score matching on VPSDE(0.1, 20): t ~ U(1e-5, 1), eps prediction, sigma^2 weighting. Sampled
with the predictor-corrector sampler: 200 Euler-Maruyama steps of the reverse SDE, no corrector,
the final denoising step. Expect: recognizable digits, digits Frechet distance 5.4 at step 2500
(1000 samples; measured here once, `docs/figures/vp_digits.png`); its 2500 steps took 218 s here.
"""

from configs import digits


def get_config():
  """Returns the continuous VP digits configuration."""
  config = digits.get_config()
  config.diffusion.objective = "score_sde"
  config.diffusion.sde = "vp"
  config.diffusion.num_timesteps = 1000  # N: the discrete predictors' steps
  config.diffusion.mean_type = "eps"

  config.sampling.sampler = "pc"
  config.sampling.num_steps = 200
  config.sampling.pc.predictor = "euler_maruyama"
  config.sampling.pc.corrector = "none"
  config.eval.compute_bpd = False
  return config
