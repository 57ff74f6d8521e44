"""Training: the per-device train step and the loop (`--mode=train`).

The step is built by `make_train_step` and pmapped over every device of every process
(`parallel`); gradients and metrics are averaged with `lax.pmean`. Randomness is stateless and
independent of the device layout: step s uses key fold_in(train_key, s), and example i of the
GLOBAL batch draws its timestep, noise and dropout masks from fold_in(that key, i), so the same
global batch gives the same update on 1 device, 8 devices or several hosts.

A run's files live in its workdir: config.json, checkpoints/<step>/, TensorBoard events and
samples/<step>/grid.png. Rerunning the same command on the same workdir resumes from the latest
checkpoint; SIGTERM saves one and exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from typing import Callable, NamedTuple, Optional

from absl import logging
import chex
import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from diffusion_jax import checkpointing, config_validation, diffusion, errors, experiment
from diffusion_jax import inference
from diffusion_jax import losses, modes, parallel, timestep_sampling, train_state, utils
from diffusion_jax.models.model_fn import make_model_fn

TrainStep = Callable[[train_state.TrainState, dict], tuple[train_state.TrainState, dict]]


def make_train_step(config: ml_collections.ConfigDict, model: nn.Module,
                    diffusion_: diffusion.GaussianDiffusion,
                    tx: optax.GradientTransformation) -> TrainStep:
  """Builds the per-device train step; run it under pmap with axis name "batch".

  One step (DDPM Algorithm 1, with Improved DDPM's options): draw t and eps per example (and,
  with training.label_dropout, whether its label becomes the null label), take
  the loss of `losses.training_losses` (weighted for importance-sampled t), average gradients
  over devices, clip, Adam, then update the EMA and the timestep-loss history. With a
  score-matching objective (config.diffusion.objective) t is a continuous time ~ U(sde_eps, 1)
  ("score_sde", `losses.score_matching_losses`) or a uniformly drawn noise level ("ncsn",
  `losses.ncsn_losses`), and the model sees the fractional step `sde.time_to_step(t)`.

  Args:
    config: the run config (diffusion, model and training sections are read).
    model: the U-Net.
    diffusion_: the training diffusion (`experiment.create_diffusion`).
    tx: the optimizer (`train_state.make_optimizer(config)`).

  Returns:
    step(state, batch) -> (state, metrics); batch holds this device's 'image' [n, H, W, C]
    (and 'label' [n]); metrics are scalars averaged over all devices.
  """
  train_key = experiment.base_keys(config)["train"]
  schedule = diffusion_.schedule
  objective = score_objective(config, diffusion_)
  tcfg = config.training
  lr_schedule = train_state.learning_rate_schedule(config)
  conditional = bool(config.model.num_classes)
  null = experiment.null_label(config)
  uses_dropout = config.model.dropout > 0

  def step(state: train_state.TrainState, batch: dict) -> tuple[train_state.TrainState, dict]:
    images = batch["image"]
    n = images.shape[0]
    # Per-example keys from the global example index: independent of the device layout.
    first = jax.lax.axis_index(parallel.AXIS) * n
    step_key = jax.random.fold_in(train_key, state.step)
    example_keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(first + jnp.arange(n))
    keys = jax.vmap(lambda k: jax.random.split(k, 3))(example_keys)
    labels = batch["label"] if conditional else None
    if null is not None:  # label dropout (Ho & Salimans 2022): the null label with probability p
      drop = jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, 3), tcfg.label_dropout))(
          example_keys)
      labels = jnp.where(drop, null, labels)

    def draw_t(key):
      t, w = timestep_sampling.sample_timesteps(key, 1, schedule.num_timesteps,
                                                sampler=tcfg.timestep_sampler,
                                                history=state.loss_history)
      return t[0], w[0]

    if objective is None:
      t, weights = jax.vmap(draw_t)(keys[:, 0])
    else:
      t, weights = jax.vmap(objective.draw)(keys[:, 0]), jnp.ones((n,), jnp.float32)
    noise = jax.vmap(lambda k: jax.random.normal(k, images.shape[1:], images.dtype))(keys[:, 1])

    def loss_fn(params):
      model_fn = make_model_fn(model, params, labels=labels,
                               train=True, dropout_keys=keys[:, 2] if uses_dropout else None)
      if objective is None:
        terms = losses.training_losses(model_fn, schedule, images, t, noise,
                                       loss_type=config.diffusion.loss_type,
                                       **diffusion_.parameterization)
      else:
        terms = objective.loss(model_fn, images, t, noise)
      return jnp.mean(weights * terms.loss), terms

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = parallel.mean_over_devices(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    history = state.loss_history
    if history is not None:
      history = timestep_sampling.gather_and_update(history, t, terms.loss,
                                                    axis_name=parallel.AXIS)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, loss_history=history,
        ema_params=train_state.update_ema(state.ema_params, params, tcfg.ema_decay))
    metrics = {"loss": loss, "grad_norm": train_state.global_norm(grads),
               "learning_rate": lr_schedule(state.step)}
    if terms.mse is not None:
      metrics["mse"] = jnp.mean(terms.mse)
    if terms.vb is not None:
      metrics["vb"] = jnp.mean(terms.vb)
    return new_state, parallel.mean_over_devices(metrics)

  return step


class ScoreObjective(NamedTuple):
  """A score-matching objective: draw(key) -> one example's time; loss(model_fn, x_0, t, noise)."""
  draw: Callable[[jax.Array], jnp.ndarray]
  loss: Callable[..., losses.LossTerms]


