"""Shared settings of the score-SDE paper's CIFAR-10 runs on the DDPM U-Net; not a config itself."""

from configs import cifar10


def get_config(sde: str, *, ema_decay: float, predictor: str, corrector: str):
  """Song et al. 2021's continuous CIFAR-10 training (t ~ U(1e-5, 1), sigma^2 weighting, eps
  prediction, 1.3M steps) and PC sampling over N = 1000 steps, on the `sde` SDE."""
  config = cifar10.get_config()
  config.diffusion.objective = "score_sde"
  config.diffusion.sde = sde
  config.diffusion.num_timesteps = 1000  # N: the sampler's steps
  config.diffusion.mean_type = "eps"
  config.diffusion.sde_weighting = "sigma2"
  config.diffusion.sde_eps = 1e-5

  config.training.num_train_steps = 1_300_000
  config.training.ema_decay = ema_decay

  config.sampling.sampler = "pc"
  config.sampling.pc.predictor = predictor
  config.sampling.pc.corrector = corrector
  config.eval.compute_bpd = False  # the DDPM bound does not apply; the ODE likelihood would
  return config
