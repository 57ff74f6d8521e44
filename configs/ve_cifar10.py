"""Continuous-time VE SDE on CIFAR-10 with the DDPM network (Song et al. 2021's VE setup).

  python main.py --config=configs/ve_cifar10.py --workdir=/tmp/ve_cifar10

Needs the prepared TFDS data (`tfds build cifar10`, then --config.data.data_dir=...).
The score-SDE paper's CIFAR-10 VE setup: sigma(t) = sigma_min (sigma_max / sigma_min)^t,
continuous denoising score matching with t ~ U(1e-5, 1) and the sigma^2 weighting, batch 128,
Adam 2e-4 (eps 1e-8) with 5000 warmup steps, clip 1.0, EMA 0.999, random flips, 1.3M steps;
sampled with the PC sampler: N = 1000 reverse-diffusion predictor steps, one Langevin corrector
step each with snr 0.16, and the final denoising step.
Where we differ: (1) the network is the DDPM U-Net (35.7M), not NCSN++; (2) data in [-1, 1], so
the paper's sigma_min = 0.01, sigma_max = 50 on [0, 1] data become 0.02 and 100 (the same
process); (3) the network predicts eps = -sigma s (the paper's NCSN++ divides its output by
sigma, the same up to the sign) and sees the fractional step (N - 1) t, an affine function of
log sigma(t) (the reference code feeds sigma(t) to Fourier features of its log); (4) the loss
averages over pixels where the reference code's default sums (Adam is scale-free, the gradient
clip at 1.0 is not).
Expect: not measured here (no accelerator).
"""

from configs import _score_sde_cifar10


def get_config():
  """Returns the continuous VE CIFAR-10 configuration."""
  config = _score_sde_cifar10.get_config("ve", ema_decay=0.999, predictor="reverse_diffusion",
                                         corrector="langevin")
  config.diffusion.sigma_min = 0.02
  config.diffusion.sigma_max = 100.0
  config.sampling.pc.snr = 0.16
  return config