def score_objective(config: ml_collections.ConfigDict, diffusion_: diffusion.GaussianDiffusion
                    ) -> Optional[ScoreObjective]:
  """The score-matching objective of config.diffusion.objective, or None for "ddpm"."""
  d = config.diffusion
  sde, kw = diffusion_.sde, dict(prediction=d.mean_type, time_input="continuous")
  if d.objective == "score_sde":
    return ScoreObjective(
        draw=lambda key: timestep_sampling.sample_continuous_times(key, (), eps=d.sde_eps),
        loss=lambda model_fn, x, t, z: losses.score_matching_losses(
            model_fn, sde, x, t, z, weighting=d.sde_weighting, var_type=d.var_type, **kw))
  if d.objective == "ncsn":
    return ScoreObjective(
        draw=lambda key: jax.random.randint(key, (), 0, sde.N),
        loss=lambda model_fn, x, levels, z: losses.ncsn_losses(model_fn, sde, x, levels, z, **kw))
  return None


def make_multi_step(step: TrainStep, n_steps: int, unroll: Optional[bool] = None) -> TrainStep:
  """`n_steps` consecutive calls of a per-device step as one, with `lax.scan` (score_sde's
  training.n_jitted_steps): fewer dispatches of the same computation.

  Step j of the scan sees batch j and the state step j - 1 left, so it computes what
  `n_steps` separate calls compute; its keys still come from fold_in(train_key, state.step)
  and the global example index. On CPU the scan is unrolled: XLA:CPU canonicalizes
  convolutions for its Eigen kernels in the entry computation only, so a rolled loop body runs
  generic convolutions, ~20x slower per step at digits batch 128 (`python -m bench.train_step
  --n_jitted_steps=4 --rolled`). Unrolled steps are kept apart by `_fusion_barrier`, so XLA
  compiles each as it compiles a single step and the states are bit-identical to `n_steps`
  separate calls (tests/n_jitted_steps_test.py): fused across a step boundary, a * b + c
  would be contracted into FMAs differently.

  Args:
    step: a per-device step(state, batch) -> (state, metrics), e.g. `make_train_step`'s; the
      state has an int `step` that the step increments.
    n_steps: steps per call; 1 returns `step` itself (no scan).
    unroll: unroll the scan; None: on CPU only.

  Returns:
    multi(state, batches) -> (state, metrics); batches holds this device's 'image'
    [n_steps, n, H, W, C] (and 'label' [n_steps, n]); each metric is stacked to [n_steps].
  """
  if n_steps == 1:
    return step
  if unroll is None:
    unroll = jax.default_backend() == "cpu"

  def separated_step(state, batch):
    state, metrics = step(state, batch)
    return (_fusion_barrier(state) if unroll else state), metrics

  def multi(state: train_state.TrainState, batches: dict) -> tuple[train_state.TrainState, dict]:
    chex.assert_tree_shape_prefix(batches, (n_steps,))
    return jax.lax.scan(separated_step, state, batches, unroll=unroll)

  return multi


