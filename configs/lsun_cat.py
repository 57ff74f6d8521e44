"""DDPM on LSUN Cat 256x256: the paper's 256x256 setup (Ho et al. 2020, App. B).

  python main.py --config=configs/lsun_cat.py --workdir=/tmp/lsun_cat

Needs the prepared TFDS data: `tfds build lsun/cat`, then --config.data.data_dir=...
114M parameters (ch 128, ch_mult (1, 1, 2, 2, 4, 4), attention at 16x16), eps / fixedsmall /
L_simple, T = 1000 linear betas, batch 64, Adam 2e-5, no dropout, EMA 0.9999, random flips.
1.8M steps; expect FID ~19.75 (paper Table 3).
Needs accelerators: far beyond a CPU.
"""

from configs import _lsun256


def get_config():
  """Returns the LSUN Cat 256x256 configuration."""
  return _lsun256.get_config("lsun/cat", num_train_steps=1_800_000)
