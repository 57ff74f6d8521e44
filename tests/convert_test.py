"""Equivalence with diffusers' UNet2DModel: random torch weights -> converter -> same outputs.

A randomly initialised diffusers model has every layer non-zero (torch's default init), so a
wrong transpose, a swapped q/k, a misplaced attention or skip, a wrong padding or epsilon shows
up in the output. Tolerance: 1e-4 max abs error in float32 (outputs are O(1)).
"""

import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.models import UNet, convert, layers

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# google/ddpm-cifar10-32 config.json (the fields that define the network).
DDPM_CIFAR10_CONFIG = {
    "_class_name": "UNet2DModel", "act_fn": "silu", "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256], "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3,
    "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32,
    "out_channels": 3, "sample_size": 32, "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
# google/ddpm-celebahq-256 / ddpm-ema-church-256 layout, with 32 base channels at 64 px: the same
# six levels and attention at the same level (the fifth) as the 256 px model.
DDPM_256_SMALL_CONFIG = {
    **DDPM_CIFAR10_CONFIG,
    "block_out_channels": [32, 32, 64, 64, 128, 128], "sample_size": 64,
    "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4,
}
# ADM options: AdaGN, BigGAN res up/down, multi-head attention, classes, learned variance.
ADM_SMALL_CONFIG = {
    "sample_size": 16, "in_channels": 3, "out_channels": 6, "block_out_channels": [32, 64, 64],
    "down_block_types": ["ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"],
    "layers_per_block": 1, "attention_head_dim": 16, "norm_eps": 1e-5, "flip_sin_to_cos": True,
    "freq_shift": 0, "downsample_type": "resnet", "upsample_type": "resnet",
    "resnet_time_scale_shift": "scale_shift", "attn_norm_num_groups": 32, "num_class_embeds": 10,
}
# Conv resampling with ADM's symmetric padding, multi-head attention, 2 res blocks, 1 channel.
CONV_PAD1_CONFIG = {
    "sample_size": 16, "in_channels": 1, "out_channels": 2, "block_out_channels": [32, 64],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "layers_per_block": 2,
    "attention_head_dim": 8, "norm_eps": 1e-6, "flip_sin_to_cos": False, "freq_shift": 1,
    "downsample_padding": 1,
}


def _torch_model(config, seed=0):
  torch.manual_seed(seed)
  cfg = {k: v for k, v in config.items() if not k.startswith("_")}
  return diffusers.UNet2DModel(**cfg).eval()


def _inputs(config, batch=2, seed=0):
  rng = np.random.RandomState(seed)
  size, c = config["sample_size"], config["in_channels"]
  x = rng.randn(batch, c, size, size).astype(np.float32)  # NCHW for torch
  t = np.array([0, 999, 417, 3][:batch], np.int64)
  y = rng.randint(0, config["num_class_embeds"], batch) if config.get("num_class_embeds") else None
  return x, t, y


def _compare(config, *, skip_rescale=False, atol=1e-4):
  tmodel = _torch_model(config)
  if skip_rescale:
    # diffusers' per-block output scale, set everywhere = our 1/sqrt(2) residual scaling.
    for module in tmodel.modules():
      if hasattr(module, "output_scale_factor"):
        module.output_scale_factor = math.sqrt(2.0)
      if hasattr(module, "rescale_output_factor"):
        module.rescale_output_factor = math.sqrt(2.0)
  x, t, y = _inputs(config)
  with torch.no_grad():
    ref = tmodel(torch.from_numpy(x), torch.from_numpy(t),
                 None if y is None else torch.from_numpy(y)).sample.numpy()

  kwargs = convert.unet_kwargs_from_diffusers_config(dict(tmodel.config))
  model = UNet(**{**kwargs, "skip_rescale": skip_rescale})
  size = config["sample_size"]
  params = convert.from_diffusers(tmodel.state_dict(), model=model,
                                  sample_shape=(size, size, config["in_channels"]))
  out = jax.jit(model.apply)({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1)),
                             jnp.asarray(t, jnp.int32),
                             None if y is None else jnp.asarray(y, jnp.int32))
  out = np.asarray(out).transpose(0, 3, 1, 2)
  assert out.shape == ref.shape
  assert np.abs(ref).max() > 0.1  # a real signal, not two near-zero outputs
  err = np.abs(out - ref).max()
  assert err <= atol, f"max abs error {err:.2e} > {atol:.0e}"
  return model, params


def test_ddpm_cifar10_layout_matches_diffusers():
  model, params = _compare(DDPM_CIFAR10_CONFIG)
  assert model == UNet(dropout=0.0, out_ch=3)  # the converter maps onto our CIFAR-10 defaults
  assert sum(v.size for v in jax.tree.leaves(params)) == 35_746_307


def test_ddpm_256_layout_small_matches_diffusers():
  _compare(DDPM_256_SMALL_CONFIG)


def test_adm_options_match_diffusers():
  _compare(ADM_SMALL_CONFIG)


def test_conv_resampling_heads_and_residual_rescaling_match_diffusers():
  _compare(CONV_PAD1_CONFIG, skip_rescale=True)


