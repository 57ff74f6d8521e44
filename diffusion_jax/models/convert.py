"""Import diffusers `UNet2DModel` weights (PyTorch) into `diffusion_jax.models.UNet` parameters.

Covers the layouts of google/ddpm-cifar10-32, google/ddpm-celebahq-256, google/ddpm-ema-church-256
(and the other DDPM 256 checkpoints), plus the ADM-style options diffusers' `UNet2DModel` can
express (scale-shift norm, resnet up/down blocks, multi-head attention, class embedding).

  from diffusion_jax.models import convert
  model, params = convert.load_diffusers_dir("/path/to/ddpm-cifar10-32")   # config.json + weights
  eps = model.apply({"params": params}, x_nhwc, t)

or, from a state dict already in memory: `params = convert.from_diffusers(state_dict)` with
`model = UNet(**convert.unet_kwargs_from_diffusers_config(config))`.

Both attention key namings are understood: the current `to_q/to_k/to_v/to_out.0` and the
deprecated `query/key/value/proj_attn` that the original DDPM `.bin` files on the Hub still use.
torch (and safetensors, for `.safetensors` files) are imported only inside the loaders.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

import numpy as np

Params = dict[str, Any]

_RESNET = {"norm1": "norm1", "conv1": "conv1", "time_emb_proj": "temb_proj", "norm2": "norm2",
           "conv2": "conv2", "conv_shortcut": "shortcut"}
_ATTN = {"group_norm": "norm", "to_q": "q", "query": "q", "to_k": "k", "key": "k",
         "to_v": "v", "value": "v", "to_out.0": "proj_out", "proj_attn": "proj_out"}
# Layers stored as a torch 1x1 conv (or Linear) that are a Dense on our side.
_DENSE_LEAVES = {"temb_proj", "shortcut", "q", "k", "v", "proj_out", "temb_dense0", "temb_dense1"}


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor, without importing torch
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, dtype=np.float32)


def _convert_leaf(module: str, param: str, w: np.ndarray) -> tuple[str, np.ndarray]:
  """Maps one torch parameter to (flax param name, array in flax layout)."""
  if module == "label_emb":
    return "embedding", w
  if module.startswith("norm") or module == "norm_out":  # GroupNorm
    return ("scale" if param == "weight" else "bias"), w
  if param == "bias":
    return "bias", w
  if module in _DENSE_LEAVES:
    if w.ndim == 4:  # 1x1 conv [O, I, 1, 1]
      if w.shape[2:] != (1, 1):
        raise ValueError(f"{module}: expected a 1x1 conv, got weight shape {w.shape}.")
      w = w[:, :, 0, 0]
    return "kernel", w.T  # torch Linear [O, I] -> flax Dense [I, O]
  if w.ndim != 4:
    raise ValueError(f"{module}: expected a conv weight [O, I, kh, kw], got shape {w.shape}.")
  return "kernel", np.transpose(w, (2, 3, 1, 0))  # [O, I, kh, kw] -> [kh, kw, I, O]


def _num_levels(keys: list[str]) -> int:
  levels = {int(m.group(1)) for k in keys if (m := re.match(r"down_blocks\.(\d+)\.", k))}
  if not levels:
    raise ValueError("no `down_blocks.*` keys: this is not a diffusers UNet2DModel state dict.")
  return max(levels) + 1


def _our_path(key: str, num_levels: int) -> tuple[list[str], str]:
  """diffusers key -> ([module path...], torch param name)."""
  module, _, param = key.rpartition(".")
  fixed = {"conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "norm_out",
           "time_embedding.linear_1": "temb_dense0", "time_embedding.linear_2": "temb_dense1",
           "class_embedding": "label_emb"}
  if module in fixed:
    return [fixed[module]], param

  def sub(rest: str, table: Mapping[str, str]) -> str:
    if rest not in table:
      raise KeyError(key)
    return table[rest]

  m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", module)
  if m:
    way, blk, kind, j, rest = m.groups()
    level = int(blk) if way == "down" else num_levels - 1 - int(blk)
    if kind == "resnets":
      return [f"{way}_{level}_block_{j}", sub(rest, _RESNET)], param
    return [f"{way}_{level}_attn_{j}", sub(rest, _ATTN)], param
  m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(downsamplers|upsamplers)\.0\.(.+)", module)
  if m:
    way, blk, _, rest = m.groups()
    level = int(blk) if way == "down" else num_levels - 1 - int(blk)
    name = f"{way}_{level}_{'downsample' if way == 'down' else 'upsample'}"
    if rest == "conv":
      return [name, "conv"], param
    return [name, sub(rest, _RESNET)], param  # a BigGAN resnet up/down block
  m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", module)
  if m:
    kind, j, rest = m.groups()
    if kind == "resnets":
      return [f"mid_block_{j}", sub(rest, _RESNET)], param
    return ["mid_attn", sub(rest, _ATTN)], param
  raise KeyError(key)


def from_diffusers(state_dict: Mapping[str, Any], *, model: Any = None,
                   sample_shape: tuple[int, int, int] | None = None) -> Params:
  """Converts a diffusers `UNet2DModel` state dict into `UNet` parameters.

  Args:
    state_dict: parameter name -> torch tensor or numpy array (as from `model.state_dict()`,
      `torch.load` of a `diffusion_pytorch_model.bin`, or `safetensors.numpy.load_file`).
    model: optional `UNet`; with `sample_shape` = (H, W, C) the result is checked against its
      parameter tree (names and shapes) and any mismatch is reported.
    sample_shape: (H, W, C) of the images, for the check above.

  Returns:
    The `params` collection (nested dict of float32 numpy arrays); use it as
    `model.apply({'params': params}, x, t)`.
  """
  keys = list(state_dict)
  num_levels = _num_levels(keys)
  params: Params = {}
  unknown = []
  for key in keys:
    try:
      path, param = _our_path(key, num_levels)
    except KeyError:
      unknown.append(key)
      continue
    name, value = _convert_leaf(path[-1], param, _to_numpy(state_dict[key]))
    node = params
    for part in path:
      node = node.setdefault(part, {})
    if name in node:
      raise ValueError(f"two state-dict entries map to {'/'.join(path)}/{name} (one is {key}).")
    node[name] = value
  if unknown:
    raise ValueError(f"{len(unknown)} state-dict keys have no counterpart in UNet, e.g. "
                     f"{unknown[:5]}; only UNet2DModel layouts built from DownBlock2D / "
                     "AttnDownBlock2D / ResnetDownsampleBlock2D (and the Up mirrors) convert.")
  if model is not None:
    if sample_shape is None:
      raise ValueError("pass sample_shape=(H, W, C) together with model to check the tree.")
    check_params(model, params, sample_shape)
  return params


def check_params(model: Any, params: Params, sample_shape: tuple[int, int, int]) -> None:
  """Raises ValueError unless `params` has exactly the names and shapes `model` expects."""
  import jax
  import jax.numpy as jnp

  h, w, c = sample_shape
  y = jnp.zeros((1,), jnp.int32) if getattr(model, "num_classes", None) else None
  expected = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, h, w, c)),
                         jnp.zeros((1,), jnp.int32), y))["params"]
  flat_e = {"/".join(str(k.key) for k in p): v.shape
            for p, v in jax.tree_util.tree_leaves_with_path(expected)}
  flat_g = {"/".join(str(k.key) for k in p): v.shape
            for p, v in jax.tree_util.tree_leaves_with_path(params)}
  missing = sorted(set(flat_e) - set(flat_g))
  extra = sorted(set(flat_g) - set(flat_e))
  wrong = sorted(k for k in set(flat_e) & set(flat_g) if flat_e[k] != flat_g[k])
  if missing or extra or wrong:
    raise ValueError(
        "converted parameters do not fit the model: "
        f"missing {missing[:5]}, unexpected {extra[:5]}, wrong shape "
        f"{[(k, flat_g[k], flat_e[k]) for k in wrong[:5]]}; check the UNet fields against the "
        "diffusers config (unet_kwargs_from_diffusers_config).")


def unet_kwargs_from_diffusers_config(config: Mapping[str, Any]) -> dict[str, Any]:
  """Maps a diffusers `UNet2DModel` config (its config.json) to `UNet(**kwargs)` fields.

  Missing keys take diffusers' defaults (as `UNet2DModel(**config)` would). Raises ValueError
  for the features `UNet` does not implement (Fourier/learned time embeddings, other
  activations, input centering, skip-connection blocks, ...).
  """
  def get(name, default=None):
    return config.get(name, default)

  def require(cond: bool, what: str) -> None:
    if not cond:
      raise ValueError(f"diffusers config: {what} is not supported by diffusion_jax UNet.")

  require(get("_class_name", "UNet2DModel") == "UNet2DModel", f"class {get('_class_name')}")
  require(get("time_embedding_type", "positional") == "positional",
          f"time_embedding_type={get('time_embedding_type')!r}")
  require(get("act_fn", "silu") in ("silu", "swish"), f"act_fn={get('act_fn')!r}")
  require(not get("center_input_sample", False), "center_input_sample=True")
  require(get("mid_block_scale_factor", 1) == 1, "mid_block_scale_factor != 1")
  require(get("mid_block_type", "UNetMidBlock2D") == "UNetMidBlock2D",
          f"mid_block_type={get('mid_block_type')!r}")
  require(get("add_attention", True), "add_attention=False")
  require(get("class_embed_type") is None, f"class_embed_type={get('class_embed_type')!r}")
  require(get("time_embedding_dim") in (None, 4 * get("block_out_channels")[0]),
          "time_embedding_dim != 4 * block_out_channels[0]")
  flip, shift = bool(get("flip_sin_to_cos", True)), int(get("freq_shift", 0))
  if (flip, shift) == (False, 1):
    convention = "ddpm"
  elif (flip, shift) == (True, 0):
    convention = "improved"
  else:
    raise ValueError(f"diffusers config: flip_sin_to_cos={flip}, freq_shift={shift} is neither "
                     "the DDPM (False, 1) nor the improved-diffusion (True, 0) embedding.")
  shift_type = get("resnet_time_scale_shift", "default")
  require(shift_type in ("default", "scale_shift"), f"resnet_time_scale_shift={shift_type!r}")
  if shift_type == "scale_shift":
    # diffusers drops the mid-block attention GroupNorm unless attn_norm_num_groups is set.
    require(get("attn_norm_num_groups") == get("norm_num_groups", 32),
            "scale_shift without attn_norm_num_groups == norm_num_groups")
  else:
    require(get("attn_norm_num_groups") in (None, get("norm_num_groups", 32)),
            "attn_norm_num_groups != norm_num_groups")

  channels = list(get("block_out_channels"))
  ch = channels[0]
  require(all(c % ch == 0 for c in channels), f"block_out_channels={channels} (not ch * ints)")
  down, up = list(get("down_block_types")), list(get("up_block_types"))
  sample_size = get("sample_size")
  if isinstance(sample_size, (list, tuple)):
    require(sample_size[0] == sample_size[1], "non-square sample_size")
    sample_size = sample_size[0]
  attn_levels = []
  updown = set()
  for i, (d, u) in enumerate(zip(down, reversed(up))):
    require(d in ("DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D"), f"block {d}")
    require(u in ("UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"), f"block {u}")
    require(d.startswith("Attn") == u.startswith("Attn"),
            f"attention only on one path at level {i} ({d} / {u})")
    if d.startswith("Attn"):
      attn_levels.append(i)
    updown.add(d == "ResnetDownsampleBlock2D" or
               (d == "AttnDownBlock2D" and get("downsample_type", "conv") == "resnet"))
    updown.add(u == "ResnetUpsampleBlock2D" or
               (u == "AttnUpBlock2D" and get("upsample_type", "conv") == "resnet"))
  require(len(updown) == 1, "a mix of conv and resnet up/down sampling")
  if attn_levels and sample_size is None:
    raise ValueError("diffusers config: sample_size is needed to place attention layers.")
  head_dim = get("attention_head_dim", 8)  # diffusers' default when the key is absent
  num_classes = get("num_class_embeds")
  return dict(
      ch=ch,
      ch_mult=tuple(c // ch for c in channels),
      num_res_blocks=int(get("layers_per_block", 2)),
      attn_resolutions=tuple(sample_size // 2 ** i for i in attn_levels),
      dropout=float(get("dropout", 0.0)),
      out_ch=int(get("out_channels", 3)),
      resamp_with_conv=True,
      num_heads=1,
      num_head_channels=-1 if head_dim is None else int(head_dim),
      resblock_updown=updown.pop(),
      use_scale_shift_norm=shift_type == "scale_shift",
      skip_rescale=False,
      num_classes=None if num_classes is None else int(num_classes),
      temb_convention=convention,
      norm_groups=int(get("norm_num_groups", 32)),
      norm_eps=float(get("norm_eps", 1e-5)),
      downsample_padding=int(get("downsample_padding", 1)),
  )


def diffusers_config(model: Any, *, sample_size: int, in_channels: int) -> dict[str, Any]:
  """The diffusers `UNet2DModel(**config)` arguments of our `UNet` layout (no torch import).

  The inverse of `unet_kwargs_from_diffusers_config`: `UNet2DModel(**diffusers_config(m, ...))`
  computes the same function as `m` once its weights are converted with `from_diffusers`
  (the PyTorch peer of a config, e.g. for benchmarks). Raises ValueError for layouts diffusers
  cannot express (1/sqrt(2) residual scaling, several heads by count, no resampling convs).
  """
  def require(cond: bool, what: str) -> None:
    if not cond:
      raise ValueError(f"UNet field {what} has no UNet2DModel equivalent.")

  require(not model.skip_rescale, "skip_rescale=True")
  require(model.resamp_with_conv, "resamp_with_conv=False")
  heads_by_width = model.num_head_channels not in (None, -1)
  require(heads_by_width or model.num_heads == 1, f"num_heads={model.num_heads}")
  num_levels = len(model.ch_mult)
  attn = [sample_size // 2 ** i in model.attn_resolutions for i in range(num_levels)]
  down = "ResnetDownsampleBlock2D" if model.resblock_updown else "DownBlock2D"
  up = "ResnetUpsampleBlock2D" if model.resblock_updown else "UpBlock2D"
  config = dict(
      sample_size=sample_size, in_channels=in_channels,
      out_channels=model.out_ch or in_channels,
      block_out_channels=tuple(model.ch * m for m in model.ch_mult),
      down_block_types=tuple("AttnDownBlock2D" if a else down for a in attn),
      up_block_types=tuple("AttnUpBlock2D" if a else up for a in reversed(attn)),
      layers_per_block=model.num_res_blocks,
      attention_head_dim=int(model.num_head_channels) if heads_by_width else None,
      norm_eps=model.norm_eps, norm_num_groups=model.norm_groups, dropout=model.dropout,
      flip_sin_to_cos=model.temb_convention == "improved",
      freq_shift=1 if model.temb_convention == "ddpm" else 0,
      downsample_padding=model.downsample_padding,
      resnet_time_scale_shift="scale_shift" if model.use_scale_shift_norm else "default",
      num_class_embeds=model.num_classes or None)
  if model.use_scale_shift_norm:
    config["attn_norm_num_groups"] = model.norm_groups
  if model.resblock_updown:
    config.update(downsample_type="resnet", upsample_type="resnet")
  return config


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads `.safetensors` (needs `safetensors`) or `.bin`/`.pt` (needs torch) into numpy."""
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file  # lazy: optional dependency
    return {k: np.asarray(v, np.float32) for k, v in load_file(path).items()}
  import torch  # lazy: never needed to import the library
  sd = torch.load(path, map_location="cpu", weights_only=True)
  return {k: v.detach().float().numpy() for k, v in sd.items()}


