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


def torch_train_step(cfg, *, warmup: bool = False):
  """The peer of our train step for `cfg`: diffusers' U-Net (`diffusers_unet`), uniform t,
  q_sample, L_simple, clip_grad_norm_, torch.optim.Adam (with the config's linear warmup if
  `warmup`) and an EMA update. Returns step(x0 [B, C, H, W]) -> loss (a torch scalar)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from diffusion_jax import schedules  # pylint: disable=g-import-not-at-top
  tcfg = cfg.training
  model = diffusers_unet(cfg)
  model.train()
  params = list(model.parameters())
  ema = [p.detach().clone() for p in params]
  opt = torch.optim.Adam(params, lr=tcfg.learning_rate, betas=(tcfg.adam_b1, tcfg.adam_b2),
                         eps=tcfg.adam_eps)
  schedule = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda s: min(1.0, (s + 1) / max(1, tcfg.warmup_steps))) if warmup else None
  abar = np.cumprod(1 - schedules.get_beta_schedule(cfg.diffusion.beta_schedule,
                                                    cfg.diffusion.num_timesteps))
  sqrt_abar = torch.tensor(np.sqrt(abar), dtype=torch.float32)
  sqrt_1m_abar = torch.tensor(np.sqrt(1 - abar), dtype=torch.float32)

  def step(x0):
    t = torch.randint(0, cfg.diffusion.num_timesteps, (x0.shape[0],))
    noise = torch.randn_like(x0)
    x_t = sqrt_abar[t].view(-1, 1, 1, 1) * x0 + sqrt_1m_abar[t].view(-1, 1, 1, 1) * noise
    loss = torch.mean((model(x_t, t).sample - noise) ** 2)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
    opt.step()
    if schedule is not None:
      schedule.step()
    with torch.no_grad():
      torch._foreach_lerp_(ema, params, 1.0 - tcfg.ema_decay)
    return loss

  step.state = {"model": model, "ema": ema, "opt": opt}  # for a checkpoint of the peer
  return step
