"""The FID InceptionV3 in Flax: the 2015-12-05 TensorFlow graph used by TTUR, pytorch-fid, torch-fidelity.

This is the network every published FID on CIFAR-10 / LSUN / CelebA-HQ was computed with: the
Inception graph `inception-2015-12-05` of the original TTUR `fid.py` (Heusel et al. 2017) and of
the Inception Score code (Salimans et al. 2016). It differs from torchvision's ImageNet
InceptionV3 in ways that change the numbers, all reproduced here:

* input: uint8 RGB, resized to 299x299 with TensorFlow 1.x bilinear resizing
  (`align_corners=False`, no half-pixel centres: source coordinate = `dst * in / out`), then
  scaled with `(x - 128) / 128`;
* 1008 output classes (not 1000), conv layers without bias followed by BatchNorm(eps=1e-3);
* the average pools inside Mixed_5*, Mixed_6b-e and Mixed_7b do not count padded zeros;
* the pool branch of the last block (Mixed_7c) is a 3x3 max pool, not an average pool.

Outputs: `pool3` [B, 2048] (FID, precision/recall), `logits_unbiased` [B, 1008] (pool3 @ W, the
Inception Score's input in the original code), `logits` [B, 1008] (with the bias).

Weights are never downloaded: `load_inception_params(path)` reads a local file, either the
published PyTorch conversion (`pt_inception-2015-12-05-6726825d.pth` from pytorch-fid's release
`fid_weights`, or the identically named `weights-inception-2015-12-05-6726825d.pth` from
torch-fidelity's release v0.2.0; torch is imported only to read it) or a `.npz` written by
`python -m diffusion_jax.evaluation.inception --convert IN.pth OUT.npz`. See
`diffusion_jax/evaluation/README.md`.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299
POOL3_DIM = 2048
NUM_CLASSES = 1008
# torch.hub names files <name>-<first 8 hex digits of the file's SHA-256>.pth.
KNOWN_SHA256_PREFIX = "6726825d"
WEIGHTS_HELP = (
    "Download the FID Inception weights once, on a machine with internet access, from\n"
    "  https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth\n"
    "(or torch-fidelity's identical weights-inception-2015-12-05-6726825d.pth), check that its "
    "SHA-256 starts with 6726825d (`sha256sum FILE`), and point `config.eval.inception_weights` "
    "at it. Optionally convert it to .npz (no torch needed afterwards): `python -m "
    "diffusion_jax.evaluation.inception --convert FILE.pth FILE.npz`."
)

Variables = Dict[str, Any]


# ----------------------------------------------------------------------------- preprocessing


def resize_bilinear_tf1(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
  """Bilinear resize as TensorFlow 1.x `tf.image.resize_bilinear(align_corners=False)`.

  Output pixel i reads source coordinate `i * in / out` (no half-pixel offset), interpolates
  linearly between floor and floor + 1 (clamped at the last row/column). This is what the
  TTUR/TF FID graph did, and torch-fidelity reproduces it; `F.interpolate` (pytorch-fid) does not.

  Args:
    images: [B, H, W, C] float32.
    size: output height and width.

  Returns:
    [B, size, size, C] float32.
  """
  _, h, w, _ = images.shape
  if (h, w) == (size, size):
    return images

  def axis_weights(n_in):
    # float32 throughout, as the TF kernel: scale = in/out rounded to float32.
    grid = jnp.arange(size, dtype=jnp.float32) * np.float32(n_in / size)
    lo = jnp.floor(grid).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, n_in - 1)
    return lo, hi, grid - lo.astype(jnp.float32)

  ylo, yhi, dy = axis_weights(h)
  xlo, xhi, dx = axis_weights(w)
  rows_lo = images[:, ylo]
  rows_hi = images[:, yhi]
  dx = dx[None, None, :, None]
  top = rows_lo[:, :, xlo] + (rows_lo[:, :, xhi] - rows_lo[:, :, xlo]) * dx
  bottom = rows_hi[:, :, xlo] + (rows_hi[:, :, xhi] - rows_hi[:, :, xlo]) * dx
  return top + (bottom - top) * dy[None, :, None, None]


def preprocess(images: jax.Array) -> jax.Array:
  """uint8 (or float in [0, 255]) [B, H, W, C] -> Inception input [B, 299, 299, 3] in [-1, 1).

  Grayscale (C = 1) is repeated to 3 channels. The scaling `(x - 128) / 128` is the graph's own
  (`Sub` 128, `Mul` 1/128), not the diffusion convention `x / 127.5 - 1`.
  """
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"`images` must be [B, H, W, 1 or 3] (NHWC), got shape {images.shape}.")
  x = images.astype(jnp.float32)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  x = resize_bilinear_tf1(x)
  return (x - 128.0) / 128.0


# ----------------------------------------------------------------------------- network


class BasicConv(nn.Module):
  """Conv (no bias) -> BatchNorm(eps=1e-3, running statistics) -> ReLU."""
  features: int
  kernel_size: Tuple[int, int]
  strides: Tuple[int, int] = (1, 1)
  padding: Tuple[int, int] = (0, 0)
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    ph, pw = self.padding
    x = nn.Conv(self.features, self.kernel_size, self.strides, padding=((ph, ph), (pw, pw)),
                use_bias=False, precision=self.precision, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool_same(x):
  # TF's average pool with SAME padding divides by the number of real (unpadded) pixels.
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_valid(x):
  return nn.max_pool(x, (3, 3), (2, 2), padding="VALID")


class InceptionA(nn.Module):
  pool_features: int
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    c = functools.partial(BasicConv, precision=self.precision)
    b1 = c(64, (1, 1), name="branch1x1")(x)
    b5 = c(48, (1, 1), name="branch5x5_1")(x)
    b5 = c(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = c(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = c(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = c(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = c(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    c = functools.partial(BasicConv, precision=self.precision)
    b3 = c(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
    bd = c(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = c(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = c(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_valid(x)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    c = functools.partial(BasicConv, precision=self.precision)
    c7 = self.channels_7x7
    b1 = c(192, (1, 1), name="branch1x1")(x)
    b7 = c(c7, (1, 1), name="branch7x7_1")(x)
    b7 = c(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = c(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = c(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = c(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = c(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = c(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = c(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = c(192, (1, 1), name="branch_pool")(_avg_pool_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    c = functools.partial(BasicConv, precision=self.precision)
    b3 = c(192, (1, 1), name="branch3x3_1")(x)
    b3 = c(320, (3, 3), strides=(2, 2), name="branch3x3_2")(b3)
    b7 = c(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = c(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = c(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = c(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_valid(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (pool='avg') and Mixed_7c (pool='max', a quirk of the 2015 TF graph)."""
  pool: str = "avg"
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    c = functools.partial(BasicConv, precision=self.precision)
    b1 = c(320, (1, 1), name="branch1x1")(x)
    b3 = c(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate([c(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          c(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = c(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = c(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([c(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          c(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    if self.pool == "avg":
      pooled = _avg_pool_same(x)
    else:
      pooled = nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))
    bp = c(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """The FID InceptionV3 trunk on preprocessed input [B, 299, 299, 3] (see `preprocess`).

  Attributes:
    precision: matmul/conv precision (`jax.lax.Precision`); the default HIGHEST keeps float32
      convolutions on GPU/TPU (no TF32/bf16 passes), so features do not depend on the device.

  Returns a dict: pool3 [B, 2048], logits_unbiased [B, 1008], logits [B, 1008].
  """
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x) -> Dict[str, jax.Array]:
    c = functools.partial(BasicConv, precision=self.precision)
    x = c(32, (3, 3), strides=(2, 2), name="Conv2d_1a_3x3")(x)   # 149x149x32
    x = c(32, (3, 3), name="Conv2d_2a_3x3")(x)                   # 147x147x32
    x = c(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)   # 147x147x64
    x = _max_pool_valid(x)                                       # 73x73x64
    x = c(80, (1, 1), name="Conv2d_3b_1x1")(x)                   # 73x73x80
    x = c(192, (3, 3), name="Conv2d_4a_3x3")(x)                  # 71x71x192
    x = _max_pool_valid(x)                                       # 35x35x192
    x = InceptionA(32, self.precision, name="Mixed_5b")(x)       # 35x35x256
    x = InceptionA(64, self.precision, name="Mixed_5c")(x)       # 35x35x288
    x = InceptionA(64, self.precision, name="Mixed_5d")(x)       # 35x35x288
    x = InceptionB(self.precision, name="Mixed_6a")(x)           # 17x17x768
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c7, self.precision, name=name)(x)           # 17x17x768
    x = InceptionD(self.precision, name="Mixed_7a")(x)           # 8x8x1280
    x = InceptionE("avg", self.precision, name="Mixed_7b")(x)    # 8x8x2048
    x = InceptionE("max", self.precision, name="Mixed_7c")(x)    # 8x8x2048
    pool3 = jnp.mean(x, axis=(1, 2))                             # [B, 2048]
    kernel = self.param("fc_kernel", nn.initializers.lecun_normal(), (POOL3_DIM, NUM_CLASSES))
    bias = self.param("fc_bias", nn.initializers.zeros, (NUM_CLASSES,))
    logits_unbiased = jnp.matmul(pool3, kernel, precision=self.precision)
    return {"pool3": pool3, "logits_unbiased": logits_unbiased, "logits": logits_unbiased + bias}


def inception_forward(variables: Variables, images: jax.Array,
                      precision: Any = jax.lax.Precision.HIGHEST) -> Dict[str, jax.Array]:
  """uint8 images [B, H, W, C] -> {'pool3' [B, 2048], 'logits_unbiased', 'logits' [B, 1008]}."""
  return FIDInceptionV3(precision=precision).apply(variables, preprocess(images))


# ----------------------------------------------------------------------------- weights


def variable_shapes() -> Variables:
  """Shapes of the Flax variables ({'params', 'batch_stats'}), without allocating them."""
  x = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  return jax.eval_shape(lambda x: FIDInceptionV3().init(jax.random.PRNGKey(0), x), x)


def convert_torch_state_dict(state_dict: Mapping[str, Any]) -> Variables:
  """Converts a pytorch-fid / torch-fidelity FID Inception state dict to Flax variables.

  Name mapping (torchvision-style names, as in both projects' weight files):
  `<path>.conv.weight` [O, I, kh, kw] -> params[<path>]['conv']['kernel'] [kh, kw, I, O];
  `<path>.bn.{weight, bias}` -> params[...]['bn']['{scale, bias}'];
  `<path>.bn.running_{mean, var}` -> batch_stats[...]['bn']['{mean, var}'];
  `fc.weight` [1008, 2048] -> params['fc_kernel'] [2048, 1008]; `fc.bias` -> params['fc_bias'].
  `num_batches_tracked` entries are ignored. Every variable must be filled exactly once with the
  right shape; anything else is an error that names the key.

  Args:
    state_dict: name -> array (numpy arrays or torch tensors).

  Returns:
    {'params': ..., 'batch_stats': ...} as nested dicts of float32 numpy arrays.
  """
  shapes = variable_shapes()
  flat_shapes = {tuple(k): v.shape for k, v in _flatten(shapes).items()}
  out: Dict[Tuple[str, ...], np.ndarray] = {}
  unknown = []
  for key, value in state_dict.items():
    if key.endswith("num_batches_tracked"):
      continue
    arr = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value,
                     dtype=np.float32)
    parts = key.split(".")
    leaf = parts[-1]
    if key == "fc.weight":
      target, arr = ("params", "fc_kernel"), arr.T
    elif key == "fc.bias":
      target = ("params", "fc_bias")
    elif len(parts) >= 3 and parts[-2] == "conv" and leaf == "weight":
      target, arr = ("params", *parts[:-1], "kernel"), arr.transpose(2, 3, 1, 0)
    elif len(parts) >= 3 and parts[-2] == "bn" and leaf in ("weight", "bias"):
      target = ("params", *parts[:-1], "scale" if leaf == "weight" else "bias")
    elif len(parts) >= 3 and parts[-2] == "bn" and leaf in ("running_mean", "running_var"):
      target = ("batch_stats", *parts[:-1], "mean" if leaf == "running_mean" else "var")
    else:
      unknown.append(key)
      continue
    if target not in flat_shapes:
      unknown.append(key)
      continue
    if arr.shape != flat_shapes[target]:
      raise ValueError(f"weight `{key}` has shape {arr.shape} after conversion, expected "
                       f"{flat_shapes[target]}: this is not the FID InceptionV3 (2015-12-05).")
    out[target] = arr
  missing = sorted(".".join(k) for k in flat_shapes if k not in out)
  if unknown or missing:
    raise ValueError("the state dict is not the FID InceptionV3 (2015-12-05): "
                     f"unexpected keys {unknown[:8]}{'...' if len(unknown) > 8 else ''}, "
                     f"missing variables {missing[:8]}{'...' if len(missing) > 8 else ''}.")
  return _unflatten(out)


def _flatten(tree, prefix=()):
  flat = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      flat.update(_flatten(v, prefix + (k,)))
    else:
      flat[prefix + (k,)] = v
  return flat


def _unflatten(flat):
  tree: Dict[str, Any] = {}
  for path, v in flat.items():
    node = tree
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = v
  return tree


def file_sha256(path: str) -> str:
  """Hex SHA-256 of a file (streamed)."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def load_inception_params(path: Optional[str]) -> Tuple[Variables, Dict[str, Any]]:
  """Loads the FID Inception weights from a local `.pth` or `.npz` file. Never downloads.

  Args:
    path: `config.eval.inception_weights`: the published PyTorch weights (`.pth`, read with
      torch, imported lazily) or their `.npz` conversion (flat `torch_name -> array`).

  Returns:
    (variables, info): Flax variables and {'path', 'sha256', 'source_sha256'} for the protocol.
    `source_sha256` is the SHA-256 of the original `.pth` (stored in a converted `.npz`).
  """
  if not path:
    raise ValueError("`config.eval.inception_weights` is not set; the FID Inception weights are "
                     "never downloaded at run time.\n" + WEIGHTS_HELP)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Inception weights file `{path}` (config.eval.inception_weights) "
                            "does not exist.\n" + WEIGHTS_HELP)
  sha = file_sha256(path)
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as data:
      state_dict = {k: data[k] for k in data.files if not k.startswith("__")}
      source_sha = str(data["__source_sha256__"]) if "__source_sha256__" in data.files else sha
  else:
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f"reading `{path}` (a PyTorch file) needs torch; convert it once to .npz "
                        "on a machine with torch instead.\n" + WEIGHTS_HELP) from e
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    source_sha = sha
  variables = convert_torch_state_dict(state_dict)
  if not source_sha.startswith(KNOWN_SHA256_PREFIX):
    logging.warning("Inception weights %s have SHA-256 %s, not the published file's prefix %s: "
                    "scores will not be comparable with published FIDs.", path, source_sha,
                    KNOWN_SHA256_PREFIX)
  return variables, {"path": os.path.abspath(path), "sha256": sha, "source_sha256": source_sha,
                     "known_published_file": source_sha.startswith(KNOWN_SHA256_PREFIX)}


def save_npz_weights(state_dict: Mapping[str, Any], out_path: str,
                     source_sha256: str = "") -> None:
  """Writes a torch state dict as a flat `.npz` readable without torch."""
  arrays = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
            for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
  np.savez(out_path, __source_sha256__=np.asarray(source_sha256), **arrays)


# ----------------------------------------------------------------------------- batched extractor


class InceptionExtractor:
  """Jitted feature extraction over all local devices, for uint8 batches of any size.

  Batches are padded to a multiple of `batch_size` (one compiled shape), sharded along the batch
  over the local devices, and the padding rows are dropped from the output, so every image is
  counted exactly once.

  Example:
    extractor = InceptionExtractor.from_file(config.eval.inception_weights)
    feats = extractor(images_uint8)   # {'pool3': [N, 2048], 'logits_unbiased': [N, 1008], ...}
  """

  def __init__(self, variables: Variables, *, batch_size: int = 200,
               precision: Any = jax.lax.Precision.HIGHEST,
               weights_info: Optional[Dict[str, str]] = None,
               devices: Optional[Sequence[jax.Device]] = None,
               forward_fn: Optional[Callable[..., Dict[str, jax.Array]]] = None):
    devices = list(devices) if devices is not None else jax.local_devices()
    n = len(devices)
    self.batch_size = max(n, -(-batch_size // n) * n)  # round up to a multiple of the devices
    self.feature_dim = POOL3_DIM
    self.weights_info = weights_info or {}
    mesh = jax.sharding.Mesh(np.asarray(devices), ("batch",))
    self._data_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    self._variables = jax.device_put(variables, replicated)
    # forward_fn(variables, uint8 images) -> dict; injectable so the batching logic can be tested
    # with a cheap stand-in for the 299x299 network.
    forward_fn = forward_fn or functools.partial(inception_forward, precision=precision)
    self._fn = jax.jit(forward_fn)

  @classmethod
  def from_file(cls, path: Optional[str], **kwargs) -> "InceptionExtractor":
    variables, info = load_inception_params(path)
    return cls(variables, weights_info=info, **kwargs)

  def __call__(self, images) -> Dict[str, np.ndarray]:
    """uint8 [N, H, W, C] (C in {1, 3}) -> dict of float32 numpy arrays with N rows each."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
      raise ValueError(f"`images` must be uint8 (see to_uint8), got {images.dtype}.")
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise ValueError(f"`images` must be [N, H, W, 1 or 3], got shape {images.shape}.")
    outs: Dict[str, list] = {}
    for s in range(0, images.shape[0], self.batch_size):
      chunk = images[s:s + self.batch_size]
      n = chunk.shape[0]
      if n < self.batch_size:
        pad = np.zeros((self.batch_size - n,) + chunk.shape[1:], np.uint8)
        chunk = np.concatenate([chunk, pad])
      res = self._fn(self._variables, jax.device_put(chunk, self._data_sharding))
      for k, v in res.items():
        outs.setdefault(k, []).append(np.asarray(v)[:n])
    if not outs:
      return {"pool3": np.zeros((0, POOL3_DIM), np.float32),
              "logits_unbiased": np.zeros((0, NUM_CLASSES), np.float32),
              "logits": np.zeros((0, NUM_CLASSES), np.float32)}
    return {k: np.concatenate(v) for k, v in outs.items()}


def _main(argv: Sequence[str]) -> None:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description="Convert the FID Inception .pth to .npz.")
  parser.add_argument("--convert", nargs=2, metavar=("IN_PTH", "OUT_NPZ"), required=True)
  args = parser.parse_args(argv)
  import torch  # pylint: disable=g-import-not-at-top
  src, dst = args.convert
  state_dict = torch.load(src, map_location="cpu", weights_only=True)
  convert_torch_state_dict(state_dict)  # validates before writing
  save_npz_weights(state_dict, dst, source_sha256=file_sha256(src))
  print(f"wrote {dst} (source sha256 {file_sha256(src)})")


if __name__ == "__main__":
  import sys  # pylint: disable=g-import-not-at-top
  _main(sys.argv[1:])
