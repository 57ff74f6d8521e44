"""ADM on class-conditional ImageNet 128x128, with its noisy classifier (Dhariwal & Nichol 2021).

  python main.py --config=configs/adm_imagenet128.py --workdir=/ckpt/adm128
  python main.py --config=configs/adm_imagenet128.py --workdir=/ckpt/adm128 --mode=train_classifier
  python main.py --config=configs/adm_imagenet128.py --workdir=/ckpt/adm128 --mode=sample \\
      --config.sampling.guidance.kind=classifier

As configs/adm_imagenet64.py, with the 128x128 model: 256 channels, 2 residual blocks,
ch_mult (1, 1, 2, 3, 4), 4 attention heads (not 64-channel ones), dropout 0.0, linear schedule,
Adam lr 1e-4, batch 256, 4360K steps: 421.5M parameters, the paper's 422M. Classifier
(guided-diffusion's README training flags, the ones given for this resolution): width 128,
depth 2, ch_mult (1, 1, 2, 3, 4), attention pooling, AdamW lr 3e-4 annealed, weight decay 0.05,
batch 256, 300K steps: 42.6M parameters. Sampling: 250 ancestral steps, classifier scale 0.5
(guided-diffusion's README for this model). Expect (the paper, not reproduced here): FID 2.97.
"""

from configs import adm_imagenet64


def get_config():
  """Returns the ADM ImageNet 128x128 configuration."""
  config = adm_imagenet64.get_config()
  config.data.image_size = 128
  model = config.model
  model.ch = 256
  model.ch_mult = (1, 1, 2, 3, 4)
  model.num_res_blocks = 2
  model.num_head_channels = -1
  model.num_heads = 4
  model.dropout = 0.0
  config.diffusion.beta_schedule = "linear"
  config.training.batch_size = 256
  config.training.num_train_steps = 4_360_000
  config.training.learning_rate = 1e-4
  config.sampling.guidance.scale = 0.5
  config.classifier.model.ch_mult = (1, 1, 2, 3, 4)
  config.classifier.model.num_res_blocks = 2
  return config
