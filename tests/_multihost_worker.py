"""One process of a multi-process training run on this machine (used by multihost_test.py).

  python tests/_multihost_worker.py PROCESS_ID NUM_PROCESSES PORT DEVICES WORKDIR OUT.npz

Trains configs/tiny.py (dropout on) for a few steps with `jax.distributed` over localhost (CPU
collectives through gloo), then writes its final parameters, the global device indices it saw
and every file it opened for writing under WORKDIR to OUT.npz (outside WORKDIR).
"""

import os
import sys

process_id, num_processes, port, devices, workdir, out = sys.argv[1:7]
process_id, num_processes, devices = int(process_id), int(num_processes), int(devices)
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
os.environ["CUDA_VISIBLE_DEVICES"] = ""
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

written = set()


def _audit(event, args):
  """Records files this process opens for writing under the workdir (Python-level I/O)."""
  if event == "open" and isinstance(args[0], str) and args[1] and any(c in args[1] for c in "wax+"):
    path = os.path.abspath(args[0])
    if path.startswith(os.path.abspath(workdir)):
      written.add(os.path.relpath(path, workdir))


sys.addaudithook(_audit)

import jax  # noqa: E402  (after XLA_FLAGS)

jax.config.update("jax_platforms", "cpu")
if num_processes > 1:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"localhost:{port}",
                             num_processes=num_processes, process_id=process_id)

import numpy as np  # noqa: E402
from flax import traverse_util  # noqa: E402

from configs import tiny  # noqa: E402
from diffusion_jax import parallel, train  # noqa: E402

config = tiny.get_config()
config.model.dropout = 0.1
config.training.num_train_steps = 6
config.training.checkpoint_every_steps = 3
config.training.log_every_steps = 3
config.training.sample_every_steps = 3
config.eval.sample_quality_at_end = True
config.eval.num_quality_samples = 16
config.eval.quality_batch_size = 16
state = train.train_and_evaluate(config, workdir)

mesh = parallel.make_mesh()
indices = parallel.gather(parallel.pmap(lambda x: jax.lax.axis_index(parallel.AXIS) + 0 * x,
                                        mesh)(parallel.replicate(np.int32(0), mesh)))
flat = traverse_util.flatten_dict(state.params, sep="/")
np.savez(out, device_indices=np.asarray(indices), written=np.asarray(sorted(written), dtype=str),
         step=np.asarray(state.step), **{f"params/{k}": np.asarray(v) for k, v in flat.items()})
print(f"process {process_id}: done, wrote {len(written)} files", flush=True)
