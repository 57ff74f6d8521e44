"""The Flax FID InceptionV3 against torch-fidelity's PyTorch port (random weights, no download).

Reference: `torch_fidelity/feature_extractor_inceptionv3.py` of torch-fidelity==0.4.0, a port of
the 2015-12-05 TF graph that reproduces its TF1 bilinear resize. The package's `__init__` imports
torchvision (which does not import beside the CPU torch build), so we load only that module and
its torch-only siblings (helpers, defaults, deprecations, feature_extractor_base,
interpolate_compat_tensorflow) through a stub package object. The resize is also checked against
TensorFlow's own `resize_bilinear` (the op the original TTUR graph used).
"""
import importlib
import importlib.util
import sys
import types

import jax
import numpy as np
from flax import traverse_util
import pytest

from diffusion_jax.evaluation import inception

torch = pytest.importorskip("torch")
if importlib.util.find_spec("torch_fidelity") is None:
  pytest.skip("needs `pip install --no-deps torch-fidelity==0.4.0` (requirements-test.txt)",
              allow_module_level=True)

FEATURES = ("2048", "logits_unbiased", "logits")
OUR_NAMES = ("pool3", "logits_unbiased", "logits")


def load_torch_fidelity_module(name: str = "feature_extractor_inceptionv3"):
  """Imports torch_fidelity.<name> without running the package __init__ (which needs torchvision)."""
  full = f"torch_fidelity.{name}"
  if full in sys.modules:
    return sys.modules[full]
  if "torch_fidelity" not in sys.modules:
    spec = importlib.util.find_spec("torch_fidelity")
    pkg = types.ModuleType("torch_fidelity")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["torch_fidelity"] = pkg
  return importlib.import_module(full)


def torch_fidelity_random_model(seed: int = 0):
  """torch-fidelity's FeatureExtractorInceptionV3 with random weights and BN statistics."""
  mod = load_torch_fidelity_module()

  class _RandomInception(mod.FeatureExtractorInceptionV3):

    def load_state_dict(self, state_dict, *args, **kwargs):
      if state_dict is None:  # the (disabled) download returned nothing: keep the random init
        return None
      return super().load_state_dict(state_dict, *args, **kwargs)

  original = mod.load_state_dict_from_url
  mod.load_state_dict_from_url = lambda *a, **k: None  # never download
  try:
    model = _RandomInception("inception-v3-compat", list(FEATURES))
  finally:
    mod.load_state_dict_from_url = original
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("conv.weight"):  # He init keeps activations O(1) through 94 layers
        p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p[0].numel()) ** 0.5)
      elif name.endswith("bn.weight"):
        p.copy_(torch.rand(p.shape, generator=g) + 0.5)
      elif name.endswith("bn.bias"):
        p.copy_(torch.randn(p.shape, generator=g) * 0.1)
      elif name == "fc.weight":
        p.copy_(torch.randn(p.shape, generator=g) * 2048 ** -0.5)
      elif name == "fc.bias":
        p.copy_(torch.randn(p.shape, generator=g))
    for name, b in model.named_buffers():
      if name.endswith("running_mean"):
        b.copy_(torch.randn(b.shape, generator=g) * 0.1)
      elif name.endswith("running_var"):
        b.copy_(torch.rand(b.shape, generator=g) + 0.5)
  return model.eval()


def torch_features(model, images_nhwc_uint8):
  with torch.no_grad():
    out = model(torch.from_numpy(np.ascontiguousarray(images_nhwc_uint8.transpose(0, 3, 1, 2))))
  return {k: v.numpy() for k, v in zip(OUR_NAMES, out)}


@pytest.fixture(scope="module")
def torch_model():
  return torch_fidelity_random_model()


@pytest.mark.slow
def test_features_match_torch_fidelity(torch_model):
  # 32x32 uint8 (CIFAR-sized): exercises the TF1 upsampling, the (x - 128) / 128 scaling, every
  # block and both logits heads. Tolerance 1e-4 relative to the output's scale; measured ~1e-6.
  variables = inception.convert_torch_state_dict(torch_model.state_dict())
  images = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
  ref = torch_features(torch_model, images)
  ours = jax.jit(inception.inception_forward)(variables, images)
  for name in OUR_NAMES:
    got = np.asarray(ours[name])
    assert got.shape == ref[name].shape
    scale = np.abs(ref[name]).max()
    assert scale > 1.0  # the random network does not collapse to zeros
    np.testing.assert_allclose(got, ref[name], atol=1e-4 * scale, rtol=0)
  # The two images give different features (a real, non-degenerate comparison).
  assert np.abs(ref["pool3"][0] - ref["pool3"][1]).max() > 1e-2 * np.abs(ref["pool3"]).max()


