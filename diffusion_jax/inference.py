"""Inference on a trained model: read-only restores, sampling, sample files, the sample/eval modes.

Everything here reads a workdir's checkpoints without writing to `checkpoints/`
(`checkpointing.restore_ema_params`): a sampling or evaluation job may run beside a live
training run. Samplers come from the registry (`config.sampling.sampler` and its section
`config.sampling.<section>`, passed through unchanged); a sampler's prepare step (Analytic-DPM's
Gamma) runs once per restored model. Outputs:

  samples/<step>/samples.npz, samples.png   --mode=sample (uint8 images [N, H, W, C], labels)
  samples/<step>/guidance_grid.{png,npz}    --mode=sample with sampling.guidance.grid_scales
  eval/bpd_<step>.json                      test-set bits/dim: DDPM's bound (Table 2) and, with
                                            eval.ode_bpd, along the probability-flow ODE
  eval/<score>_<step>.json (+ chunks)       sample quality (`evaluation.scorers`)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Callable, Iterator, Optional

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion_jax import checkpointing, config_validation, diffusion, experiment, guidance, losses
from diffusion_jax import modes, parallel, samplers, utils
from diffusion_jax.models import classifier
from diffusion_jax.models.model_fn import make_model_fn
from diffusion_jax.samplers import ancestral, registry

PyTree = Any
# (replicated params, key) -> (images float32 [batch, H, W, C] in [-1, 1], labels int32 [batch])
SamplerFn = Callable[[PyTree, jax.Array], tuple[np.ndarray, np.ndarray]]


def _load_train_images(config: ml_collections.ConfigDict) -> Callable[[int], np.ndarray]:
  """n -> the first n images [n, H, W, C] of data.train_split, the same on every process."""

  def load(n: int) -> np.ndarray:
    from diffusion_jax import input_pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)
    images, _ = input_pipeline.load_split(config.data, config.data.train_split, limit=n)
    return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)

  return load


def prepare_sampler(config: ml_collections.ConfigDict, model: nn.Module,
                    diffusion_: diffusion.GaussianDiffusion, params: PyTree) -> dict:
  """The configured sampler's once-per-model inputs (e.g. Analytic-DPM's ms_eps), or {}."""
  spec = registry.get(config.sampling.sampler)
  if spec.prepare is None:
    return {}
  if config.model.num_classes:
    raise config_validation.ConfigError(
        f"config.sampling.sampler={spec.name!r}: its prepare step supports unconditional models "
        "only; set model.num_classes to None or choose another sampler.")
  start = time.time()
  prepared = samplers.prepare(make_model_fn(model, params), diffusion_.process,
                              experiment.base_keys(config)["sample"],
                              _load_train_images(config), sampler=spec.name,
                              **diffusion_.parameterization,
                              **registry.options_from_config(config.sampling))
  logging.info("Prepared sampler %s (%s) in %.1fs.", spec.name, ", ".join(prepared),
               time.time() - start)
  return prepared


@dataclasses.dataclass(frozen=True)
class Guidance:
  """What guided sampling needs besides the diffusion model (`load_guidance`).

  Attributes:
    kind: "classifier" or "classifier_free" (config.sampling.guidance.kind).
    form: classifier guidance's "mean_shift" or "eps" (resolved from "auto").
    classes: int32 [K] classes to sample.
    classifier: the NoisyClassifier (kind "classifier"), else None.
    classifier_params: its parameters on host (kind "classifier"), else None.
    null_label: the model's null label (kind "classifier_free"), else None.
  """
  kind: str
  form: str
  classes: np.ndarray
  classifier: Optional[nn.Module] = None
  classifier_params: Optional[PyTree] = None
  null_label: Optional[int] = None


def load_guidance(config: ml_collections.ConfigDict, workdir: str) -> Optional[Guidance]:
  """The guidance of config.sampling.guidance (None for kind "none"); reads the classifier."""
  gcfg = config.sampling.guidance
  if gcfg.kind == "none":
    return None
  form = gcfg.form if gcfg.form != "auto" else (
      "mean_shift" if config.sampling.sampler == "ancestral" else "eps")
  classes = np.asarray(gcfg.classes or range(config.model.num_classes), np.int32)
  if gcfg.kind == "classifier_free":
    return Guidance("classifier_free", form, classes, null_label=experiment.null_label(config))
  from diffusion_jax import classifier_training  # pylint: disable=g-import-not-at-top
  params, step = checkpointing.restore_ema_params(classifier_training.classifier_dir(workdir),
                                                  gcfg.classifier_checkpoint_step)
  logging.info("Classifier guidance (%s form) with the classifier of step %d.", form, step)
  return Guidance("classifier", form, classes, experiment.create_classifier(config), params)


def guided_model_fn(config: ml_collections.ConfigDict, model: nn.Module,
                    diffusion_: diffusion.GaussianDiffusion, params: PyTree, labels: jnp.ndarray,
                    guidance_: Optional[Guidance], scale: Any,
                    classifier_params: Optional[PyTree] = None) -> Callable:
  """The model_fn a sampler gets: the model with its labels bound, guided by `guidance_`."""
  if guidance_ is None:
    return make_model_fn(model, params, labels=labels if config.model.num_classes else None)
  if guidance_.kind == "classifier_free":
    cond_model_fn = lambda x, t, y: make_model_fn(model, params, labels=y)(x, t)
    return guidance.classifier_free_guidance(cond_model_fn, labels, scale=scale,
                                             null_label=guidance_.null_label,
                                             var_type=diffusion_.var_type)
  schedule = diffusion_.schedule
  if guidance_.form == "mean_shift" and config.sampling.sampler == "ancestral":
    schedule = ancestral.walked_schedule(schedule, config.sampling.num_steps)
  return guidance.classifier_guidance(
      make_model_fn(model, params, labels=labels),
      classifier.classifier_fn(guidance_.classifier, classifier_params), schedule, labels,
      scale=scale, form=guidance_.form, **diffusion_.parameterization)


def sampler_params(params: PyTree, guidance_: Optional[Guidance], mesh: jax.sharding.Mesh) -> PyTree:
  """What a sampler of `make_sampler` takes as params: the replicated model parameters, with
  the classifier's beside them for classifier guidance."""
  params = parallel.replicate(params, mesh)
  if guidance_ is not None and guidance_.kind == "classifier":
    return params, parallel.replicate(guidance_.classifier_params, mesh)
  return params


