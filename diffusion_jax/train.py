"""The training loop, sampling and bits/dim evaluation of a diffusion model (one function per mode).

Parallelism (design.md section 5): the per-device step is `pmap`ped over the local devices with
axis name "batch"; gradients and metrics are averaged with `lax.pmean`. The replicated state is
placed with a NamedSharding over Mesh(local_devices, ("batch",)) and donated to the step, which
is compiled exactly once. Batch sizes in the config are GLOBAL.

Randomness is stateless: step s uses key fold_in(train_key, s). Each example draws its timestep
and noise from fold_in(that key, global example index), so the same global batch gives the same
loss and gradients on 1 or 8 devices; dropout uses fold_in(that key, device index).

A run's files live in its workdir: config.json, checkpoints/<step>/, TensorBoard events,
samples/<step>/ (PNG grids, .npz of uint8), eval/ (metric JSON). Rerunning the same command on
the same workdir resumes from the latest checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from typing import Any, Callable, Optional, Sequence

from absl import logging
import flax.linen as nn
import flax.serialization
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from diffusion_jax import checkpointing, config_validation, diffusion, losses, samplers, schedules
from diffusion_jax import timestep_sampling, train_state, utils
from diffusion_jax.models import UNet

AXIS = "batch"
PyTree = Any


# ----------------------------------------------------------------------------- building blocks


def create_model(config: ml_collections.ConfigDict) -> UNet:
  """The U-Net of `config.model`; out_ch follows from num_channels and var_type (C or 2C)."""
  kwargs = dict(config.model)
  kwargs.setdefault("out_ch", diffusion.model_output_channels(config.data.num_channels,
                                                              config.diffusion.var_type))
  return UNet(**kwargs)


def create_schedule(config: ml_collections.ConfigDict) -> schedules.DiffusionSchedule:
  """The diffusion schedule of `config.diffusion`."""
  betas = schedules.get_beta_schedule(config.diffusion.beta_schedule,
                                      config.diffusion.num_timesteps)
  return schedules.DiffusionSchedule.from_betas(betas)


def base_keys(config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """Independent root keys of one run, all derived from config.seed."""
  root = jax.random.PRNGKey(config.seed)
  return {name: jax.random.fold_in(root, i)
          for i, name in enumerate(("init", "train", "sample", "eval"))}


def init_train_state(config: ml_collections.ConfigDict, model: nn.Module,
                     tx: optax.GradientTransformation) -> train_state.TrainState:
  """A fresh TrainState (on the default device) from config.seed."""
  size, channels = config.data.image_size, config.data.num_channels
  x = jnp.zeros((1, size, size, channels), jnp.float32)
  t = jnp.zeros((1,), jnp.int32)
  y = jnp.zeros((1,), jnp.int32) if config.model.num_classes else None
  params = jax.jit(lambda k: model.init(k, x, t, y, train=False)["params"])(
      base_keys(config)["init"])
  history = None
  if config.training.timestep_sampler != "uniform":
    history = timestep_sampling.init_loss_history(config.diffusion.num_timesteps)
  return train_state.create_train_state(params, tx, history)


def make_train_step(config: ml_collections.ConfigDict, model: nn.Module,
                    schedule: schedules.DiffusionSchedule, tx: optax.GradientTransformation
                    ) -> Callable[[train_state.TrainState, dict],
                                  tuple[train_state.TrainState, dict]]:
  """Builds the per-device train step; run it under pmap with axis name "batch".

  One step (DDPM Algorithm 1, with Improved DDPM's options): draw t and eps per example, take
  the loss of `losses.training_losses` (weighted for importance-sampled t), average gradients
  over devices, clip, Adam, then update the EMA and the timestep-loss history.

  Args:
    config: the run config (diffusion and training sections are read).
    model: the U-Net.
    schedule: the training diffusion.
    tx: the optimizer (`train_state.make_optimizer(config)`).

  Returns:
    step(state, batch) -> (state, metrics); batch holds this device's 'image' [n, H, W, C]
    (and 'label' [n]); metrics are scalars averaged over all devices.
  """
  train_key = base_keys(config)["train"]
  num_timesteps = schedule.num_timesteps
  dcfg, tcfg = config.diffusion, config.training
  lr_schedule = train_state.learning_rate_schedule(config)
  conditional = bool(config.model.num_classes)

  def step(state: train_state.TrainState, batch: dict) -> tuple[train_state.TrainState, dict]:
    images = batch["image"]
    n = images.shape[0]
    labels = batch["label"] if conditional else None
    step_key = jax.random.fold_in(train_key, state.step)
    examples_key, dropout_key = jax.random.split(step_key)
    device = jax.lax.axis_index(AXIS)
    dropout_key = jax.random.fold_in(dropout_key, device)
    # Per-example keys from the global example index: independent of the device count.
    keys = jax.vmap(lambda i: jax.random.fold_in(examples_key, i))(device * n + jnp.arange(n))
    keys = jax.vmap(lambda k: jax.random.split(k))(keys)

    def draw_t(key):
      t, w = timestep_sampling.sample_timesteps(key, 1, num_timesteps,
                                                sampler=tcfg.timestep_sampler,
                                                history=state.loss_history)
      return t[0], w[0]

    t, weights = jax.vmap(draw_t)(keys[:, 0])
    noise = jax.vmap(lambda k: jax.random.normal(k, images.shape[1:], images.dtype))(keys[:, 1])

    def loss_fn(params):
      def model_fn(x_t, t_model):
        return model.apply({"params": params}, x_t, t_model, labels, train=True,
                           rngs={"dropout": dropout_key})
      terms = losses.training_losses(model_fn, schedule, images, t, noise,
                                     mean_type=dcfg.mean_type, var_type=dcfg.var_type,
                                     loss_type=dcfg.loss_type)
      return jnp.mean(weights * terms.loss), terms

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.pmean(grads, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    history = state.loss_history
    if history is not None:
      history = timestep_sampling.gather_and_update(history, t, terms.loss, axis_name=AXIS)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, loss_history=history,
        ema_params=train_state.update_ema(state.ema_params, params, tcfg.ema_decay))
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads),
               "learning_rate": lr_schedule(state.step)}
    if terms.mse is not None:
      metrics["mse"] = jnp.mean(terms.mse)
    if terms.vb is not None:
      metrics["vb"] = jnp.mean(terms.vb)
    return new_state, jax.lax.pmean(metrics, AXIS)

  return step


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh with axis "batch" over `devices` (default: all local devices)."""
  return Mesh(np.asarray(devices if devices is not None else jax.local_devices()), (AXIS,))


def pmap_train_step(step: Callable, mesh: Mesh) -> Callable:
  """pmaps a per-device step over the mesh's devices, donating the state."""
  return jax.pmap(step, axis_name=AXIS, devices=list(mesh.devices.flat), donate_argnums=(0,))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """Copies a host pytree to every device of `mesh`, stacked on a leading device axis.

  Uses a NamedSharding over the mesh rather than flax.jax_utils.replicate, which here makes
  pmap compile the step twice (design.md section 5).
  """
  sharding = NamedSharding(mesh, PartitionSpec(AXIS))
  num = mesh.devices.size
  return jax.tree.map(
      lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (num,) + np.shape(x)), sharding),
      tree)


