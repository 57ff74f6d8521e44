"""--mode=analyze: the DDPM paper's analyses of a checkpoint, as figures and their numbers.

  python main.py --config=configs/digits.py --workdir=/tmp/digits --mode=analyze \\
      --config.analysis.kind=rate_distortion

`config.analysis.kind` selects (the functions are in `diffusion_jax.analysis`):

  progressive     x0_hat at config.analysis.timesteps along ancestral chains (DDPM Fig. 6)
  shared_latent   several chains from one x_t ~ q(x_t | x_0) of test images, per t (Fig. 7)
  interpolation   two test images mixed at step analysis.interpolation_t through the reverse
                  chain (Fig. 8), beside DDIM's deterministic interpolation of x_T (slerp)
  rate_distortion progressive lossy compression of the test set (Sec. 4.3, Fig. 5): rate in
                  bits/dim and RMSE of x0_hat on [0, 255] against t; its lossless end point
                  is the bits/dim of --mode=eval (the same loop, images and keys)
  all             every one of the above

Each writes workdir/analysis/<kind>_<step>.png and <kind>_<step>.json (the numbers plotted and
the protocol). Chains are ancestral (DDPM Algorithm 2) with the checkpoint's EMA parameters and
config.sampling.clip_denoised; images come from data.eval_split; the rate-distortion loop uses
the eval section (batch_size, num_batches, clip_denoised) exactly as --mode=eval does.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion_jax import analysis, errors, experiment, inference, losses, modes, utils
from diffusion_jax.models.model_fn import make_model_fn

KINDS = ("progressive", "shared_latent", "interpolation", "rate_distortion")


def resolve(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Validates config.analysis and fills its defaults (which depend on T); every error names
  the field and the fix."""
  if "analysis" not in config:
    raise errors.ConfigError("config.analysis: section missing; build configs on "
                             "configs/default.py's get_config().")
  a, num_t = config.analysis, config.diffusion.num_timesteps
  if a.kind not in KINDS + ("all",):
    raise errors.ConfigError(f"config.analysis.kind={a.kind!r}: choose one of "
                             f"{', '.join(map(repr, KINDS + ('all',)))}.")
  timesteps = tuple(a.timesteps) or tuple(int(round(t)) for t in np.linspace(num_t - 1, 0, 8))
  if any(not isinstance(t, int) or not 0 <= t < num_t for t in timesteps):
    raise errors.ConfigError(
        f"config.analysis.timesteps={tuple(a.timesteps)!r}: steps must be integers in "
        f"[0, {num_t - 1}] (T = diffusion.num_timesteps), e.g. '({num_t - 1}, {num_t // 2}, 0)'; "
        "() picks 8 evenly spaced.")
  interp_t = num_t // 2 if a.interpolation_t is None else a.interpolation_t
  if not isinstance(interp_t, int) or not 0 <= interp_t < num_t:
    raise errors.ConfigError(f"config.analysis.interpolation_t={a.interpolation_t!r}: must be "
                             f"a step in [0, {num_t - 1}], or unset for T // 2.")
  ddim_steps = min(50, num_t) if a.ddim_steps is None else a.ddim_steps
  for field, value, minimum in (("num_images", a.num_images, 1), ("num_samples", a.num_samples, 1),
                                ("num_lambdas", a.num_lambdas, 2), ("ddim_steps", ddim_steps, 1)):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
      raise errors.ConfigError(f"config.analysis.{field}={value!r}: must be an integer >= "
                               f"{minimum}.")
  if ddim_steps > num_t:
    raise errors.ConfigError(f"config.analysis.ddim_steps={ddim_steps}: at most T = {num_t} "
                             "(diffusion.num_timesteps), or unset for min(50, T).")
  return dict(kinds=KINDS if a.kind == "all" else (a.kind,), timesteps=timesteps,
              interpolation_t=interp_t, num_images=a.num_images, num_samples=a.num_samples,
              lambdas=tuple(float(x) for x in np.linspace(0.0, 1.0, a.num_lambdas)),
              ddim_steps=ddim_steps)


def _rmse(a: np.ndarray, b: np.ndarray, axis=None) -> np.ndarray:
  """RMSE on the [0, 255] scale of images in [-1, 1]."""
  diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  return 127.5 * np.sqrt(np.mean(diff**2, axis=axis))


def _grid(images: np.ndarray, num_cols: int) -> np.ndarray:
  """[N, H, W, C] in [-1, 1] -> an upscaled uint8 grid, row-major with num_cols per row."""
  images = utils.to_uint8(np.clip(np.asarray(images), -1.0, 1.0))
  return utils.make_grid(images, num_cols=num_cols, scale=utils.grid_scale(images.shape[1]))


