"""Tests of configs/*.py and diffusion_jax.config_validation: every config is valid and builds
the paper's network; each bad field fails up front with an error naming the field and the fix."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default, tiny
from diffusion_jax import config_validation, experiment, train
from diffusion_jax.models import UNet
from diffusion_jax.samplers import registry

CONFIGS = ["default", "tiny", "digits", "cifar10", "celebahq", "lsun_bedroom", "lsun_church",
           "lsun_cat", "vp_digits", "ncsn_digits", "vp_cifar10", "ve_cifar10", "digits_cond",
           "digits_classifier", "adm_imagenet64", "adm_imagenet128", "adm_imagenet256"]


def _num_params(config) -> int:
  size, ch = config.data.image_size, config.data.num_channels
  shapes = jax.eval_shape(lambda: experiment.create_model(config).init(
      jax.random.PRNGKey(0), jnp.zeros((1, size, size, ch)), jnp.zeros((1,), jnp.int32)))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_valid_and_documented(name):
  module = importlib.import_module(f"configs.{name}")
  config = module.get_config()
  config_validation.validate_config(config, num_devices=8)
  if name != "default":
    assert "python main.py --config=configs/" in module.__doc__  # the command ...
    assert "xpect" in module.__doc__  # ... and the result to expect
  # The model section is the U-Net's constructor arguments.
  UNet(**config.model)


def test_default_config_comments_every_field():
  lines = open(default.__file__).read().splitlines()
  sampler_sections = {spec.config_section: {o.name: o for o in spec.options}
                      for spec in (registry.get(n) for n in registry.names()) if spec.options}
  for section, fields in default.get_config().items():
    if not hasattr(fields, "keys"):
      continue
    for field in fields.keys():
      if section == "sampling" and field in sampler_sections:
        # Per-sampler sections are documented where they are declared, with the sampler.
        assert set(fields[field]) == set(sampler_sections[field]), field
        assert all(option.help for option in sampler_sections[field].values()), field
        assert f"sampling.{field} (" in open(default.__file__).read(), field  # named there
        continue
      i = next(i for i, l in enumerate(lines) if f".{field} = " in l)
      # A trailing comment, or a comment line right above the field.
      assert "#" in lines[i] or lines[i - 1].strip().startswith("#"), field


def test_paper_parameter_counts():
  """DDPM: 35.7M parameters on CIFAR-10, 114M at 256x256 (Ho et al. 2020, App. B)."""
  c10 = importlib.import_module("configs.cifar10").get_config()
  assert abs(_num_params(c10) - 35.7e6) < 0.05e6
  bedroom = importlib.import_module("configs.lsun_bedroom").get_config()
  assert abs(_num_params(bedroom) - 113.7e6) < 0.5e6
  c10.diffusion.var_type = "learned_range"  # output channels follow var_type: 2C
  assert experiment.create_model(c10).out_ch == 6


@pytest.mark.parametrize("name,unet,classifier", [
    ("adm_imagenet64", 295.9e6, 65.44e6), ("adm_imagenet128", 421.5e6, 42.57e6),
    ("adm_imagenet256", 553.8e6, 54.10e6)])
def test_adm_parameter_counts(name, unet, classifier):
  """ADM's diffusion models: 296M / 422M / 554M (Dhariwal & Nichol 2021, hyperparameter table);
  the classifiers of guided-diffusion's settings (counted layer by layer in classifier_test)."""
  config = importlib.import_module(f"configs.{name}").get_config()
  config_validation.validate_classifier_config(config, num_devices=8)
  size = config.data.image_size
  x, t = jnp.zeros((1, size, size, 3)), jnp.zeros((1,), jnp.int32)
  count = lambda m, *a: sum(int(np.prod(v.shape)) for v in jax.tree.leaves(
      jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), x, t, *a))))
  assert abs(count(experiment.create_model(config), t) - unet) < 0.05e6
  assert abs(count(experiment.create_classifier(config)) - classifier) < 0.01e6


def _error(config, num_devices=8) -> str:
  with pytest.raises(config_validation.ConfigError) as e:
    config_validation.validate_config(config, num_devices=num_devices)
  return str(e.value)


def test_batch_size_not_divisible_by_devices():
  config = tiny.get_config()
  config.training.batch_size = 12
  msg = _error(config)
  assert "config.training.batch_size=12" in msg and "8 devices" in msg
  assert "--config.training.batch_size=8" in msg  # the fix


def test_image_size_that_does_not_fit_the_unet():
  config = tiny.get_config()
  config.model.ch_mult = (1, 2, 2, 2)  # three halvings: 8 -> 1 is fine, 12 is not
  config.data.image_size = 12
  msg = _error(config)
  assert "config.data.image_size=12" in msg and "divisible by 8" in msg


def test_attention_resolution_that_never_occurs():
  config = tiny.get_config()
  config.model.attn_resolutions = (16,)
  msg = _error(config)
  assert "config.model.attn_resolutions" in msg and "[8, 4]" in msg


def test_unknown_dataset_and_option_strings():
  config = tiny.get_config()
  config.data.dataset = "cifar100"
  assert "config.data.dataset='cifar100'" in _error(config) and "cifar10" in _error(config)
  config = tiny.get_config()
  config.diffusion.var_type = "large"
  assert "config.diffusion.var_type='large'" in _error(config) and "fixedlarge" in _error(config)
  config = tiny.get_config()
  config.sampling.sampler = "euler"
  assert "config.sampling.sampler" in _error(config)


def test_ode_bits_per_dim_options():
  config = tiny.get_config()
  config.eval.ode.estimator = "trace"
  config_validation.validate_config(config, num_devices=8)  # read only with eval.ode_bpd
  config.eval.ode_bpd = True
  assert "config.eval.ode.estimator='trace'" in _error(config) and "'exact'" in _error(config)
  config = tiny.get_config()
  config.eval.ode_bpd = True
  config.eval.ode.rtol = 0.0
  assert "config.eval.ode.rtol=0.0" in _error(config)
  config = tiny.get_config()
  config.eval.ode_bpd = True
  config.diffusion.mean_type = "mean"   # no score without eps / x0 / v: name the way out
  assert "config.diffusion.mean_type='mean'" in _error(config) and "eval.ode_bpd=False" in _error(config)
  config.eval.ode_bpd = False
  config_validation.validate_config(config, num_devices=8)
  config = tiny.get_config()
  config.sampling.sampler = "edm_stochastic"
  config.sampling.edm_stochastic.s_churn = -1.0
  assert "config.sampling.edm_stochastic.s_churn=-1.0" in _error(config)


def test_norm_groups_must_divide_widths():
  config = tiny.get_config()
  config.model.norm_groups = 32  # ch 16
  assert "config.model.norm_groups=32" in _error(config)


def test_missing_data_says_how_to_get_it(tmp_path):
  config = tiny.get_config()
  config.data.dataset = "cifar10"
  config.data.image_size = 32
  config.data.num_channels = 3
  config.model.ch_mult = (1, 2, 2)
  config.model.attn_resolutions = (8,)
  config.data.data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match=r"tfds build cifar10.*data.data_dir"):
    train.train_and_evaluate(config, str(tmp_path / "work"))