def shard(batch: PyTree, mesh: Mesh) -> PyTree:
  """Places a host batch [devices, per_device, ...] on the mesh, one slice per device."""
  return jax.device_put(batch, NamedSharding(mesh, PartitionSpec(AXIS)))


def unreplicate(tree: PyTree) -> PyTree:
  """The first device's copy of a replicated pytree, as numpy (no device computation)."""
  return jax.tree.map(lambda x: np.asarray(np.asarray(x.addressable_shards[0].data)[0]), tree)


def sampler_options(config: ml_collections.ConfigDict) -> dict:
  """The keyword options of `samplers.sample` that config.sampling / config.diffusion set."""
  scfg, dcfg = config.sampling, config.diffusion
  return dict(sampler=scfg.sampler, num_steps=scfg.num_steps, eta=scfg.eta,
              mean_type=dcfg.mean_type, var_type=dcfg.var_type, clip_denoised=scfg.clip_denoised,
              spacing=scfg.spacing, solver_order=scfg.solver_order,
              solver_method=scfg.solver_method, time_grid=scfg.time_grid,
              final_step=scfg.final_step, lower_order_final=scfg.lower_order_final,
              thresholding=scfg.thresholding, integer_timesteps=scfg.integer_timesteps,
              analytic_clip_last_steps=scfg.analytic_clip_last_steps)


