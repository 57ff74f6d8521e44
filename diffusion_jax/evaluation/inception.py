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
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.evaluation import inception_weights

INPUT_SIZE = 299
POOL3_DIM = 2048
NUM_CLASSES = 1008
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


# The weight files (conversion, loading, the --convert command) live in inception_weights.py.
load_inception_params = inception_weights.load_inception_params
convert_torch_state_dict = inception_weights.convert_torch_state_dict
file_sha256 = inception_weights.file_sha256
WEIGHTS_HELP = inception_weights.WEIGHTS_HELP


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


_main = inception_weights.main

if __name__ == "__main__":
  import sys  # pylint: disable=g-import-not-at-top
  _main(sys.argv[1:])
