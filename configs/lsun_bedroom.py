"""DDPM on LSUN Bedroom 256x256: the paper's 256x256 setup (Ho et al. 2020, App. B).

  python main.py --config=configs/lsun_bedroom.py --workdir=/tmp/lsun_bedroom

Needs the prepared TFDS data: `tfds build lsun/bedroom`, then --config.data.data_dir=...
114M parameters (ch 128, ch_mult (1, 1, 2, 2, 4, 4), attention at 16x16), eps / fixedsmall /
L_simple, T = 1000 linear betas, batch 64, Adam 2e-5, no dropout, EMA 0.9999, random flips.
2.4M steps; expect FID ~6.36 (paper Table 3; its separate 'large' model is not this config).
Needs accelerators: far beyond a CPU.
"""

from configs import _lsun256


def get_config():
  """Returns the LSUN Bedroom 256x256 configuration."""
  return _lsun256.get_config("lsun/bedroom", num_train_steps=2_400_000)
