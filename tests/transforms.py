"""The one jit / pmap check the samplers share: a transformed sampler returns what eager does."""

import jax
import jax.numpy as jnp
import numpy as np


def assert_jit_and_pmap_agree(run, x, atol=1e-5, num_devices=2):
  """run(x) eagerly, under jit, and pmapped over `num_devices` copies of x, agree within atol."""
  ref = np.asarray(run(x))
  np.testing.assert_allclose(jax.jit(run)(x), ref, atol=atol, err_msg="jit")
  copies = jax.pmap(run, devices=jax.local_devices()[:num_devices])(
      jnp.broadcast_to(x, (num_devices,) + x.shape))
  for i, out in enumerate(np.asarray(copies)):
    np.testing.assert_allclose(out, ref, atol=atol, err_msg=f"pmap, device {i}")