def load_diffusers_dir(path: str, **overrides: Any):
  """Builds `(UNet, params)` from a diffusers model folder on disk (no download).

  Args:
    path: folder with `config.json` and `diffusion_pytorch_model.safetensors` or `.bin` (the
      `unet/` subfolder of a pipeline snapshot, or the snapshot itself for the DDPM repos).
    **overrides: UNet fields to change (e.g. `dtype=jnp.bfloat16`, `dropout=0.0`).
  """
  from diffusion_jax.models.unet import UNet

  if not os.path.exists(os.path.join(path, "config.json")) and os.path.isdir(
      os.path.join(path, "unet")):
    path = os.path.join(path, "unet")
  with open(os.path.join(path, "config.json")) as f:
    config = json.load(f)
  for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
    weights = os.path.join(path, name)
    if os.path.exists(weights):
      break
  else:
    raise FileNotFoundError(f"no diffusion_pytorch_model.safetensors/.bin in {path}.")
  kwargs = unet_kwargs_from_diffusers_config(config)
  kwargs.update(overrides)
  model = UNet(**kwargs)
  size = config.get("sample_size") or 32
  size = size[0] if isinstance(size, (list, tuple)) else size
  params = from_diffusers(load_state_dict(weights), model=model,
                          sample_shape=(size, size, config.get("in_channels", 3)))
  return model, params
