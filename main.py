"""Trains, samples from or evaluates a diffusion model.

  python main.py --config=configs/digits.py --workdir=/tmp/digits                 # train
  python main.py --config=configs/digits.py --workdir=/tmp/digits --mode=sample   # .npz + grid
  python main.py --config=configs/digits.py --workdir=/tmp/digits --mode=eval     # bits/dim + quality

Rerunning a train command on the same workdir resumes from its latest checkpoint. Any config
field can be overridden, e.g. --config.training.batch_size=64. A bad config, data set or
checkpoint stops with a short message naming the field and the fix (exit status 2); --debug
shows the traceback too. Where tcmalloc is installed, the process first re-runs itself with it
preloaded (`diffusion_jax/malloc.py`; DIFFUSION_JAX_MALLOC=system keeps the system's malloc).
"""

import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (e.g. configs/cifar10.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory of the run: checkpoints, logs, samples.")
flags.DEFINE_string("mode", "train", "What to do: train (or resume), sample, eval, ... "
                    "(`python -m diffusion_jax.modes` lists every mode).")
flags.DEFINE_bool("jax_distributed", False,
                  "Call jax.distributed.initialize() first (multi-host training). On TPU pods and "
                  "SLURM clusters it finds its peers itself; elsewhere give the three flags below.")
flags.DEFINE_string("coordinator_address", None, "With --jax_distributed: host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "With --jax_distributed: the number of processes.")
flags.DEFINE_integer("process_id", None, "With --jax_distributed: this process' index.")
flags.DEFINE_bool("debug", False, "Show the Python traceback of user errors too.")
flags.mark_flags_as_required(["config", "workdir"])


def _quiet_orbax(record) -> bool:
  """Drops orbax's INFO chatter so the progress lines stay readable (warnings pass)."""
  return record.levelno >= 30 or "/orbax/" not in record.pathname  # 30 = WARNING


def parse_flags(argv):
  """absl's flag parsing, with a bad flag, config file or config override in one message.

  config_flags raises plain Python errors for these (AttributeError "Did you mean ..." for a
  misspelt nested override, OSError for a config file that cannot be loaded); they are user
  errors, not crashes.
  """
  try:
    remaining = FLAGS(argv)
    FLAGS.config.get("seed")  # config_flags defers a config file's load error to first use
    return remaining
  except flags.Error as e:
    message = str(e)
  except (AttributeError, KeyError, OSError) as e:
    if "--debug" in argv:
      raise
    message = str(e)
    if not isinstance(e, OSError):  # str() of these is a quoted repr: unquote it
      message = message.strip("'\"").replace("\\n", "\n").replace("\\'", "'")
    name = re.match(r"'([^']+)'", message)
    culprit = name and next((a.split("=")[0] for a in argv if a.startswith("--config.")
                             and name.group(1) in a.split("=")[0].split(".")), None)
    if culprit:
      message = f"{culprit}: {name.group(1)!r} is not a config field. {message[name.end():].strip()}"
  print(f"error: {message}\nPass --helpfull to see the flags.", file=sys.stderr, flush=True)
  sys.exit(2)


def run(config, workdir: str, mode: str):
  """Runs `mode` on the workdir; the library entry point behind the flags."""
  from diffusion_jax import errors, modes  # pylint: disable=g-import-not-at-top
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise errors.ConfigError(f"--workdir={workdir!r} is a file; give a directory (it is created "
                             "if missing).")
  return modes.get(mode).run(config, workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_quiet_orbax)
  from diffusion_jax import xla_flags  # pylint: disable=g-import-not-at-top
  xla_flags.apply(FLAGS.config)  # before JAX's first computation creates the backend
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.jax_distributed:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU only; GPUs use NCCL
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  from diffusion_jax import errors, malloc  # pylint: disable=g-import-not-at-top

  logging.info("JAX process %d/%d, local devices: %s; %s", jax.process_index(),
               jax.process_count(), jax.local_devices(), malloc.describe())
  try:
    run(FLAGS.config, FLAGS.workdir, FLAGS.mode)
  except errors.USER_ERRORS as e:
    if FLAGS.debug:
      raise
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == "__main__":
  from diffusion_jax import malloc  # pylint: disable=g-import-not-at-top
  malloc.reexec_with_tcmalloc(sys.argv)  # when installed: a faster allocator for XLA:CPU
  app.run(main, flags_parser=parse_flags)