def _fusion_barrier(state):
  """`state` through a conditional on `state.step > 0`, true after a step but not known to XLA,
  which fuses nothing across it (XLA:CPU drops optimization barriers before fusion)."""
  return jax.lax.cond(state.step > 0, lambda s: s, lambda s: jax.tree.map(jnp.zeros_like, s),
                      state)


def stack_batches(batches: list[dict]) -> dict:
  """k host batches [local_devices, n, ...] -> one [local_devices, k, n, ...] for `shard`.

  The step axis goes second, so `parallel.shard` splits the device axis as for one batch and
  each device's part is [k, n, ...], what `make_multi_step` scans over.
  """
  return jax.tree.map(lambda *xs: np.stack(xs, axis=1), *batches)


def pmap_train_step(step: TrainStep, mesh: jax.sharding.Mesh) -> TrainStep:
  """pmaps a per-device step over the mesh's devices, donating the state."""
  return parallel.pmap(step, mesh, donate_argnums=(0,))


NonFiniteLossError = errors.NonFiniteLossError


class _Preemption:
  """Turns SIGTERM into a flag the loop checks between dispatches (then saves and returns)."""

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
    logging.warning("SIGTERM received: saving a checkpoint after the current step(s), then "
                    "exiting.")
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


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes workdir/config.json, warning about fields that differ from an earlier run's."""
  path = os.path.join(workdir, "config.json")
  new = _flatten(json.loads(config.to_json_best_effort()))
  if os.path.exists(path):
    with open(path) as f:
      old = _flatten(json.load(f))
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
      logging.warning("The config differs from the one saved in %s in: %s", path,
                      ", ".join(f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in changed))
  with open(path, "w") as f:
    json.dump(json.loads(config.to_json_best_effort()), f, indent=2, sort_keys=True)


def _per_step(pending: list[tuple[int, dict]]) -> list[tuple[int, dict]]:
  """Host metrics of each pending step: an entry (s, metrics) of a dispatch of k steps holds
  metrics stacked to [k] (`make_multi_step`), those of steps s - k + 1, ..., s."""
  host = []
  for last, metrics in pending:
    values = {k: np.atleast_1d(v) for k, v in parallel.unreplicate(metrics).items()}
    n = len(next(iter(values.values())))
    host += [(last - n + 1 + j, {k: float(v[j]) for k, v in values.items()}) for j in range(n)]
  return host


def _check_finite(pending: list[tuple[int, dict]], last_checkpoint: Optional[int],
                  workdir: str) -> dict:
  """Fetches the metrics of the pending steps; raises NonFiniteLossError on the first NaN/Inf.

  Returns:
    The mean of each metric over the pending steps.
  """
  host = _per_step(pending)
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