def _test_images(config: ml_collections.ConfigDict, n: int) -> np.ndarray:
  from diffusion_jax import input_pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)
  images, _ = input_pipeline.load_split(config.data, config.data.eval_split,
                                        field="data.eval_split", limit=n)
  if len(images) < n:
    raise errors.DataError(f"config.data.eval_split={config.data.eval_split!r} has {len(images)} "
                           f"images; config.analysis.num_images asks for {n}.")
  return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def progressive(model, params, diffusion_, key, opts, common) -> tuple[np.ndarray, dict]:
  """Rows: chains; columns: x0_hat at each t, then the sample."""
  shape = (opts["num_images"],) + opts["image_shape"]
  x_0, x0_hat = jax.jit(lambda p, k: analysis.progressive_generation(
      make_model_fn(model, p), diffusion_.schedule, shape, k, timesteps=opts["timesteps"],
      **common))(params, key)
  x_0, x0_hat = np.asarray(x_0), np.asarray(x0_hat)
  tiles = np.concatenate([x0_hat.transpose(1, 0, 2, 3, 4), x_0[:, None]], 1)
  numbers = {"timesteps": list(opts["timesteps"]),
             "rmse_to_sample": _rmse(x0_hat, x_0[None], axis=(1, 2, 3, 4)).tolist(),
             "columns": [f"x0_hat(t={t})" for t in opts["timesteps"]] + ["sample x_0"]}
  return _grid(tiles.reshape((-1,) + x_0.shape[1:]), tiles.shape[1]), numbers


def shared_latent(model, params, diffusion_, key, opts, common) -> tuple[np.ndarray, dict]:
  """Rows: (image, t); columns: the image, its x_t, then the samples from that x_t."""
  x = jnp.asarray(opts["test_images"])
  latents, samples = jax.jit(lambda p, k: analysis.shared_latent_samples(
      make_model_fn(model, p), diffusion_.schedule, x, k, timesteps=opts["timesteps"],
      num_samples=opts["num_samples"], **common))(params, key)
  latents, samples, x = np.asarray(latents), np.asarray(samples), np.asarray(x)
  rows = []
  for i in range(x.shape[0]):
    for k in range(len(opts["timesteps"])):
      rows.append(np.concatenate([x[i][None], np.clip(latents[k, i], -1, 1)[None],
                                  samples[k, :, i]]))
  rows = np.stack(rows)
  m = samples.shape[1]
  pairwise = [float(np.mean([_rmse(s[a], s[b]) for a in range(m) for b in range(a + 1, m)]))
              if m > 1 else 0.0 for s in samples]
  numbers = {"timesteps": list(opts["timesteps"]), "num_samples": m,
             "rmse_to_image": _rmse(samples, x[None, None], axis=(1, 2, 3, 4, 5)).tolist(),
             "rmse_between_samples": pairwise,
             "columns": ["test image", "x_t (clipped)"] + [f"sample {j}" for j in range(m)]}
  return _grid(rows.reshape((-1,) + x.shape[1:]), rows.shape[1]), numbers


def interpolation(model, params, diffusion_, key, opts, common) -> tuple[np.ndarray, dict]:
  """Per pair two rows: the reverse-chain interpolation at t, then DDIM's, framed by the pair."""
  x = np.asarray(opts["test_images"])
  half = x.shape[0] // 2
  if half < 1:
    raise errors.ConfigError("config.analysis.num_images: interpolation needs at least 2 images.")
  x_a, x_b = jnp.asarray(x[:half]), jnp.asarray(x[half:2 * half])
  t, lambdas = opts["interpolation_t"], opts["lambdas"]
  decoded, _ = jax.jit(lambda p, k: analysis.interpolate(
      make_model_fn(model, p), diffusion_.schedule, x_a, x_b, k, t=t, lambdas=lambdas,
      **common))(params, key)
  ddim_decoded, _ = jax.jit(lambda p: analysis.ddim_interpolate(
      make_model_fn(model, p), diffusion_.schedule, x_a, x_b, lambdas=lambdas,
      num_steps=opts["ddim_steps"], **common))(params)
  decoded, ddim_decoded = np.asarray(decoded), np.asarray(ddim_decoded)
  x_a, x_b = np.asarray(x_a), np.asarray(x_b)
  rows = []
  for i in range(half):
    for d in (decoded, ddim_decoded):
      rows.append(np.concatenate([x_a[i][None], d[:, i], x_b[i][None]]))
  rows = np.stack(rows)
  numbers = {"t": t, "lambdas": list(lambdas), "ddim_steps": opts["ddim_steps"]}
  for name, d in (("reverse_chain", decoded), ("ddim", ddim_decoded)):
    numbers[name] = {"rmse_to_a": _rmse(d, x_a[None], axis=(1, 2, 3, 4)).tolist(),
                     "rmse_to_b": _rmse(d, x_b[None], axis=(1, 2, 3, 4)).tolist()}
  return _grid(rows.reshape((-1,) + x.shape[1:]), rows.shape[1]), numbers


