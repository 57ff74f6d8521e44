"""The noisy classifier of classifier guidance on the 8x8 digits (ADM's classifier, scaled down).

  python main.py --config=configs/digits_classifier.py --workdir=/tmp/digits_cond --mode=train_classifier
  python main.py --config=configs/digits_classifier.py --workdir=/tmp/digits_cond --mode=sample \\
      --config.sampling.guidance.kind=classifier --config.sampling.guidance.grid_scales="(0.,1.,2.,4.)"

Same workdir, data and diffusion (T = 1000 linear) as configs/digits_cond.py, whose model it
guides; the classifier goes to workdir/classifier/. ADM's encoder half-U-Net with attention
pooling, BigGAN down blocks and scale-shift norm at width 32, levels (1, 2) (8x8 and 4x4), one
residual block per level, attention at 4x4 with 32-channel heads, trained 1000 steps of batch 64
by AdamW (lr 1e-3 annealed to 0, weight decay 0.05) on q_sample'd digits at uniform t. Expect workdir/classifier/
with checkpoints and TensorBoard accuracy per quarter of t, and a last line "classifier accuracy
(step 1000, ... test images, t ~ U[0, 1000)): ..." (measured: README, "Guidance on the digits").
"""

from configs import digits_cond


def get_config():
  """Returns the digits classifier configuration (with digits_cond's model for sampling)."""
  config = digits_cond.get_config()
  cmodel = config.classifier.model
  cmodel.ch = 32
  cmodel.ch_mult = (1, 2)
  cmodel.num_res_blocks = 1
  cmodel.attn_resolutions = (4,)
  cmodel.num_head_channels = 32
  cmodel.norm_groups = 8
  ctrain = config.classifier.training
  ctrain.batch_size = 64
  ctrain.num_train_steps = 1000
  ctrain.learning_rate = 1e-3
  ctrain.log_every_steps = 100
  ctrain.checkpoint_every_steps = 500
  ctrain.keep_checkpoints = 2
  ctrain.eval_batches = 3
  return config
