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

from configs import iddpm_cifar10


def get_config():
  """Returns the Improved DDPM ImageNet 64x64 (L_hybrid) configuration."""
  # The same improved-diffusion U-Net, objective and optimizer as the CIFAR-10 run; what differs:
  config = iddpm_cifar10.get_config()
  config.data.dataset = "folder"  # --config.data.data_dir=<folder of 64x64 images>.
  config.data.image_size = 64
  config.data.random_flip = False  # improved-diffusion does not flip.
  config.model.ch_mult = (1, 2, 3, 4)
  config.model.dropout = 0.0
  config.training.num_train_steps = 1_500_000
  return config