def rate_distortion(config, params, model, diffusion_) -> tuple[np.ndarray, dict]:
  """The rate-distortion curve over the eval loop's images, and its figure."""
  parts, masks = [], []
  for out in inference.bpd_batches(config, params, model, diffusion_, all_terms=True):
    masks.append(np.asarray(out.pop("mask"), bool))
    parts.append(out)
  mask = np.concatenate(masks)
  cat = {k: np.concatenate([p[k] for p in parts])[mask] for k in parts[0]}
  terms = losses.BpdTerms(total_bpd=cat["total_bpd"], prior_bpd=cat["prior_bpd"],
                          terms_bpd=cat["terms_bpd"], xstart_mse=cat["xstart_mse"],
                          eps_mse=cat["eps_mse"])
  rd = analysis.rate_distortion(terms)
  numbers = {"t": list(range(len(rd.rate_bpd))), "rate_bpd": rd.rate_bpd.tolist(),
             "distortion_rmse": rd.distortion_rmse.tolist(), "total_bpd": rd.total_bpd,
             "distortion_floor": 127.5 * float(
                 diffusion_.schedule.sqrt_one_minus_alphas_cumprod[0]),
             "num_examples": int(mask.sum()), "split": config.data.eval_split,
             "clip_denoised": config.eval.clip_denoised,
             "note": "rate[t]: bits/dim held with x_t (prior + KL terms above t); "
                     "distortion[t]: RMSE of x0_hat(x_t) on [0, 255]; total_bpd: after the "
                     "decoder term, lossless; distortion_floor: the noise left in x_0 at t = 0 "
                     "on [0, 255]"}
  return _plot_rate_distortion(rd), numbers


def _plot_rate_distortion(rd: analysis.RateDistortion) -> np.ndarray:
  """DDPM Fig. 5's three panels as a uint8 image (matplotlib, without touching pyplot state)."""
  try:
    # pylint: disable=g-import-not-at-top
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
  except ImportError:
    raise errors.ConfigError("config.analysis.kind='rate_distortion' plots with matplotlib: "
                             "pip install matplotlib (or the package's [plots] extra).") from None
  t = np.arange(len(rd.rate_bpd))
  fig = Figure(figsize=(13, 3.6), dpi=100)
  canvas = FigureCanvasAgg(fig)
  axes = fig.subplots(1, 3)
  axes[0].plot(t, rd.rate_bpd)
  axes[0].set(xlabel="reverse process step t", ylabel="rate (bits/dim)", title="rate")
  axes[1].plot(t, rd.distortion_rmse)
  axes[1].set(xlabel="reverse process step t", ylabel="distortion (RMSE, [0, 255])",
              title="distortion of x0_hat")
  # In the receiver's order, t = T-1 .. 0, then the lossless end point after the decoder.
  axes[2].plot(np.append(rd.rate_bpd[::-1], rd.total_bpd),
               np.append(rd.distortion_rmse[::-1], 0.0))
  axes[2].set(xlabel="rate (bits/dim)", ylabel="distortion (RMSE, [0, 255])",
              title=f"rate-distortion (lossless at {rd.total_bpd:.3f} bits/dim)")
  for ax in axes[:2]:
    ax.invert_xaxis()  # the receiver goes from t = T-1 to 0
  fig.tight_layout()
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


@modes.register("analyze", "the DDPM paper's analyses of a checkpoint (config.analysis.kind)")
def analyze(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Writes workdir/analysis/<kind>_<step>.png and .json for each requested kind; returns
  {kind: the numbers written}."""
  opts = resolve(config)
  model, diffusion_, params, step = inference.restore(config, workdir,
                                                      config.analysis.checkpoint_step)
  common = dict(clip_denoised=config.sampling.clip_denoised, **diffusion_.parameterization)
  opts["image_shape"] = (config.data.image_size, config.data.image_size, config.data.num_channels)
  if {"shared_latent", "interpolation"} & set(opts["kinds"]):
    opts["test_images"] = _test_images(config, opts["num_images"])
  root = jax.random.fold_in(experiment.base_keys(config)["sample"], 2)
  directory = os.path.join(workdir, "analysis")
  results = {}
  for i, kind in enumerate(KINDS):
    if kind not in opts["kinds"]:
      continue
    start = time.time()
    if kind == "rate_distortion":
      image, numbers = rate_distortion(config, params, model, diffusion_)
    else:
      fn = {"progressive": progressive, "shared_latent": shared_latent,
            "interpolation": interpolation}[kind]
      image, numbers = fn(model, params, diffusion_, jax.random.fold_in(root, i), opts, common)
    numbers.update(kind=kind, step=step, params="ema", seconds=round(time.time() - start, 1),
                   **diffusion_.parameterization)
    if jax.process_index() == 0:
      utils.save_png(os.path.join(directory, f"{kind}_{step}.png"), image)
      with open(os.path.join(directory, f"{kind}_{step}.json"), "w") as f:
        json.dump(numbers, f, indent=2)
    logging.info("Wrote %s_%d.png/.json to %s in %.1fs.", kind, step, directory,
                 numbers["seconds"])
    print(f"analysis {kind} (step {step}): {os.path.join(directory, f'{kind}_{step}.png')}",
          flush=True)
    results[kind] = numbers
  return results
