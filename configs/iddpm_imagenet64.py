"""Improved DDPM on unconditional ImageNet 64x64 with L_hybrid (Nichol & Dhariwal 2021).

  python main.py --config=configs/iddpm_imagenet64.py --workdir=/tmp/iddpm_imagenet64 \
      --config.data.data_dir=/path/to/imagenet64_png
  (the same with --mode=eval: test bits/dim; --mode=sample: samples)

Data: a folder of 64x64 ImageNet images (data.dataset "folder", as improved-diffusion reads
them; e.g. the train and validation images of Chrabaszcz et al.'s downsampled ImageNet written
as PNG). The folder rule of diffusion_jax.input_pipeline holds out about 10% as "test".
The run flags of the paper's released unconditional ImageNet-64 L_hybrid model
(openai/improved-diffusion README: 128 channels, 3 res blocks, learned sigma, 4000 cosine
steps, lr 1e-4, batch 128; checkpoint named 100M parameters, 1500K steps), with that code's
U-Net defaults for 64x64: ch_mult (1, 2, 3, 4), 4 attention heads at 16x16 and 8x8, AdaGN
(scale-shift GroupNorm), dropout 0.0, GroupNorm eps 1e-5, symmetric stride-2 padding,
improved-diffusion's timestep embedding, EMA 0.9999, Adam without warmup or clipping.
Batch: 128, the flag of that released model. The batch of 2048 in the same README belongs to
the paper's larger class-conditional model (192 channels, lr 3e-4, 250K steps), which you get
with --config.model.ch=192 --config.model.num_classes=1000 --config.training.batch_size=2048
--config.training.learning_rate=3e-4 --config.training.num_train_steps=250000.
The model sees the original timestep index t in [0, 4000) (improved-diffusion rescales it to
[0, 1000) before the embedding).
Expect (the paper's findings; not reproduced here): L_hybrid close to L_vlb in NLL with much
better FID, and 100 respaced steps close to the full 4000 in FID (Sec. 4). Check the paper's
tables for the exact figures.
"""

from configs import default


def get_config():
  """Returns the Improved DDPM ImageNet 64x64 (L_hybrid) configuration."""
  config = default.get_config()
  config.data.dataset = "folder"  # --config.data.data_dir=<folder of 64x64 images>.
  config.data.image_size = 64
  config.data.num_channels = 3
  config.data.random_flip = False  # improved-diffusion does not flip.

  config.model.ch = 128
  config.model.ch_mult = (1, 2, 3, 4)
  config.model.num_res_blocks = 3
  config.model.attn_resolutions = (16, 8)
  config.model.num_heads = 4
  config.model.dropout = 0.0
  config.model.use_scale_shift_norm = True
  config.model.temb_convention = "improved"
  config.model.norm_eps = 1e-5
  config.model.downsample_padding = 1

  config.diffusion.beta_schedule = "cosine"
  config.diffusion.num_timesteps = 4000
  config.diffusion.mean_type = "eps"
  config.diffusion.var_type = "learned_range"  # U-Net outputs 2C = 6 channels.
  config.diffusion.loss_type = "rescaled_mse"  # L_hybrid: L_simple + 0.001 * (T/1000) * L_vlb.

  config.training.batch_size = 128
  config.training.num_train_steps = 1_500_000
  config.training.learning_rate = 1e-4
  config.training.warmup_steps = 0
  config.training.grad_clip = 0.0
  config.training.ema_decay = 0.9999

  config.sampling.num_steps = 100
  return config
