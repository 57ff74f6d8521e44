"""Small host-side helpers of the trainer: uint8 conversion, image grids, PNG files."""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Maps samples in [-1, 1] to uint8 by clip(round((x + 1) * 127.5), 0, 255).

  Computed in float64; `round` is numpy's round half to even. The inverse of the data
  pipeline's `x / 127.5 - 1`: every uint8 value round-trips. This is the one conversion used
  for sample files, grids and the FID protocol.

  Args:
    images: float array [..., H, W, C] in [-1, 1] (values outside are clipped).

  Returns:
    uint8 array of the same shape.

  Raises:
    ValueError: if a sample is NaN or infinite (a diverged sampler).
  """
  x = np.asarray(images, dtype=np.float64)
  if not np.all(np.isfinite(x)):
    raise ValueError("samples contain NaN/inf; the sampler diverged (check the checkpoint and "
                     "`config.sampling`).")
  return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, num_cols: int | None = None, padding: int = 1,
              pad_value: int = 255, scale: int = 1) -> np.ndarray:
  """Tiles images into one picture, row-major, with a border between tiles.

  Args:
    images: uint8 [N, H, W, C].
    num_cols: tiles per row (default: ceil(sqrt(N))).
    padding: pixels between tiles (before scaling).
    pad_value: grey level of the border.
    scale: integer nearest-neighbour upscaling of the result (tiny 8x8 digits are
      unreadable at their native size).

  Returns:
    uint8 [rows * (H + padding) + padding, cols * (W + padding) + padding, C] times `scale`.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}.")
  n, h, w, c = images.shape
  num_cols = num_cols or max(1, math.ceil(math.sqrt(n)))
  num_rows = math.ceil(n / num_cols)
  grid = np.full((num_rows * (h + padding) + padding, num_cols * (w + padding) + padding, c),
                 pad_value, dtype=np.uint8)
  for i in range(n):
    r, col = divmod(i, num_cols)
    top, left = padding + r * (h + padding), padding + col * (w + padding)
    grid[top:top + h, left:left + w] = images[i]
  if scale > 1:
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
  return grid


def grid_scale(image_size: int) -> int:
  """Upscaling that makes a grid of `image_size` tiles readable (tiles of >= 32 pixels)."""
  return max(1, 32 // image_size)


def save_png(path: str, image: np.ndarray) -> None:
  """Writes a uint8 [H, W, C] image (C in {1, 3}) as PNG, creating the directory."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  image = np.asarray(image)
  if image.shape[-1] == 1:
    image = image[..., 0]
  Image.fromarray(image).save(path)