def make_sample_fn(config: ml_collections.ConfigDict, model: nn.Module,
                   schedule: schedules.DiffusionSchedule, per_device: int,
                   ms_eps: Optional[np.ndarray] = None) -> Callable:
  """Builds the per-device sampler: (params, key) -> (images [per_device, H, W, C], labels).

  Every sampler option comes from the config, through the one dispatch `samplers.sample`
  (`sampler_options`). Device d draws from fold_in(key, d); class-conditional models get
  uniformly drawn labels. `ms_eps` is Analytic-DPM's Gamma (`analytic_ms_eps`).
  """
  shape = (per_device, config.data.image_size, config.data.image_size, config.data.num_channels)
  num_classes = config.model.num_classes
  options = sampler_options(config)

  def sample_fn(params, key):
    key = jax.random.fold_in(key, jax.lax.axis_index(AXIS))
    label_key, key = jax.random.split(key)
    labels = (jax.random.randint(label_key, (per_device,), 0, num_classes) if num_classes
              else jnp.zeros((per_device,), jnp.int32))

    def model_fn(x_t, t):
      return model.apply({"params": params}, x_t, t, labels if num_classes else None,
                         train=False)
    images = samplers.sample(model_fn, schedule, shape, key, ms_eps=ms_eps, **options)
    return images, labels

  return sample_fn


def analytic_ms_eps(config: ml_collections.ConfigDict, model: nn.Module,
                    schedule: schedules.DiffusionSchedule, params: PyTree) -> Optional[np.ndarray]:
  """Analytic-DPM's Gamma_t = E||eps_theta(x_t, t)||^2 / d on training images, for analytic_*.

  Estimated once per call from config.sampling.analytic_num_samples images of data.train_split
  (unconditional models only); None for the other samplers.
  """
  if not config.sampling.sampler.startswith("analytic"):
    return None
  if config.model.num_classes:
    raise ValueError("sampling.sampler='analytic_*' supports unconditional models only; "
                     "set model.num_classes to None or choose another sampler.")
  from diffusion_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  wanted = config.sampling.analytic_num_samples
  images = []
  for batch in input_pipeline.create_eval_iterator(config.data, global_batch_size=config.eval.batch_size,
                                                   split=config.data.train_split):
    mask = np.asarray(batch["mask"]).reshape(-1)
    images.append(np.asarray(batch["image"]).reshape((-1,) + batch["image"].shape[2:])[mask])
    if sum(len(x) for x in images) >= wanted:
      break
  x0 = np.concatenate(images)[:wanted]

  def model_fn(x_t, t):
    return model.apply({"params": params}, x_t, t, None, train=False)

  start = time.time()
  ms_eps = samplers.analytic.eps_mean_square(model_fn, schedule, x0, base_keys(config)["sample"],
                                             mean_type=config.diffusion.mean_type,
                                             var_type=config.diffusion.var_type)
  logging.info("Analytic-DPM: E||eps||^2 from %d training images in %.1fs.", len(x0),
               time.time() - start)
  return ms_eps


def pmap_sample_fn(sample_fn: Callable, mesh: Mesh) -> Callable:
  """pmaps a per-device sampler: replicated params, one key shared by all devices."""
  return jax.pmap(sample_fn, axis_name=AXIS, in_axes=(0, None), devices=list(mesh.devices.flat))