def _compare_gradients(config, *, rtol):
  """Parameter gradients of an MSE loss: ours (custom backward passes of models.ops: GroupNorm
  + swish, bias adds, AdaGN) against torch autograd through diffusers' model, converted to our
  layout by the same converter; per tensor, max |difference| <= rtol * max |torch's|."""
  tmodel = _torch_model(config).train()
  x, t, y = _inputs(config)
  size, out_ch = config["sample_size"], config.get("out_channels", config["in_channels"])
  target = np.random.RandomState(1).randn(x.shape[0], out_ch, size, size).astype(np.float32)
  out = tmodel(torch.from_numpy(x), torch.from_numpy(t), None if y is None else torch.from_numpy(y))
  torch.mean((out.sample - torch.from_numpy(target)) ** 2).backward()
  torch_grads = convert.from_diffusers({k: p.grad for k, p in tmodel.named_parameters()})

  model = UNet(**convert.unet_kwargs_from_diffusers_config(dict(tmodel.config)))
  params = convert.from_diffusers(tmodel.state_dict(), model=model,
                                  sample_shape=(size, size, config["in_channels"]))
  labels = None if y is None else jnp.asarray(y, jnp.int32)
  loss = lambda p: jnp.mean((model.apply({"params": p}, jnp.asarray(x.transpose(0, 2, 3, 1)),
                                         jnp.asarray(t, jnp.int32), labels)
                             - jnp.asarray(target.transpose(0, 2, 3, 1))) ** 2)
  grads = jax.jit(jax.grad(loss))(params)
  ours = dict(jax.tree_util.tree_leaves_with_path(grads))
  theirs = jax.tree_util.tree_leaves_with_path(torch_grads)
  assert len(ours) == len(theirs)
  # A conv bias feeding a GroupNorm of one channel per group has a zero gradient (the norm
  # removes any constant): both sides give rounding noise there, below `zero`.
  zero = 1e-5 * max(np.abs(ref).max() for _, ref in theirs)
  for path, ref in theirs:
    name, scale = jax.tree_util.keystr(path), np.abs(ref).max()
    if scale < zero:
      assert np.abs(np.asarray(ours[path])).max() < zero, name
    else:
      assert np.abs(np.asarray(ours[path]) - ref).max() <= rtol * scale, name


def test_gradients_match_torch_autograd_through_diffusers():
  _compare_gradients(DDPM_256_SMALL_CONFIG, rtol=1e-4)


def test_adm_gradients_match_torch_autograd_through_diffusers():
  _compare_gradients(ADM_SMALL_CONFIG, rtol=1e-4)


def test_ddpm_downsample_padding_is_tf_same():
  # The DDPM code's stride-2 conv uses TF 'SAME' padding, which on an even size pads 0 before
  # and 1 after (diffusers: downsample_padding=0 -> F.pad(x, (0, 1, 0, 1))); ADM pads 1 / 1.
  rng = np.random.RandomState(0)
  x = rng.randn(2, 8, 8, 32).astype(np.float32)
  w = rng.randn(32, 32, 3, 3).astype(np.float32) / 17
  b = rng.randn(32).astype(np.float32)
  params = {"conv": {"kernel": w.transpose(2, 3, 1, 0), "bias": b}}
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2))
  for pad, torch_pad in ((0, (0, 1, 0, 1)), (1, (1, 1, 1, 1))):
    ours = np.asarray(layers.Downsample(True, pad).apply({"params": params}, jnp.asarray(x)))
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(xt, torch_pad),
                                     torch.from_numpy(w), torch.from_numpy(b), stride=2)
    np.testing.assert_allclose(ours, ref.numpy().transpose(0, 2, 3, 1), atol=1e-5)
  other = np.asarray(layers.Downsample(True, 1).apply({"params": params}, jnp.asarray(x)))
  ddpm = np.asarray(layers.Downsample(True, 0).apply({"params": params}, jnp.asarray(x)))
  assert np.abs(other - ddpm).max() > 0.1


def _deprecated_names(state_dict):
  """Renames attention keys to the old layout of the original DDPM .bin files on the Hub."""
  old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  out = {}
  for k, v in state_dict.items():
    m = re.fullmatch(r"(.*\.attentions\.\d+\.)(to_q|to_k|to_v|to_out\.0)(\.\w+)", k)
    out[m.group(1) + old[m.group(2)] + m.group(3) if m else k] = v
  return out


def test_deprecated_attention_key_names_convert_the_same():
  sd = _torch_model(DDPM_256_SMALL_CONFIG).state_dict()
  legacy = _deprecated_names(sd)
  assert any(".query." in k for k in legacy) and any(".proj_attn." in k for k in legacy)
  new, old = convert.from_diffusers(sd), convert.from_diffusers(legacy)
  flat_new = jax.tree_util.tree_leaves_with_path(new)
  flat_old = dict(jax.tree_util.tree_leaves_with_path(old))
  assert len(flat_new) == len(flat_old)
  for path, value in flat_new:
    np.testing.assert_array_equal(value, flat_old[path])


