"""ADM on class-conditional ImageNet 256x256, with its noisy classifier (Dhariwal & Nichol 2021).

  python main.py --config=configs/adm_imagenet256.py --workdir=/ckpt/adm256
  python main.py --config=configs/adm_imagenet256.py --workdir=/ckpt/adm256 --mode=train_classifier
  python main.py --config=configs/adm_imagenet256.py --workdir=/ckpt/adm256 --mode=sample \\
      --config.sampling.guidance.kind=classifier

As configs/adm_imagenet128.py, with the 256x256 model: ch_mult (1, 1, 2, 2, 4, 4), 64-channel
attention heads, batch 256, 1980K steps: 553.8M parameters, the paper's 554M. Classifier:
depth 2, ch_mult (1, 1, 2, 2, 4, 4): 54.1M parameters. Sampling: 250 ancestral steps,
classifier scale 1.0 (guided-diffusion's README). Expect (the paper, not reproduced): FID 4.59.
"""

from configs import adm_imagenet128


def get_config():
  """Returns the ADM ImageNet 256x256 configuration."""
  config = adm_imagenet128.get_config()
  config.data.image_size = 256
  config.model.ch_mult = (1, 1, 2, 2, 4, 4)
  config.model.num_heads = 1
  config.model.num_head_channels = 64
  config.training.num_train_steps = 1_980_000
  config.sampling.guidance.scale = 1.0
  config.classifier.model.ch_mult = (1, 1, 2, 2, 4, 4)
  return config
