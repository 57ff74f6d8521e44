"""NCSN (Song & Ermon 2019): noise-conditional score matching and annealed Langevin dynamics on
the 8x8 digits, on a laptop CPU.

  python main.py --config=configs/ncsn_digits.py --workdir=/tmp/ncsn_digits

The digits demo's network and optimizer (configs/digits.py), trained with NCSN's objective on
L = 20 geometric levels from sigma_1 = 10 (about the largest distance between two digits in
[-1, 1], NCSNv2's rule) down to sigma_L = 0.02 (NCSN's 0.01 on [0, 1] data); the network sees
the level and predicts eps = -sigma s (NCSNv2's output scaling). Sampled with annealed Langevin
dynamics from U(-1, 1): T steps per level, alpha_i = eps sigma_i^2 / sigma_L^2, and the final
denoising step (1000 score evaluations per sample).
Expect: recognizable digits, digits Frechet distance 13.3 at step 2500 (1000 samples; measured
here once, `docs/figures/ncsn_digits.png`).
"""

from configs import digits


def get_config():
  """Returns the NCSN digits configuration."""
  config = digits.get_config()
  config.diffusion.objective = "ncsn"
  config.diffusion.sigma_min = 0.02
  config.diffusion.sigma_max = 10.0
  config.diffusion.num_timesteps = 20  # L, the noise levels
  config.diffusion.mean_type = "eps"

  config.sampling.sampler = "annealed_langevin"
  config.sampling.num_steps = None
  config.sampling.annealed_langevin.n_steps_each = 50
  config.sampling.annealed_langevin.step_size = 8e-5
  config.eval.compute_bpd = False
  return config