def make_sampler(config: ml_collections.ConfigDict, model: nn.Module,
                 diffusion_: diffusion.GaussianDiffusion, mesh: jax.sharding.Mesh,
                 batch_size: int, prepared: Optional[dict] = None,
                 guidance_: Optional[Guidance] = None) -> SamplerFn:
  """The configured sampler over the mesh: (params, key) -> a global batch on host.

  Device d draws from fold_in(key, d); class-conditional models get uniformly drawn labels (of
  guidance_.classes when guided, at scale config.sampling.guidance.scale).

  Args:
    config: the run config (sampling and model sections).
    model: the U-Net.
    diffusion_: the model's diffusion (`experiment.create_diffusion`).
    mesh: from `parallel.make_mesh`.
    batch_size: GLOBAL images per call (divisible by the mesh size).
    prepared: the sampler's prepared inputs (`prepare_sampler`).
    guidance_: `load_guidance(config, workdir)`; params are then `sampler_params(...)`.
  """
  per_device = parallel.per_device(batch_size, mesh)
  shape = (per_device, config.data.image_size, config.data.image_size, config.data.num_channels)
  num_classes = config.model.num_classes
  options = _sampler_options(config, diffusion_, prepared)

  def sample_on_device(params, key):
    key = jax.random.fold_in(key, jax.lax.axis_index(parallel.AXIS))
    label_key, key = jax.random.split(key)
    if guidance_ is not None:
      labels = jnp.asarray(guidance_.classes)[
          jax.random.randint(label_key, (per_device,), 0, len(guidance_.classes))]
    elif num_classes:
      labels = jax.random.randint(label_key, (per_device,), 0, num_classes)
    else:
      labels = jnp.zeros((per_device,), jnp.int32)
    params, classifier_params = params if isinstance(params, tuple) else (params, None)
    model_fn = guided_model_fn(config, model, diffusion_, params, labels, guidance_,
                               config.sampling.guidance.scale, classifier_params)
    return samplers.sample(model_fn, diffusion_.process, shape, key, **options), labels

  p_sample = parallel.pmap(sample_on_device, mesh, in_axes=(0, None))

  def run(params, key):
    images, labels = parallel.gather(p_sample(params, key))
    return images.reshape((-1,) + images.shape[2:]), labels.reshape(-1)

  return run