def test_layouts_of_tensors():
  tmodel = _torch_model(CONV_PAD1_CONFIG)
  sd = tmodel.state_dict()
  p = convert.from_diffusers(sd)
  # conv [O, I, kh, kw] -> [kh, kw, I, O]
  w = sd["down_blocks.0.resnets.1.conv1.weight"].numpy()
  np.testing.assert_array_equal(p["down_0_block_1"]["conv1"]["kernel"][1, 2, 5, 7], w[7, 5, 1, 2])
  # Linear [O, I] -> Dense [I, O]; 1x1 conv shortcut -> Dense.
  w = sd["up_blocks.0.attentions.2.to_k.weight"].numpy()  # up_blocks.0 = our level 1
  np.testing.assert_array_equal(p["up_1_attn_2"]["k"]["kernel"], w.T)
  w = sd["up_blocks.1.resnets.0.conv_shortcut.weight"].numpy()
  np.testing.assert_array_equal(p["up_0_block_0"]["shortcut"]["kernel"], w[:, :, 0, 0].T)
  np.testing.assert_array_equal(p["norm_out"]["scale"], sd["conv_norm_out.weight"].numpy())


def test_unet_kwargs_of_ddpm_cifar10_config():
  kw = convert.unet_kwargs_from_diffusers_config(DDPM_CIFAR10_CONFIG)
  assert kw["ch"] == 128 and kw["ch_mult"] == (1, 2, 2, 2) and kw["num_res_blocks"] == 2
  assert kw["attn_resolutions"] == (16,) and kw["norm_eps"] == 1e-6
  assert kw["temb_convention"] == "ddpm" and kw["downsample_padding"] == 0
  kw = convert.unet_kwargs_from_diffusers_config(
      {**DDPM_256_SMALL_CONFIG, "block_out_channels": [128, 128, 256, 256, 512, 512],
       "sample_size": 256})
  assert kw["ch_mult"] == (1, 1, 2, 2, 4, 4) and kw["attn_resolutions"] == (16,)
  # An absent key means diffusers' default (UNet2DModel's attention_head_dim=8), not None.
  no_key = {k: v for k, v in DDPM_CIFAR10_CONFIG.items() if k != "attention_head_dim"}
  assert convert.unet_kwargs_from_diffusers_config(no_key)["num_head_channels"] == 8
  assert kw["num_head_channels"] == -1  # explicit None: one head over all channels (DDPM)


@pytest.mark.parametrize("change,match", [
    ({"time_embedding_type": "fourier"}, "time_embedding_type"),
    ({"flip_sin_to_cos": True}, "flip_sin_to_cos"),
    ({"center_input_sample": True}, "center_input_sample"),
    ({"up_block_types": ["UpBlock2D"] * 4}, "attention only on one path"),
])
def test_unsupported_configs_are_named(change, match):
  with pytest.raises(ValueError, match=match):
    convert.unet_kwargs_from_diffusers_config({**DDPM_CIFAR10_CONFIG, **change})


def test_unknown_keys_and_wrong_model_are_reported():
  sd = _torch_model(CONV_PAD1_CONFIG).state_dict()
  with pytest.raises(ValueError, match="no counterpart"):
    convert.from_diffusers({**sd, "down_blocks.0.extra.weight": np.zeros(3)})
  wrong = UNet(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,))
  with pytest.raises(ValueError, match="missing|unexpected|wrong shape"):
    convert.from_diffusers(sd, model=wrong, sample_shape=(16, 16, 1))


def test_load_diffusers_dir_round_trip(tmp_path):
  tmodel = _torch_model(CONV_PAD1_CONFIG, seed=3)
  tmodel.save_pretrained(str(tmp_path))  # config.json + diffusion_pytorch_model.safetensors
  model, params = convert.load_diffusers_dir(str(tmp_path))
  with open(os.path.join(tmp_path, "config.json")) as f:
    assert json.load(f)["downsample_padding"] == 1
  assert model.downsample_padding == 1 and model.num_head_channels == 8
  direct = convert.from_diffusers(tmodel.state_dict())
  for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(params),
                               jax.tree_util.tree_leaves_with_path(direct)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def test_library_import_does_not_import_torch():
  import subprocess
  import sys
  code = ("import sys, diffusion_jax.models as m; m.UNet(); "
          "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("config", [DDPM_CIFAR10_CONFIG, DDPM_256_SMALL_CONFIG, ADM_SMALL_CONFIG,
                                    CONV_PAD1_CONFIG])
def test_diffusers_config_is_the_inverse_map(config):
  kwargs = convert.unet_kwargs_from_diffusers_config(config)
  back = convert.diffusers_config(UNet(**kwargs), sample_size=config["sample_size"],
                                  in_channels=config["in_channels"])
  assert convert.unet_kwargs_from_diffusers_config(back) == kwargs
  # And diffusers builds it: the same parameter count as our model.
  model = UNet(**kwargs)
  size = config["sample_size"]
  params = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, size, size, config["in_channels"])),
      jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32) if model.num_classes else None))
  ours = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
  assert sum(p.numel() for p in diffusers.UNet2DModel(**back).parameters()) == ours
