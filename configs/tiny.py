"""A seconds-long config for tests: a 2-level, 16-channel U-Net on the 8x8 digits.

  python main.py --config=configs/tiny.py --workdir=/tmp/tiny

Expect: 20 steps in a few seconds after compilation, a checkpoint at steps 10 and 20, a noisy
sample grid in samples/20/grid.png. Nothing useful is learned; it exercises every code path.
"""

from configs import default


def get_config():
  """Returns the tiny test configuration."""
  config = default.get_config()
  config.data.dataset = "digits"
  config.data.image_size = 8
  config.data.num_channels = 1
  config.data.random_flip = False

  config.model.ch = 16
  config.model.ch_mult = (1, 2)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = (4,)
  config.model.dropout = 0.0
  config.model.norm_groups = 8

  config.diffusion.num_timesteps = 20

  config.training.batch_size = 16
  config.training.num_train_steps = 20
  config.training.learning_rate = 1e-3
  config.training.warmup_steps = 2
  config.training.ema_decay = 0.9
  config.training.log_every_steps = 5
  config.training.checkpoint_every_steps = 10
  config.training.sample_every_steps = 20
  config.training.num_grid_samples = 16
  config.training.keep_checkpoints = 2

  config.sampling.num_samples = 16
  config.sampling.batch_size = 16
  config.eval.batch_size = 16
  config.eval.num_batches = 2
  config.eval.num_quality_samples = 64
  return config