def generate(p_sample: Callable, params: PyTree, key: jax.Array, num_samples: int,
             batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Runs a pmapped sampler until `num_samples` images exist.

  Returns:
    (images uint8 [num_samples, H, W, C], labels int32 [num_samples]).
  """
  images, labels = [], []
  for i in range(-(-num_samples // batch_size)):
    x, y = p_sample(params, jax.random.fold_in(key, i))
    images.append(utils.to_uint8(np.asarray(x).reshape((-1,) + x.shape[2:])))
    labels.append(np.asarray(y).reshape(-1))
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


# ------------------------------------------------------------------------------------ the loop


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/Inf loss or gradient norm."""


class _Preemption:
  """Turns SIGTERM into a flag the loop checks between steps (then saves and returns)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    except ValueError:  # Not the main thread: no handler can be installed.
      self._previous = None
    return self

  def _handler(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint after this step, then exiting.")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


@contextlib.contextmanager
def _closing(manager):
  """Waits for pending checkpoint writes and closes the manager, also on errors."""
  try:
    yield manager
  finally:
    checkpointing.wait(manager)
    manager.close()


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes workdir/config.json, warning about fields that differ from an earlier run's."""
  path = os.path.join(workdir, "config.json")
  new = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    changed = sorted(k for k in set(_flatten(old)) | set(_flatten(new))
                     if _flatten(old).get(k) != _flatten(new).get(k))
    if changed:
      logging.warning("The config differs from the one saved in %s in: %s", path,
                      ", ".join(f"{k} ({_flatten(old).get(k)!r} -> {_flatten(new).get(k)!r})"
                                for k in changed))
  with open(path, "w") as f:
    json.dump(new, f, indent=2, sort_keys=True)


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _check_finite(pending: list[tuple[int, dict]], last_checkpoint: Optional[int],
                  workdir: str) -> dict:
  """Fetches the metrics of the pending steps; raises NonFiniteLossError on the first NaN/Inf.

  Returns:
    The mean of each metric over the pending steps.
  """
  host = [(s, {k: float(np.asarray(v)[0]) for k, v in m.items()}) for s, m in pending]
  for step, metrics in host:
    bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
    if bad:
      where = (f"step {last_checkpoint} in {os.path.join(workdir, 'checkpoints')}"
               if last_checkpoint else "none yet")
      raise NonFiniteLossError(
          f"Non-finite training metrics at step {step}: {bad}. Training stopped before this "
          f"state reached a checkpoint (last good checkpoint: {where}). Lower "
          "config.training.learning_rate, keep config.training.grad_clip > 0 (e.g. 1.0), or "
          "check the data for NaN/Inf; then rerun the same command to resume from that "
          "checkpoint.")
  return {k: float(np.mean([m[k] for _, m in host])) for k in host[0][1]} if host else {}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> train_state.TrainState:
  """Trains (or resumes training) until config.training.num_train_steps; returns the host state.

  Writes config.json, TensorBoard scalars, checkpoints and sample grids in `workdir`. On
  SIGTERM it saves a checkpoint and returns early; rerunning the same command continues.
  """
  from clu import metric_writers, periodic_actions  # pylint: disable=g-import-not-at-top
  from diffusion_jax import input_pipeline  # pylint: disable=g-import-not-at-top

  config_validation.validate_config(config, num_devices=jax.device_count())
  tcfg = config.training
  is_chief = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  if is_chief:
    _write_config(config, workdir)

  manager = checkpointing.create_manager(workdir, tcfg.keep_checkpoints)

  def data_iterator(start_step):
    # A resumed run reseeds the data order from its start step (deterministic for a given
    # (seed, step)) instead of replaying the stream up to it.
    return input_pipeline.create_train_iterator(
        config.data, global_batch_size=tcfg.batch_size,
        seed=config.seed + 1_000_003 * start_step)

  # Opened before the model is built, so a data error (missing, unknown) fails in seconds.
  expected_start = manager.latest_step() or 0
  try:
    train_iter = data_iterator(expected_start)
  except Exception:
    manager.close()
    raise

  mesh = make_mesh()
  model, schedule = create_model(config), create_schedule(config)
  tx = train_state.make_optimizer(config)
  host_state = jax.device_get(init_train_state(config, model, tx))
  restored, start_step = checkpointing.restore_latest(manager, host_state)
  if restored is not None:
    host_state = restored
    logging.info("Resumed from the checkpoint at step %d (state sha256 %s).", start_step,
                 checkpointing.state_digest(flax.serialization.to_state_dict(restored)))
  else:
    start_step = 0
    num_params = sum(np.size(x) for x in jax.tree.leaves(host_state.params))
    logging.info("Training from scratch: %s parameters.", f"{num_params:,}")
  if start_step >= tcfg.num_train_steps:
    logging.info("Already at step %d >= num_train_steps; nothing to train.", start_step)
    manager.close()
    return host_state
  if start_step != expected_start:  # the latest checkpoint was damaged; an older one is used
    train_iter = data_iterator(start_step)

  state = replicate(host_state, mesh)
  del host_state
  p_train_step = pmap_train_step(make_train_step(config, model, schedule, tx), mesh)
  grid_count = -(-tcfg.num_grid_samples // mesh.devices.size) * mesh.devices.size
  p_grid = pmap_sample_fn(make_sample_fn(config, model, schedule,
                                         grid_count // mesh.devices.size), mesh)
  grid_key = base_keys(config)["sample"]

  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
  if start_step == 0:
    flat = _flatten(json.loads(config.to_json_best_effort()))
    writer.write_hparams({k: v for k, v in flat.items() if isinstance(v, (int, float, str, bool))})
  report = periodic_actions.ReportProgress(num_train_steps=tcfg.num_train_steps, writer=writer,
                                           every_steps=tcfg.log_every_steps, every_secs=None)
  pending: list[tuple[int, dict]] = []
  last_checkpoint = start_step or None

  def save(step):
    checkpointing.save(manager, step, unreplicate(state))
    return step

  def write_grid(step):
    images, _ = generate(p_grid, state.ema_params, grid_key, tcfg.num_grid_samples, grid_count)
    grid = utils.make_grid(images, scale=utils.grid_scale(images.shape[1]))
    if is_chief:
      utils.save_png(os.path.join(workdir, "samples", str(step), "grid.png"), grid)
      writer.write_images(step, {"samples": grid[None]})

  logging.info("Training steps %d -> %d (global batch %d on %d devices).", start_step,
               tcfg.num_train_steps, tcfg.batch_size, jax.device_count())
  step = start_step
  with metric_writers.ensure_flushes(writer), _Preemption() as preemption, _closing(manager):
    while step < tcfg.num_train_steps:
      state, metrics = p_train_step(state, shard(next(train_iter), mesh))
      step += 1
      pending.append((step, metrics))
      report(step)
      final = step == tcfg.num_train_steps
      checkpoint_now = final or preemption.requested or step % tcfg.checkpoint_every_steps == 0
      if checkpoint_now or step % tcfg.log_every_steps == 0:
        means = _check_finite(pending, last_checkpoint, workdir)
        pending = []
        writer.write_scalars(step, means)
      if checkpoint_now:
        last_checkpoint = save(step)
      if tcfg.sample_every_steps and (step % tcfg.sample_every_steps == 0 or final):
        with report.timed("sample"):
          write_grid(step)
      if preemption.requested:
        logging.warning("Preempted at step %d; rerun the same command to resume.", step)
        break
  host_state = unreplicate(state)

  if step == tcfg.num_train_steps and config.eval.sample_quality_at_end:
    evaluate_sample_quality(config, workdir, host_state.ema_params, step, writer=writer)
  writer.flush()
  return host_state


# ------------------------------------------------------------------------- sample and evaluate


def _restore_for_inference(config: ml_collections.ConfigDict, workdir: str,
                           step: Optional[int]) -> tuple[PyTree, int, nn.Module,
                                                         schedules.DiffusionSchedule]:
  """Restores the EMA parameters of checkpoint `step` (None = latest) of `workdir`."""
  config_validation.validate_config(config, num_devices=jax.device_count())
  model, schedule = create_model(config), create_schedule(config)
  tx = train_state.make_optimizer(config)
  template = jax.device_get(init_train_state(config, model, tx))
  with _closing(checkpointing.create_manager(workdir, config.training.keep_checkpoints)) as manager:
    if step is None:
      state, step = checkpointing.restore_latest(manager, template)
      if state is None:
        raise checkpointing.CheckpointError(
            f"No checkpoint in {os.path.join(workdir, 'checkpoints')}: train first with "
            "--mode=train and the same --workdir.")
    else:
      state = checkpointing.restore_step(manager, template, step)
  return state.ema_params, step, model, schedule


def sample(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes config.sampling.num_samples samples of a checkpoint's EMA model.

  Output: workdir/samples/<step>/samples.npz (uint8 images [N, H, W, C], labels [N]) and
  samples.png (a grid of the first 100). Returns that directory.
  """
  params, step, model, schedule = _restore_for_inference(config, workdir,
                                                         config.sampling.checkpoint_step)
  mesh = make_mesh()
  per_device = config.sampling.batch_size // mesh.devices.size
  ms_eps = analytic_ms_eps(config, model, schedule, params)
  p_sample = pmap_sample_fn(make_sample_fn(config, model, schedule, per_device, ms_eps), mesh)
  start = time.time()
  images, labels = generate(p_sample, replicate(params, mesh),
                            jax.random.fold_in(base_keys(config)["sample"], 1),
                            config.sampling.num_samples, config.sampling.batch_size)
  directory = os.path.join(workdir, "samples", str(step))
  if jax.process_index() == 0:
    write_samples(directory, images, labels)
  logging.info("Wrote %d samples of step %d to %s in %.1fs.", len(images), step, directory,
               time.time() - start)
  return directory


def evaluate_sample_quality(config: ml_collections.ConfigDict, workdir: str, ema_params: PyTree,
                            step: int, writer=None) -> dict:
  """Samples config.eval.num_quality_samples images with config.sampling's sampler and scores them.

  - digits: the digits Frechet distance (diffusion_jax.evaluation.digits_fd), written to
    workdir/eval/sample_quality_<step>.json with the protocol next to the score.
  - with eval.inception_weights and eval.reference_stats: FID, Inception Score and
    precision/recall (diffusion_jax.evaluation.sample_quality), in resumable chunks, written to
    workdir/eval/fid_<step>.json with the full protocol.
  """
  mesh = make_mesh()
  model, schedule = create_model(config), create_schedule(config)
  ms_eps = analytic_ms_eps(config, model, schedule, ema_params)
  params = replicate(ema_params, mesh)
  num = config.eval.num_quality_samples
  protocol = {"step": step, "params": "ema", **sampler_options(config)}
  result = {}
  if config.eval.inception_weights or config.eval.reference_stats:
    from diffusion_jax.evaluation import sample_quality  # pylint: disable=g-import-not-at-top
    batch = config.eval.quality_batch_size
    p_sample = pmap_sample_fn(make_sample_fn(config, model, schedule, batch // mesh.devices.size,
                                             ms_eps), mesh)

    def sample_batch_fn(key, n):
      images, _ = p_sample(params, key)
      return np.asarray(images).reshape((-1,) + images.shape[2:])[:n]

    result["fid"] = sample_quality.evaluate_sample_quality(
        sample_batch_fn, num_samples=num, batch_size=batch, eval_config=config.eval,
        workdir=workdir, protocol=protocol, name=f"fid_{step}", seed=config.seed, step=step,
        writer=writer if jax.process_index() == 0 else None)
    print(f"FID (step {step}, {num} samples): {result['fid']['fid']:.3f}", flush=True)
  if config.data.dataset == "digits":
    from diffusion_jax.evaluation import digits_fd  # pylint: disable=g-import-not-at-top
    batch = min(config.sampling.batch_size * 8, -(-num // mesh.devices.size) * mesh.devices.size)
    p_sample = pmap_sample_fn(make_sample_fn(config, model, schedule, batch // mesh.devices.size,
                                             ms_eps), mesh)
    start = time.time()
    images, labels = generate(p_sample, params, jax.random.fold_in(base_keys(config)["eval"], 1),
                              num, batch)
    score = float(digits_fd.digits_frechet_distance(images.astype(np.float32) / 127.5 - 1.0))
    result.update({"step": step, "digits_fd": score, "num_samples": num, "protocol": protocol,
                   "seconds": round(time.time() - start, 1)})
    if jax.process_index() == 0:
      os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
      with open(os.path.join(workdir, "eval", f"sample_quality_{step}.json"), "w") as f:
        json.dump(result, f, indent=2, default=str)
      write_samples(os.path.join(workdir, "samples", str(step)), images, labels, "quality_samples")
      if writer is not None:
        writer.write_scalars(step, {"digits_fd": score})
    logging.info("Digits Frechet distance of %d EMA samples at step %d: %.3f", num, step, score)
    print(f"digits Frechet distance (step {step}, {num} samples): {score:.3f}", flush=True)
  return result


def make_bpd_fn(config: ml_collections.ConfigDict, model: nn.Module,
                schedule: schedules.DiffusionSchedule) -> Callable:
  """Per-device bits/dim of a batch: (params, batch, key) -> total/prior/decoder bpd [n]."""
  dcfg = config.diffusion
  conditional = bool(config.model.num_classes)

  def bpd_fn(params, batch, key):
    key = jax.random.fold_in(key, jax.lax.axis_index(AXIS))
    labels = batch["label"] if conditional else None

    def model_fn(x_t, t):
      return model.apply({"params": params}, x_t, t, labels, train=False)
    terms = losses.calc_bpd_loop(model_fn, schedule, batch["image"], key,
                                 mean_type=dcfg.mean_type, var_type=dcfg.var_type,
                                 clip_denoised=config.eval.clip_denoised)
    return {"total_bpd": terms.total_bpd, "prior_bpd": terms.prior_bpd,
            "decoder_bpd": terms.terms_bpd[:, 0]}

  return bpd_fn


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """--mode=eval: bits/dim (eval.compute_bpd) and sample quality of a checkpoint's EMA model.

  Sample quality runs when it is defined for the run: on the digits data (digits Frechet
  distance) or with eval.inception_weights / eval.reference_stats (FID, IS, precision/recall).
  """
  params, step, model, schedule = _restore_for_inference(config, workdir,
                                                         config.eval.checkpoint_step)
  result = {}
  if config.eval.compute_bpd:
    result.update(evaluate_bpd(config, workdir, params, step, model, schedule))
  if config.data.dataset == "digits" or config.eval.inception_weights or config.eval.reference_stats:
    result["sample_quality"] = evaluate_sample_quality(config, workdir, params, step)
  return result


def evaluate_bpd(config: ml_collections.ConfigDict, workdir: str, params: PyTree, step: int,
                 model: nn.Module, schedule: schedules.DiffusionSchedule) -> dict:
  """Test-set negative log-likelihood in bits/dim (DDPM Table 2) of `params`.

  Runs `losses.calc_bpd_loop` (all T terms + prior) over config.data.eval_split (or its
  first config.eval.num_batches batches) and writes workdir/eval/bpd_<step>.json.
  """
  from diffusion_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  mesh = make_mesh()
  p_bpd = jax.pmap(make_bpd_fn(config, model, schedule), axis_name=AXIS, in_axes=(0, 0, None),
                   devices=list(mesh.devices.flat))
  params = replicate(params, mesh)
  eval_key = base_keys(config)["eval"]
  sums, count, start = {}, 0.0, time.time()
  eval_iter = input_pipeline.create_eval_iterator(config.data,
                                                  global_batch_size=config.eval.batch_size)
  for i, batch in enumerate(eval_iter):
    if config.eval.num_batches is not None and i >= config.eval.num_batches:
      break
    mask = np.asarray(batch.pop("mask"), np.float64)
    out = jax.device_get(p_bpd(params, shard(batch, mesh), jax.random.fold_in(eval_key, i)))
    for k, v in out.items():
      sums[k] = sums.get(k, 0.0) + float(np.sum(np.asarray(v, np.float64) * mask))
    count += float(mask.sum())
    logging.info("bits/dim batch %d: running mean %.4f over %d images", i,
                 sums["total_bpd"] / max(count, 1), count)
  if not count:
    raise ValueError(f"config.data.eval_split={config.data.eval_split!r} gave no examples.")
  result = {k: v / count for k, v in sums.items()}
  result.update(step=step, num_examples=int(count), split=config.data.eval_split,
                dataset=config.data.dataset, params="ema",
                num_timesteps=schedule.num_timesteps, clip_denoised=config.eval.clip_denoised,
                seconds=round(time.time() - start, 1))
  if jax.process_index() == 0:
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    with open(os.path.join(workdir, "eval", f"bpd_{step}.json"), "w") as f:
      json.dump(result, f, indent=2)
  logging.info("Test bits/dim at step %d: %.4f (%d examples)", step, result["total_bpd"], count)
  print(f"bits/dim (step {step}, {int(count)} {config.data.eval_split} images): "
        f"{result['total_bpd']:.4f}", flush=True)
  return result
