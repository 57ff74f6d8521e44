"""Shared settings of the paper's 256x256 runs (CelebA-HQ, LSUN); not a config by itself."""

from configs import default


def get_config(dataset: str, num_train_steps: int):
  """The DDPM 256x256 setup (Ho et al. 2020, App. B) for a TFDS `dataset`."""
  config = default.get_config()
  config.data.dataset = dataset
  config.data.image_size = 256
  config.data.num_channels = 3
  config.data.random_flip = True

  config.model.ch = 128
  config.model.ch_mult = (1, 1, 2, 2, 4, 4)
  config.model.num_res_blocks = 2
  config.model.attn_resolutions = (16,)
  config.model.dropout = 0.0

  config.diffusion.var_type = "fixedsmall"

  config.training.batch_size = 64
  config.training.num_train_steps = num_train_steps
  config.training.learning_rate = 2e-5
  config.training.warmup_steps = 5000
  config.training.grad_clip = 1.0
  config.training.ema_decay = 0.9999
  config.training.checkpoint_every_steps = 5000

  config.sampling.batch_size = 16
  config.eval.batch_size = 16
  return config