@pytest.mark.parametrize("hw", [(32, 32), (8, 8), (300, 320), (480, 360), (299, 299), (28, 28)])
def test_resize_matches_torch_fidelity_and_tensorflow(hw):
  interp = load_torch_fidelity_module("interpolate_compat_tensorflow")
  x = np.random.default_rng(1).uniform(0, 255, size=(2, *hw, 3)).astype(np.float32)
  ours = np.asarray(inception.resize_bilinear_tf1(x))
  ref = interp.interpolate_bilinear_2d_like_tensorflow1x(
      torch.from_numpy(x.transpose(0, 3, 1, 2)), size=(299, 299), align_corners=False)
  ref = ref.numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=0)  # values in [0, 255]: ~4e-6 relative
  tf = pytest.importorskip("tensorflow")
  ref_tf = tf.compat.v1.image.resize_bilinear(x, (299, 299), align_corners=False,
                                              half_pixel_centers=False).numpy()
  np.testing.assert_allclose(ours, ref_tf, atol=1e-3, rtol=0)


def test_preprocess_scaling_and_grayscale():
  img = np.array([0, 1, 127, 128, 255], np.uint8).reshape(1, 1, 5, 1)
  img = np.broadcast_to(img, (1, 299, 5, 1))
  img = np.pad(img, ((0, 0), (0, 0), (0, 294), (0, 0)), mode="edge")  # [1, 299, 299, 1]
  out = np.asarray(inception.preprocess(img))
  assert out.shape == (1, 299, 299, 3)
  np.testing.assert_array_equal(out[0, 0, :5, 0], (np.array([0, 1, 127, 128, 255]) - 128) / 128)
  np.testing.assert_array_equal(out[..., 0], out[..., 2])  # gray repeated to RGB
  with pytest.raises(ValueError, match="NHWC"):
    inception.preprocess(np.zeros((1, 3, 32, 32), np.uint8))


def test_weight_files_roundtrip_and_errors(tmp_path, torch_model):
  sd = torch_model.state_dict()
  pth = str(tmp_path / "w.pth")
  torch.save(sd, pth)
  v_pth, info = inception.load_inception_params(pth)
  assert info["sha256"] == inception.file_sha256(pth) and len(info["sha256"]) == 64
  npz = str(tmp_path / "w.npz")
  inception._main(["--convert", pth, npz])
  v_npz, info_npz = inception.load_inception_params(npz)
  assert info_npz["source_sha256"] == info["sha256"]
  flat_a = traverse_util.flatten_dict(v_pth)
  flat_b = traverse_util.flatten_dict(v_npz)
  assert flat_a.keys() == flat_b.keys() and len(flat_a) == len(
      traverse_util.flatten_dict(inception.variable_shapes()))
  for k in flat_a:
    np.testing.assert_array_equal(flat_a[k], flat_b[k])
  # The layout conversion: torch conv [O, I, kh, kw] -> flax [kh, kw, I, O]; fc transposed.
  np.testing.assert_array_equal(
      v_pth["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"],
      sd["Mixed_6b.branch7x7_2.conv.weight"].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(v_pth["params"]["fc_kernel"], sd["fc.weight"].numpy().T)
  np.testing.assert_array_equal(v_pth["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["var"],
                                sd["Mixed_7c.branch_pool.bn.running_var"].numpy())

  with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
    inception.load_inception_params(str(tmp_path / "missing.pth"))
  with pytest.raises(ValueError, match="inception_weights"):
    inception.load_inception_params(None)
  bad = dict(sd)
  del bad["Mixed_5b.branch1x1.bn.running_var"]
  bad["AuxLogits.fc.weight"] = torch.zeros(3)
  with pytest.raises(ValueError, match="AuxLogits.*Mixed_5b.branch1x1.bn.var"):
    inception.convert_torch_state_dict(bad)
  bad = dict(sd)
  bad["fc.weight"] = torch.zeros(1000, 2048)
  with pytest.raises(ValueError, match="fc.weight.*shape"):
    inception.convert_torch_state_dict(bad)


def test_extractor_counts_every_image_and_pads_nothing_in():
  # Batching logic with a cheap stand-in network: 13 images, batch 8 over 8 devices, last
  # batch of 5 padded; the output has exactly the 13 rows, equal to per-image results.
  def forward(variables, images):
    x = images.astype(np.float32).reshape(images.shape[0], -1)
    return {"pool3": x @ variables["w"], "logits_unbiased": x[:, :3], "logits": x[:, :3] + 1}

  w = np.random.default_rng(2).normal(size=(4 * 4 * 3, 6)).astype(np.float32)
  ext = inception.InceptionExtractor({"w": w}, batch_size=8, forward_fn=forward)
  images = np.random.default_rng(3).integers(0, 256, size=(13, 4, 4, 3), dtype=np.uint8)
  feats = ext(images)
  assert feats["pool3"].shape == (13, 6)
  np.testing.assert_allclose(feats["pool3"], images.reshape(13, -1).astype(np.float64) @ w,
                             rtol=1e-5)
  with pytest.raises(ValueError, match="uint8"):
    ext(images.astype(np.float32))
