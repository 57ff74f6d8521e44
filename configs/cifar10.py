"""DDPM on CIFAR-10 32x32 with the paper's exact hyperparameters (Ho et al. 2020, Sec. 4 / App. B).

  python main.py --config=configs/cifar10.py --workdir=/tmp/cifar10

Needs the prepared TFDS data (`tfds build cifar10`, then --config.data.data_dir=...).
35.7M parameters; eps / fixedlarge / L_simple, T = 1000 linear betas, batch 128, Adam 2e-4 with
5000 warmup steps, clip 1.0, dropout 0.1, EMA 0.9999, random flips, 800k steps.
Expect: FID ~3.17 and IS ~9.46 (50k EMA samples, 1000 ancestral steps) and a test NLL
<= 3.75 bits/dim (--mode=eval) after 800k steps, as in the paper's Table 1 / 2 (~10 days on
8 V100 in the paper; not reproduced here on CPU).
"""

from configs import default


def get_config():
  """Returns the CIFAR-10 configuration (the defaults are already the paper's)."""
  config = default.get_config()
  config.data.dataset = "cifar10"
  config.data.image_size = 32
  config.data.num_channels = 3
  config.data.random_flip = True

  config.model.ch = 128
  config.model.ch_mult = (1, 2, 2, 2)
  config.model.num_res_blocks = 2
  config.model.attn_resolutions = (16,)
  config.model.dropout = 0.1

  config.diffusion.beta_schedule = "linear"
  config.diffusion.num_timesteps = 1000
  config.diffusion.mean_type = "eps"
  config.diffusion.var_type = "fixedlarge"
  config.diffusion.loss_type = "mse"

  config.training.batch_size = 128
  config.training.num_train_steps = 800_000
  config.training.learning_rate = 2e-4
  config.training.warmup_steps = 5000
  config.training.grad_clip = 1.0
  config.training.ema_decay = 0.9999
  return config