@modes.register("train", "train, or resume training from the workdir's latest checkpoint")
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> train_state.TrainState:
  """Trains (or resumes training) until config.training.num_train_steps; returns the host state.

  Writes config.json, TensorBoard scalars, checkpoints and sample grids in `workdir`. On
  SIGTERM it saves a checkpoint and returns early; rerunning the same command continues.

  With training.n_jitted_steps = k > 1, each dispatch runs k steps (`make_multi_step`) on k
  consecutive batches, and logging, checkpoints, grids and preemption happen between
  dispatches (the validator makes their periods multiples of k). A run resumed from a
  checkpoint whose step is not a multiple of k (written with another n_jitted_steps) takes
  single steps up to the next multiple, then k at a time.
  """
  config_validation.validate_config(config, num_devices=jax.device_count())
  # TensorFlow comes with these; imported after validation, so a config error returns at once.
  from diffusion_jax import input_pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)
  from clu import metric_writers, periodic_actions  # pylint: disable=g-import-not-at-top
  tcfg = config.training
  is_chief = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  if is_chief:
    _write_config(config, workdir)
  mesh = parallel.make_mesh()
  layout = parallel.batch_layout(tcfg.batch_size, mesh)

  def data_iterator(start_step):
    # Step s's batch is a pure function of (seed, s): a resumed run sees what an
    # uninterrupted one would have seen from that step on.
    return input_pipeline.create_train_iterator(config.data, layout=layout, seed=config.seed,
                                                start_step=start_step)

  # Opened before the model and the checkpoint manager (whose background cleanup must not
  # outlive an early exit), so a data error (missing, unknown) fails in seconds.
  expected_start = checkpointing.latest_step(workdir) or 0
  train_iter = data_iterator(expected_start)
  manager = checkpointing.create_manager(workdir, tcfg.keep_checkpoints)

  model, diffusion_ = experiment.create_model(config), experiment.create_diffusion(config)
  tx = train_state.make_optimizer(config)
  host_state = jax.device_get(experiment.init_train_state(config, model, tx))
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

  state = parallel.replicate(host_state, mesh)
  del host_state
  k = tcfg.n_jitted_steps
  step_fn = make_train_step(config, model, diffusion_, tx)
  p_train_step = pmap_train_step(step_fn, mesh)  # compiled on its first call only
  p_multi_step = pmap_train_step(make_multi_step(step_fn, k), mesh) if k > 1 else None
  grid_batch = -(-tcfg.num_grid_samples // mesh.devices.size) * mesh.devices.size
  grid_sampler = inference.make_sampler(config, model, diffusion_, mesh, grid_batch)
  grid_key = experiment.base_keys(config)["sample"]

  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
  if start_step == 0:
    flat = _flatten(json.loads(config.to_json_best_effort()))
    writer.write_hparams({k: v for k, v in flat.items() if isinstance(v, (int, float, str, bool))})
  report = periodic_actions.ReportProgress(num_train_steps=tcfg.num_train_steps, writer=writer,
                                           every_steps=tcfg.log_every_steps, every_secs=None)
  pending: list[tuple[int, dict]] = []
  last_checkpoint = start_step or None

  def write_grid(step):
    images, _ = inference.generate(grid_sampler, state.ema_params, grid_key,
                                   tcfg.num_grid_samples)
    grid = utils.make_grid(images, scale=utils.grid_scale(images.shape[1]))
    if is_chief:
      utils.save_png(os.path.join(workdir, "samples", str(step), "grid.png"), grid)
      writer.write_images(step, {"samples": grid[None]})

  logging.info("Training steps %d -> %d (global batch %d on %d devices).", start_step,
               tcfg.num_train_steps, tcfg.batch_size, jax.device_count())
  step = start_step
  with metric_writers.ensure_flushes(writer), _Preemption() as preemption, _closing(manager):
    while step < tcfg.num_train_steps:
      # k steps per dispatch; single steps up to the next multiple of k (a resumed run).
      n = k if step % k == 0 else 1
      batches = [next(train_iter) for _ in range(n)]
      if n == 1:
        state, metrics = p_train_step(state, parallel.shard(batches[0], mesh))
      else:
        state, metrics = p_multi_step(state, parallel.shard(stack_batches(batches), mesh))
      pending.append((step + n, metrics))
      for _ in range(n):  # clu's progress report wants every step
        step += 1
        report(step)
      final = step == tcfg.num_train_steps
      checkpoint_now = final or preemption.requested or step % tcfg.checkpoint_every_steps == 0
      if checkpoint_now or step % tcfg.log_every_steps == 0:
        means = _check_finite(pending, last_checkpoint, workdir)
        pending = []
        writer.write_scalars(step, means)
      if checkpoint_now:
        checkpointing.save(manager, step, parallel.unreplicate(state))
        last_checkpoint = step
      if tcfg.sample_every_steps and (step % tcfg.sample_every_steps == 0 or final):
        with report.timed("sample"):
          write_grid(step)
      if preemption.requested:
        logging.warning("Preempted at step %d; rerun the same command to resume.", step)
        break
  host_state = parallel.unreplicate(state)

  if step == tcfg.num_train_steps and config.eval.sample_quality_at_end:
    inference.evaluate_sample_quality(config, workdir, host_state.ema_params, step,
                                      writer=writer)
  writer.flush()
  return host_state
