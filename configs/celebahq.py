"""DDPM on CelebA-HQ 256x256: the paper's 256x256 setup (Ho et al. 2020, App. B).

  python main.py --config=configs/celebahq.py --workdir=/tmp/celebahq

Needs the prepared TFDS data: `tfds build celeb_a_hq/256` (after the manual download of the
CelebA-HQ files that TFDS describes), then --config.data.data_dir=...
114M parameters (ch 128, ch_mult (1, 1, 2, 2, 4, 4), attention at 16x16), eps / fixedsmall /
L_simple, T = 1000 linear betas, batch 64, Adam 2e-5, no dropout, EMA 0.9999, random flips.
0.5M steps; expect samples like the paper's Fig. 1 (it reports no CelebA-HQ FID).
Needs accelerators: far beyond a CPU.
"""

from configs import _lsun256


def get_config():
  """Returns the CelebA-HQ 256x256 configuration."""
  return _lsun256.get_config("celeb_a_hq/256", num_train_steps=500_000)
