"""Continuous-time VP SDE on CIFAR-10 with the DDPM network (Song et al. 2021, "DDPM cont. (VP)").

  python main.py --config=configs/vp_cifar10.py --workdir=/tmp/vp_cifar10

Needs the prepared TFDS data (`tfds build cifar10`, then --config.data.data_dir=...).
The score-SDE paper's CIFAR-10 setup on the DDPM U-Net (35.7M parameters, dropout 0.1): the VP
SDE beta(t) = 0.1 + 19.9 t, continuous denoising score matching with t ~ U(1e-5, 1) and the
sigma^2 weighting (eps prediction: the continuous L_simple), batch 128, Adam 2e-4 (eps 1e-8)
with 5000 warmup steps, clip 1.0, EMA 0.9999, random flips, 1.3M steps; sampled with N = 1000
Euler-Maruyama steps of the reverse SDE, no corrector, and the final denoising step.
Where we differ: the loss averages over pixels (the reference code can sum or average); the
model sees the fractional step N t - 1 (the reference code feeds its DDPM network 999 t).
Expect: not measured here (no accelerator); Song et al. 2021, Table 3, reports this setting's
FID and bits/dim.
"""

from configs import _score_sde_cifar10


def get_config():
  """Returns the continuous VP CIFAR-10 configuration."""
  config = _score_sde_cifar10.get_config("vp", ema_decay=0.9999, predictor="euler_maruyama",
                                         corrector="none")
  config.diffusion.beta_min = 0.1
  config.diffusion.beta_max = 20.0
  return config
