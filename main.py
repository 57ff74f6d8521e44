"""Trains, samples from or evaluates a diffusion model.

  python main.py --config=configs/digits.py --workdir=/tmp/digits                 # train
  python main.py --config=configs/digits.py --workdir=/tmp/digits --mode=sample   # .npz + grid
  python main.py --config=configs/digits.py --workdir=/tmp/digits --mode=eval     # bits/dim + quality

Rerunning a train command on the same workdir resumes from its latest checkpoint. Any config
field can be overridden, e.g. --config.training.batch_size=64.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (e.g. configs/cifar10.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory of the run: checkpoints, logs, samples.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "eval"],
                  "train: train or resume; sample: write samples of a checkpoint; "
                  "eval: test-set bits/dim and sample quality (digits FD, or FID/IS/P&R with "
                  "eval.inception_weights) of a checkpoint.")
flags.DEFINE_bool("jax_distributed", False,
                  "Call jax.distributed.initialize() first (multi-host training).")
flags.mark_flags_as_required(["config", "workdir"])


def _quiet_orbax(record) -> bool:
  """Drops orbax's INFO chatter so the progress lines stay readable (warnings pass)."""
  return record.levelno >= 30 or "/orbax/" not in record.pathname  # 30 = WARNING


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_quiet_orbax)
  # TensorFlow only feeds data: hide accelerators from it so it cannot take their memory.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  tf.config.set_visible_devices([], "TPU")
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.jax_distributed:
    jax.distributed.initialize()
  from diffusion_jax import train  # pylint: disable=g-import-not-at-top

  logging.info("JAX process %d/%d, local devices: %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  if FLAGS.mode == "train":
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  elif FLAGS.mode == "sample":
    train.sample(FLAGS.config, FLAGS.workdir)
  else:
    train.evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
