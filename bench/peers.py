"""The PyTorch peers of the benchmarks, built from our configs (the one home of that mapping).

`config(name)` loads `configs/<name>.py`; `diffusers_unet(config)` builds diffusers'
`UNet2DModel` with the layout of that config's U-Net (`models.convert.diffusers_config`), and
`ours_from(tmodel, config)` converts its weights into our U-Net, so both compute the same function.
"""

from __future__ import annotations

import importlib
from typing import Any, Optional


def config(name: str):
  """The experiment config `configs/<name>.py`."""
  return importlib.import_module(f"configs.{name}").get_config()


def diffusers_unet(cfg, *, seed: int = 0, dropout: Optional[float] = None):
  """diffusers' UNet2DModel with the layout of `cfg.model` (torch's random init, `seed`)."""
  import diffusers  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from diffusion_jax import experiment  # pylint: disable=g-import-not-at-top
  from diffusion_jax.models import convert  # pylint: disable=g-import-not-at-top
  model = experiment.create_model(cfg)
  if dropout is not None:
    model = model.clone(dropout=dropout)
  torch.manual_seed(seed)
  return diffusers.UNet2DModel(**convert.diffusers_config(
      model, sample_size=cfg.data.image_size, in_channels=cfg.data.num_channels))


def ours_from(tmodel, cfg, **overrides) -> tuple[Any, Any]:
  """(our U-Net of `cfg` with `overrides`, the peer's weights converted to its parameters)."""
  import jax  # pylint: disable=g-import-not-at-top
  from diffusion_jax import experiment  # pylint: disable=g-import-not-at-top
  from diffusion_jax.models import convert  # pylint: disable=g-import-not-at-top
  model = experiment.create_model(cfg).clone(**overrides)
  size, channels = cfg.data.image_size, cfg.data.num_channels
  params = convert.from_diffusers(tmodel.state_dict(), model=model,
                                  sample_shape=(size, size, channels))
  return model, jax.device_put(params)
