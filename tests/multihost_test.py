"""Two processes on one machine train like one: `jax.distributed` over localhost, CPU (gloo).

The same tiny run (dropout 0.1, checkpoints, sample grids, the digits score at the end) is made
by one process with 2 devices and by 2 processes with 1 device each. The global batch, the
per-example randomness and the gradient average are the same, so the parameters must be too;
and only process 0 may write into the workdir.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "_multihost_worker.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(num_processes, devices, workdir, out_dir):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, WORKER, str(i), str(num_processes), str(port), str(devices), workdir,
       os.path.join(out_dir, f"process_{i}.npz")],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(num_processes)]
  logs = [p.communicate(timeout=900)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-4000:]
  results = []
  for i in range(num_processes):
    with np.load(os.path.join(out_dir, f"process_{i}.npz")) as data:
      results.append({k: data[k] for k in data.files})
  return results


def _params(result):
  return {k: v for k, v in result.items() if k.startswith("params/")}


def _tree(root):
  return sorted(os.path.relpath(os.path.join(d, f), root)
                for d, _, fs in os.walk(root) for f in fs)


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
  (one,) = _launch(1, 2, str(tmp_path / "one"), str(tmp_path))
  two = _launch(2, 1, str(tmp_path / "two"), str(tmp_path))
  # Global device indices (a host-local mesh gives [0, 0] here: each host its own model).
  np.testing.assert_array_equal(one["device_indices"], [0, 1])
  for result in two:
    np.testing.assert_array_equal(result["device_indices"], [0, 1])
    assert int(result["step"]) == 6
  # Both hosts hold the same parameters, equal to the one-process run's.
  for name, value in _params(one).items():
    np.testing.assert_array_equal(two[0][name], two[1][name], err_msg=name)
    np.testing.assert_allclose(two[0][name], value, rtol=1e-5, atol=1e-6, err_msg=name)
  assert not np.allclose(_params(one)["params/conv_in/kernel"], 0)
  # Only process 0 wrote: the other one opened nothing for writing under the workdir, and the
  # workdir holds what one process would have written (config, events, grids, eval, checkpoints).
  assert len(two[0]["written"]) > 0 and list(two[1]["written"]) == []
  files = _tree(tmp_path / "two")
  assert "config.json" in files and "samples/3/grid.png" in files and "samples/6/grid.png" in files
  assert any(f.startswith("eval/digits_6") for f in files)
  assert sorted({f.split("/")[1] for f in files if f.startswith("checkpoints/")}) == ["3", "6"]
  assert not any("process_1" in f for f in files), [f for f in files if "process_1" in f]