def _sampler_options(config: ml_collections.ConfigDict, diffusion_: diffusion.GaussianDiffusion,
                     prepared: Optional[dict] = None) -> dict:
  return dict(sampler=config.sampling.sampler, num_steps=config.sampling.num_steps,
              clip_denoised=config.sampling.clip_denoised, **diffusion_.parameterization,
              **registry.options_from_config(config.sampling), **(prepared or {}))


def guidance_grid(config: ml_collections.ConfigDict, model: nn.Module,
                  diffusion_: diffusion.GaussianDiffusion, mesh: jax.sharding.Mesh, params: PyTree,
                  guidance_: Guidance, key: jax.Array) -> np.ndarray:
  """Guided samples, one row per class of guidance_.classes, one column per scale of
  config.sampling.guidance.grid_scales; every column of a row starts from the same x_T.

  Args:
    params: `sampler_params(...)` (replicated).

  Returns:
    uint8 [rows, columns, H, W, C].
  """
  scales = np.asarray(config.sampling.guidance.grid_scales, np.float32)
  rows, cols = len(guidance_.classes), len(scales)
  image = (config.data.image_size, config.data.image_size, config.data.num_channels)
  devices = mesh.devices.size
  total = -(-rows * cols // devices) * devices                    # padded to the devices
  x_T = np.repeat(np.asarray(jax.random.normal(key, (rows,) + image)), cols, axis=0)
  batch = {"x_T": x_T, "label": np.repeat(guidance_.classes, cols), "scale": np.tile(scales, rows)}
  batch = {k: np.concatenate([v, np.repeat(v[-1:], total - len(v), axis=0)]) for k, v in batch.items()}
  layout = parallel.batch_layout(total, mesh)
  local = {k: v[layout.offset:layout.offset + layout.local_size].reshape(
      (layout.local_devices, layout.per_device) + v.shape[1:]) for k, v in batch.items()}
  options = _sampler_options(config, diffusion_)

  def on_device(params, batch, key):
    key = jax.random.fold_in(key, jax.lax.axis_index(parallel.AXIS))
    params, classifier_params = params if isinstance(params, tuple) else (params, None)
    model_fn = guided_model_fn(config, model, diffusion_, params, batch["label"], guidance_,
                               batch["scale"], classifier_params)
    return samplers.sample(model_fn, diffusion_.schedule, batch["x_T"].shape, key,
                           x_T=batch["x_T"], **options)

  images = parallel.gather(parallel.pmap(on_device, mesh, in_axes=(0, 0, None))(
      params, parallel.shard(local, mesh), jax.random.fold_in(key, 1)))
  images = utils.to_uint8(images.reshape((-1,) + image)[:rows * cols])
  return images.reshape((rows, cols) + image)


def generate(sampler: SamplerFn, params: PyTree, key: jax.Array,
             num_samples: int) -> tuple[np.ndarray, np.ndarray]:
  """Calls `sampler` with fold_in(key, i), i = 0, 1, ..., until `num_samples` images exist.

  Returns:
    (images uint8 [num_samples, H, W, C], labels int32 [num_samples]).
  """
  images, labels, count, i = [], [], 0, 0
  while count < num_samples:
    x, y = sampler(params, jax.random.fold_in(key, i))
    images.append(utils.to_uint8(x))
    labels.append(y)
    count, i = count + len(x), i + 1
  return np.concatenate(images)[:num_samples], np.concatenate(labels)[:num_samples]


def write_samples(directory: str, images: np.ndarray, labels: np.ndarray, name: str = "samples",
                  num_in_grid: int = 100) -> str:
  """Writes <name>.npz (uint8 images [N, H, W, C], labels [N]) and <name>.png (a grid of the
  first `num_in_grid`) in `directory`; returns the PNG's path."""
  os.makedirs(directory, exist_ok=True)
  np.savez(os.path.join(directory, f"{name}.npz"), images=images, labels=labels)
  grid_path = os.path.join(directory, f"{name}.png")
  utils.save_png(grid_path, utils.make_grid(images[:num_in_grid],
                                            scale=utils.grid_scale(images.shape[1])))
  return grid_path


def restore(config: ml_collections.ConfigDict, workdir: str, step: Optional[int]
            ) -> tuple[nn.Module, diffusion.GaussianDiffusion, PyTree, int]:
  """Validates the config and reads a checkpoint's EMA parameters (read-only).

  Returns:
    (model, diffusion, EMA params on host, the checkpoint's step).
  """
  config_validation.validate_config(config, num_devices=jax.device_count())
  params, step = checkpointing.restore_ema_params(workdir, step)
  return experiment.create_model(config), experiment.create_diffusion(config), params, step


@modes.register("sample", "write config.sampling.num_samples samples of a checkpoint")
def sample(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes config.sampling.num_samples samples of a checkpoint's EMA model.

  Output: workdir/samples/<step>/samples.npz (uint8 images [N, H, W, C], labels [N]) and
  samples.png (a grid of the first 100). Returns that directory.
  """
  model, diffusion_, params, step = restore(config, workdir, config.sampling.checkpoint_step)
  mesh = parallel.make_mesh()
  guidance_ = load_guidance(config, workdir)
  sampler = make_sampler(config, model, diffusion_, mesh, config.sampling.batch_size,
                         prepare_sampler(config, model, diffusion_, params), guidance_)
  start = time.time()
  params = sampler_params(params, guidance_, mesh)
  key = experiment.base_keys(config)["sample"]
  images, labels = generate(sampler, params, jax.random.fold_in(key, 1), config.sampling.num_samples)
  directory = os.path.join(workdir, "samples", str(step))
  if jax.process_index() == 0:
    write_samples(directory, images, labels)
  if guidance_ is not None and config.sampling.guidance.grid_scales:
    grid = guidance_grid(config, model, diffusion_, mesh, params, guidance_, jax.random.fold_in(key, 2))
    if jax.process_index() == 0:
      np.savez(os.path.join(directory, "guidance_grid.npz"), images=grid, classes=guidance_.classes,
               scales=np.asarray(config.sampling.guidance.grid_scales), kind=guidance_.kind)
      utils.save_png(os.path.join(directory, "guidance_grid.png"), utils.make_grid(
          grid.reshape((-1,) + grid.shape[2:]), num_cols=grid.shape[1],
          scale=utils.grid_scale(grid.shape[2])))
  logging.info("Wrote %d samples of step %d to %s in %.1fs.", len(images), step, directory,
               time.time() - start)
  return directory


def sampling_tag(protocol: dict) -> str:
  """"<sampler>-<8 hex digits of the protocol's SHA-256>", e.g. "ddim-3fa2c1d0"."""
  blob = json.dumps(protocol, sort_keys=True, default=str).encode()
  return f"{protocol['sampler']}-{hashlib.sha256(blob).hexdigest()[:8]}"


def evaluate_sample_quality(config: ml_collections.ConfigDict, workdir: str, ema_params: PyTree,
                            step: int, writer: Any = None) -> dict:
  """Samples with config.sampling's sampler and scores every score the config asks for.

  Each score of `evaluation.scorers.requested(config)` runs the one resumable scorer over
  config.eval.num_quality_samples samples and writes workdir/eval/<score>_<step>_<tag>.json
  with its protocol; the tag (`sampling_tag`) names the sampler and digests the sampling
  protocol, so evaluating one checkpoint with several samplers or options keeps each result.

  Returns:
    {score name: its results}, e.g. {"digits": {"digits_fd": ..., "protocol": ...}}, on
    process 0; {} on the other processes.
  """
  from diffusion_jax.evaluation import sample_quality, scorers  # pylint: disable=g-import-not-at-top
  names = scorers.requested(config)
  if not names:
    return {}
  model, diffusion_ = experiment.create_model(config), experiment.create_diffusion(config)
  mesh = parallel.make_mesh()
  num = config.eval.num_quality_samples
  batch = min(config.eval.quality_batch_size, -(-num // mesh.devices.size) * mesh.devices.size)
  guidance_ = load_guidance(config, workdir)
  sampler = make_sampler(config, model, diffusion_, mesh, batch,
                         prepare_sampler(config, model, diffusion_, ema_params), guidance_)
  params = sampler_params(ema_params, guidance_, mesh)
  protocol = {"step": step, "params": "ema", "sampler": config.sampling.sampler,
              "num_steps": config.sampling.num_steps,
              "clip_denoised": config.sampling.clip_denoised, **diffusion_.parameterization,
              **registry.options_from_config(config.sampling)}
  suffix = ""
  if guidance_ is not None:
    protocol["guidance"] = {"kind": guidance_.kind, "scale": config.sampling.guidance.scale,
                            "form": guidance_.form, "classes": guidance_.classes.tolist()}
    suffix = f"_{guidance_.kind}_{config.sampling.guidance.scale:g}"
  suffix = f"_{sampling_tag(protocol)}{suffix}"
  result = {}
  shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
  for name in names:
    scorer = scorers.build(name, config)
    scorer.check_shape(shape)  # on every process, before any of them starts sampling
    scores = sample_quality.evaluate_sample_quality(
        lambda key, n: sampler(params, key)[0][:n], num_samples=num, batch_size=batch,
        eval_config=config.eval, workdir=workdir, protocol=protocol, name=f"{name}_{step}{suffix}",
        seed=config.seed, step=step, scorer=scorer,
        writer=writer if jax.process_index() == 0 else None)
    if jax.process_index() == 0:  # the others sampled but did not score
      result[name] = scores
      print(f"{scorer.label} (step {step}, {num} samples): {scores[scorer.fd_key]:.3f}",
            flush=True)
  return result


def bpd_batches(config: ml_collections.ConfigDict, params: PyTree, model: nn.Module,
                diffusion_: diffusion.GaussianDiffusion, *, all_terms: bool = False,
                ddpm_bound: bool = True, ode_bpd_fn: Optional[Callable] = None
                ) -> Iterator[dict[str, np.ndarray]]:
  """The bits/dim loop of --mode=eval, one gathered batch of config.data.eval_split at a time.

  Runs `losses.calc_bpd_loop` (all T terms + prior) on every batch (or the first
  config.eval.num_batches); batch i draws its noise from fold_in(eval key, i) and then
  fold_in(., device). Every consumer of this loop sees the same numbers for the same config.

  Args:
    ddpm_bound: run the bound (False for score models, which have no DDPM chain).
    ode_bpd_fn: the pmapped probability-flow ODE likelihood of `_ode_bpd_fn`, also run on each
      batch (its noise from fold_in(fold_in(eval key, i), 1)).

  Yields:
    {"total_bpd", "prior_bpd", "decoder_bpd" (with ddpm_bound): [n], "mask": [n] (False on
    padding)}, n the global batch, plus with all_terms "terms_bpd", "xstart_mse" and "eps_mse" [n, T], and with
    ode_bpd_fn "ode_bpd" and "ode_nfe" [n].
  """
  from diffusion_jax import input_pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)
  mesh = parallel.make_mesh()

  def bpd_on_device(params, batch, key):
    if not ddpm_bound:
      return {"mask": batch["mask"]}
    key = jax.random.fold_in(key, jax.lax.axis_index(parallel.AXIS))
    labels = batch["label"] if config.model.num_classes else None
    terms = losses.calc_bpd_loop(make_model_fn(model, params, labels=labels), diffusion_.schedule,
                                 batch["image"], key, clip_denoised=config.eval.clip_denoised,
                                 **diffusion_.parameterization)
    out = {"total_bpd": terms.total_bpd, "prior_bpd": terms.prior_bpd,
           "decoder_bpd": terms.terms_bpd[:, 0], "mask": batch["mask"]}
    if all_terms:
      out.update(terms_bpd=terms.terms_bpd, xstart_mse=terms.xstart_mse, eps_mse=terms.eps_mse)
    return out

  p_bpd = parallel.pmap(bpd_on_device, mesh, in_axes=(0, 0, None))
  params = parallel.replicate(params, mesh)
  eval_key = experiment.base_keys(config)["eval"]
  layout = parallel.batch_layout(config.eval.batch_size, mesh)
  eval_iter = input_pipeline.create_eval_iterator(
      config.data, local_batch_shape=(layout.local_devices, layout.per_device))
  for i, batch in enumerate(eval_iter):
    if config.eval.num_batches is not None and i >= config.eval.num_batches:
      break
    sharded = parallel.shard(batch, mesh)
    out = parallel.gather(p_bpd(params, sharded, jax.random.fold_in(eval_key, i)))
    if ode_bpd_fn is not None:  # the same batch along the probability-flow ODE
      out.update(parallel.gather(ode_bpd_fn(params, sharded,
                                            jax.random.fold_in(jax.random.fold_in(eval_key, i), 1))))
    # [devices, per_device, ...] -> [global batch, ...]
    yield {k: np.asarray(v).reshape((-1,) + np.shape(v)[2:]) for k, v in out.items()}


def evaluate_bpd(config: ml_collections.ConfigDict, workdir: str, params: PyTree, step: int,
                 model: nn.Module, diffusion_: diffusion.GaussianDiffusion) -> dict:
  """Test-set negative log-likelihood in bits/dim (DDPM Table 2) of `params`.

  Averages `bpd_batches` over config.data.eval_split (or its first config.eval.num_batches
  batches) and, with config.eval.ode_bpd, the bits/dim along the probability-flow ODE of the
  same batches (`likelihood.bits_per_dim`, options config.eval.ode; under "ode" in the JSON with
  its protocol); writes workdir/eval/bpd_<step>.json.
  """
  p_ode_bpd, ode_protocol = (_ode_bpd_fn(config, model, diffusion_, parallel.make_mesh())
                             if config.eval.ode_bpd else (None, None))
  ddpm_bound = bool(config.eval.compute_bpd)
  headline = "total_bpd" if ddpm_bound else "ode_bpd"
  sums, count, start = {}, 0.0, time.time()
  for i, out in enumerate(bpd_batches(config, params, model, diffusion_, ddpm_bound=ddpm_bound,
                                      ode_bpd_fn=p_ode_bpd)):
    mask = np.asarray(out.pop("mask"), np.float64)
    for k, v in out.items():
      sums[k] = sums.get(k, 0.0) + float(np.sum(np.asarray(v, np.float64) * mask))
    count += float(mask.sum())
    logging.info("bits/dim batch %d: running mean %.4f over %d images", i,
                 sums[headline] / max(count, 1), count)
  if not count:
    raise config_validation.ConfigError(
        f"config.data.eval_split={config.data.eval_split!r} gave no examples; choose a split "
        "with test images.")
  result = {k: v / count for k, v in sums.items()}
  if ode_protocol is not None:
    # {"ode_bpd": mean bits/dim, "ode_nfe": mean solver evaluations per batch, "protocol": ...}
    result["ode"] = {"bpd": result.pop("ode_bpd"), "mean_nfe": result.pop("ode_nfe"),
                     "protocol": ode_protocol.as_dict()}
  result.update(step=step, num_examples=int(count), split=config.data.eval_split,
                dataset=config.data.dataset, params="ema",
                num_timesteps=config.diffusion.num_timesteps,
                clip_denoised=config.eval.clip_denoised, seconds=round(time.time() - start, 1))
  if jax.process_index() == 0:
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    with open(os.path.join(workdir, "eval", f"bpd_{step}.json"), "w") as f:
      json.dump(result, f, indent=2)
  if ddpm_bound:
    logging.info("Test bits/dim at step %d: %.4f (%d examples)", step, result["total_bpd"], count)
    print(f"bits/dim (step {step}, {int(count)} {config.data.eval_split} images): "
          f"{result['total_bpd']:.4f}", flush=True)
  if ode_protocol is not None:
    logging.info("ODE bits/dim at step %d: %.4f (protocol %s)", step, result["ode"]["bpd"],
                 result["ode"]["protocol"])
    print(f"ODE bits/dim (step {step}, {int(count)} {config.data.eval_split} images, "
          f"{ode_protocol.dequantization} dequantization): {result['ode']['bpd']:.4f}", flush=True)
  return result


def _ode_bpd_fn(config: ml_collections.ConfigDict, model: nn.Module,
                diffusion_: diffusion.GaussianDiffusion, mesh: jax.sharding.Mesh):
  """The pmapped bits/dim along the probability-flow ODE (`likelihood.bits_per_dim`, config.eval.ode)
  of a batch, and its `likelihood.Protocol`. DDPM models go through their VP SDE."""
  from diffusion_jax import likelihood  # pylint: disable=g-import-not-at-top  (diffrax)
  from diffusion_jax.samplers import ode  # pylint: disable=g-import-not-at-top
  options = dict(config.eval.ode)

  def ode_bpd_on_device(params, batch, key):
    key = jax.random.fold_in(key, jax.lax.axis_index(parallel.AXIS))
    labels = batch["label"] if config.model.num_classes else None
    result = likelihood.bits_per_dim(make_model_fn(model, params, labels=labels),
                                     diffusion_.process, batch["image"], key,
                                     **diffusion_.parameterization, **options)
    nfe = jnp.broadcast_to(result.stats.nfe.astype(jnp.float32), result.bpd.shape)
    return {"ode_bpd": result.bpd, "ode_nfe": nfe}

  protocol = likelihood.make_protocol(ode.as_sde(diffusion_.process), **options)
  return parallel.pmap(ode_bpd_on_device, mesh, in_axes=(0, 0, None)), protocol


@modes.register("eval", "test-set bits/dim and sample quality of a checkpoint")
def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """--mode=eval: bits/dim (eval.compute_bpd: DDPM's bound; eval.ode_bpd: the probability-flow
  ODE's) and every requested sample-quality score."""
  model, diffusion_, params, step = restore(config, workdir, config.eval.checkpoint_step)
  result = {}
  if config.eval.compute_bpd or config.eval.ode_bpd:
    result.update(evaluate_bpd(config, workdir, params, step, model, diffusion_))
  quality = evaluate_sample_quality(config, workdir, params, step)
  if quality:
    result["sample_quality"] = quality
  return result
