"""ADM on class-conditional ImageNet 64x64, with its noisy classifier (Dhariwal & Nichol 2021).

  python main.py --config=configs/adm_imagenet64.py --workdir=/ckpt/adm64           # the diffusion model
  python main.py --config=configs/adm_imagenet64.py --workdir=/ckpt/adm64 --mode=train_classifier
  python main.py --config=configs/adm_imagenet64.py --workdir=/ckpt/adm64 --mode=sample \\
      --config.sampling.guidance.kind=classifier --config.sampling.guidance.scale=1.0

Data: TFDS imagenet2012 (labels 0-999; TFDS needs the manually downloaded archives, see its
catalog), center-cropped and resized to 64x64; evaluation on its validation split.
Diffusion model (the paper's hyperparameter table; the flags of guided-diffusion's released
64x64 model): 192 channels, 3 residual blocks per level, ch_mult (1, 2, 3, 4), attention at 32,
16 and 8 pixels with 64-channel heads, BigGAN up/down blocks, scale-shift norm, dropout 0.1,
learned variances (learned_range with L_hybrid), cosine schedule, T = 1000, Adam lr 3e-4,
batch 2048, 540K steps, EMA 0.9999: 295.9M parameters, the paper's 296M.
Classifier (guided-diffusion's 64x64 classifier flags): width 128, depth 4, ch_mult (1, 2, 3, 4),
attention at 32/16/8 with 64-channel heads, attention pooling: 65.4M parameters; trained as its
README's classifier runs (AdamW lr 3e-4 annealed, weight decay 0.05, batch 256, 300K steps).
Sampling with the paper's guidance: 250 respaced ancestral steps, classifier scale 1.0 (the
mean shift, Algorithm 1). Expect (the paper's Table 4, not reproduced here): FID 2.07 for
ADM-G at 64x64.
"""

from configs import default


def get_config():
  """Returns the ADM ImageNet 64x64 configuration."""
  config = default.get_config()
  config.data.dataset = "imagenet2012"
  config.data.image_size = 64
  config.data.random_flip = False
  config.data.eval_split = "validation"

  model = config.model
  model.ch = 192
  model.ch_mult = (1, 2, 3, 4)
  model.num_res_blocks = 3
  model.attn_resolutions = (32, 16, 8)
  model.num_head_channels = 64
  model.resblock_updown = True
  model.use_scale_shift_norm = True
  model.dropout = 0.1
  model.num_classes = 1000
  model.temb_convention = "improved"
  model.norm_eps = 1e-5
  model.downsample_padding = 1

  config.diffusion.beta_schedule = "cosine"
  config.diffusion.num_timesteps = 1000
  config.diffusion.var_type = "learned_range"
  config.diffusion.loss_type = "rescaled_mse"  # L_hybrid (at T = 1000 the same as guided-diffusion's mse)

  training = config.training
  training.batch_size = 2048
  training.num_train_steps = 540_000
  training.learning_rate = 3e-4
  training.warmup_steps = 0
  training.grad_clip = 0.0
  training.ema_decay = 0.9999

  config.sampling.sampler = "ancestral"
  config.sampling.num_steps = 250
  config.sampling.guidance.scale = 1.0

  cmodel = config.classifier.model
  cmodel.ch = 128
  cmodel.ch_mult = (1, 2, 3, 4)
  cmodel.num_res_blocks = 4
  cmodel.attn_resolutions = (32, 16, 8)
  ctrain = config.classifier.training
  ctrain.batch_size = 256
  ctrain.num_train_steps = 300_000
  ctrain.learning_rate = 3e-4
  ctrain.weight_decay = 0.05
  ctrain.anneal_lr = True
  return config
