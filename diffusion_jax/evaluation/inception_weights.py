"""The FID Inception weight files: read a local `.pth` / `.npz`, convert, check, never download.

`load_inception_params(path)` reads either the published PyTorch conversion of the 2015-12-05
TF graph (`pt_inception-2015-12-05-6726825d.pth`, read with torch, imported only then) or the
`.npz` written by `python -m diffusion_jax.evaluation.inception --convert IN.pth OUT.npz`, and
maps it onto the Flax `inception.FIDInceptionV3`.
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from flax import traverse_util

from diffusion_jax import errors

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
  from diffusion_jax.evaluation import inception  # pylint: disable=g-import-not-at-top  (cycle)
  shapes = inception.variable_shapes()
  flat_shapes = {tuple(k): v.shape for k, v in traverse_util.flatten_dict(shapes).items()}
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
  return traverse_util.unflatten_dict(out)


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
    raise errors.ConfigError("`config.eval.inception_weights` is not set; the FID Inception weights are "
                     "never downloaded at run time.\n" + WEIGHTS_HELP)
  if not os.path.isfile(path):
    raise errors.MissingFileError(f"Inception weights file `{path}` (config.eval.inception_weights) "
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


def main(argv: Sequence[str]) -> None:
  """`python -m diffusion_jax.evaluation.inception --convert IN.pth OUT.npz`."""
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
