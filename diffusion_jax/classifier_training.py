"""Training ADM's noisy classifier p(y | x_t, t) for classifier guidance (`--mode=train_classifier`).

Dhariwal & Nichol (2021), Sec. 4: the classifier sees q_sample'd training images at t drawn
uniformly from [0, T) of the run's diffusion, and is trained with cross-entropy by AdamW (the
learning rate annealed linearly to 0, as ADM's classifier runs). Its files live in their own
section of the workdir, beside the diffusion model's:

  workdir/classifier/checkpoints/<step>/   resumable TrainState (ema_params = params: ADM's
                                           classifiers use no averaging)
  workdir/classifier/ (TensorBoard events) loss, accuracy, accuracy per t band, learning rate
  workdir/classifier/eval_<step>.json      accuracy per t band on eval_split, at the end

Rerunning the same command resumes. Randomness follows the trainer's rule: example i of the
GLOBAL batch at step s draws t and noise from fold_in(fold_in(key, s), i).
"""

from __future__ import annotations

import json
import os
from typing import Callable

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from diffusion_jax import checkpointing, config_validation, diffusion, experiment, modes
from diffusion_jax import parallel, train, train_state

SECTION = "classifier"  # the classifier's directory inside the workdir


def classifier_dir(workdir: str) -> str:
  """workdir/classifier: where --mode=train_classifier writes and guidance reads."""
  return os.path.join(workdir, SECTION)


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """ADM's linear annealing of the learning rate to 0 over the run, or a constant one."""
  ct = config.classifier.training
  if ct.anneal_lr:
    return optax.linear_schedule(ct.learning_rate, 0.0, ct.num_train_steps)
  return optax.constant_schedule(ct.learning_rate)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW (decoupled weight decay classifier.training.weight_decay) on that schedule."""
  return optax.adamw(learning_rate_schedule(config), weight_decay=config.classifier.training.weight_decay)


def band_of(t: jnp.ndarray, num_timesteps: int, num_bands: int) -> jnp.ndarray:
  """The t band [k T / n, (k + 1) T / n) of each timestep, int32 [B]."""
  return jnp.minimum(t * num_bands // num_timesteps, num_bands - 1).astype(jnp.int32)


def _metrics(logits: jnp.ndarray, labels: jnp.ndarray, t: jnp.ndarray, num_timesteps: int,
             num_bands: int, mask: jnp.ndarray | None = None) -> dict:
  """Per-device sums over the (unmasked) examples: cross-entropy, correct predictions, and the
  correct predictions and counts per t band."""
  mask = jnp.ones(t.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32) * mask
  band = jax.nn.one_hot(band_of(t, num_timesteps, num_bands), num_bands) * mask[:, None]
  return {"loss_sum": jnp.sum(loss * mask), "correct": jnp.sum(correct), "count": jnp.sum(mask),
          "band_correct": correct @ band, "band_count": jnp.sum(band, 0)}


def make_train_step(config: ml_collections.ConfigDict, model: nn.Module,
                    diffusion_: diffusion.GaussianDiffusion, tx: optax.GradientTransformation
                    ) -> Callable:
  """The per-device step (pmap it with axis "batch"): (state, batch) -> (state, metric sums)."""
  key = jax.random.fold_in(experiment.base_keys(config)["train"], 1)   # not the U-Net's stream
  schedule, num_t = diffusion_.schedule, diffusion_.schedule.num_timesteps
  bands = config.classifier.training.t_bands

  def step(state: train_state.TrainState, batch: dict):
    images, labels = batch["image"], batch["label"]
    n = images.shape[0]
    first = jax.lax.axis_index(parallel.AXIS) * n
    step_key = jax.random.fold_in(key, state.step)
    keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(step_key, i)))(first + jnp.arange(n))
    t = jax.vmap(lambda k: jax.random.randint(k, (), 0, num_t))(keys[:, 0])
    noise = jax.vmap(lambda k: jax.random.normal(k, images.shape[1:], images.dtype))(keys[:, 1])
    x_t = diffusion.q_sample(schedule, images, t, noise)

    def loss_fn(params):
      logits = model.apply({"params": params}, x_t, t, train=False)
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels)), logits

    (_, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = parallel.mean_over_devices(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    state = state.replace(step=state.step + 1, params=params, ema_params=params, opt_state=opt_state)
    sums = jax.lax.psum(_metrics(logits, labels, t, num_t, bands), parallel.AXIS)
    return state, {**sums, "grad_norm": train_state.global_norm(grads)}

  return step


def _scalars(sums: dict, num_timesteps: int, prefix: str = "") -> dict:
  """Accuracy and loss (overall and per t band) from summed metrics."""
  out = {f"{prefix}loss": sums["loss_sum"] / sums["count"], f"{prefix}accuracy": sums["correct"] / sums["count"]}
  bands = len(sums["band_count"])
  for k in range(bands):
    lo, hi = k * num_timesteps // bands, (k + 1) * num_timesteps // bands
    if sums["band_count"][k]:
      out[f"{prefix}accuracy_t{lo}-{hi}"] = sums["band_correct"][k] / sums["band_count"][k]
  return out


def _sum_pending(pending: list) -> dict:
  host = [jax.tree.map(lambda v: np.asarray(v, np.float64), parallel.unreplicate(m)) for m in pending]
  total = jax.tree.map(lambda *v: np.sum(v, axis=0), *host)
  if not np.isfinite(total["loss_sum"]):
    raise train.NonFiniteLossError(
        "Non-finite classifier loss; lower config.classifier.training.learning_rate and rerun the "
        "same command to resume from the last checkpoint.")
  return total


def evaluate(config: ml_collections.ConfigDict, model: nn.Module, params, diffusion_, mesh,
             step: int, directory: str) -> dict:
  """Accuracy per t band on eval_split's first classifier.training.eval_batches batches."""
  from diffusion_jax import input_pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)
  ct = config.classifier.training
  num_t = diffusion_.schedule.num_timesteps
  key = jax.random.fold_in(experiment.base_keys(config)["eval"], 1)

  def eval_on_device(params, batch, key):
    n = batch["image"].shape[0]
    first = jax.lax.axis_index(parallel.AXIS) * n
    keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(key, i)))(first + jnp.arange(n))
    t = jax.vmap(lambda k: jax.random.randint(k, (), 0, num_t))(keys[:, 0])
    noise = jax.vmap(lambda k: jax.random.normal(k, batch["image"].shape[1:]))(keys[:, 1])
    x_t = diffusion.q_sample(diffusion_.schedule, batch["image"], t, noise)
    logits = model.apply({"params": params}, x_t, t)
    return jax.lax.psum(_metrics(logits, batch["label"], t, num_t, ct.t_bands, batch["mask"]),
                        parallel.AXIS)

  p_eval = parallel.pmap(eval_on_device, mesh, in_axes=(0, 0, None))
  layout = parallel.batch_layout(ct.batch_size, mesh)
  replicated = parallel.replicate(params, mesh)
  pending = []
  for i, batch in enumerate(input_pipeline.create_eval_iterator(
      config.data, local_batch_shape=(layout.local_devices, layout.per_device))):
    if i >= ct.eval_batches:
      break
    pending.append(p_eval(replicated, parallel.shard(batch, mesh), jax.random.fold_in(key, i)))
  sums = _sum_pending(pending)
  result = {k: float(v) for k, v in _scalars(sums, num_t).items()}
  result.update(step=step, split=config.data.eval_split, num_examples=int(sums["count"]))
  if jax.process_index() == 0:
    with open(os.path.join(directory, f"eval_{step}.json"), "w") as f:
      json.dump(result, f, indent=2)
  print(f"classifier accuracy (step {step}, {result['num_examples']} {config.data.eval_split} "
        f"images, t ~ U[0, {num_t})): {result['accuracy']:.4f}", flush=True)
  return result


@modes.register("train_classifier", "train (or resume) the noisy classifier of classifier "
                "guidance into workdir/classifier")
def train_classifier(config: ml_collections.ConfigDict, workdir: str) -> train_state.TrainState:
  """Trains the noisy classifier until classifier.training.num_train_steps; returns the host state."""
  from diffusion_jax import input_pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)
  from clu import metric_writers  # pylint: disable=g-import-not-at-top

  config_validation.validate_config(config, num_devices=jax.device_count())
  config_validation.validate_classifier_config(config, num_devices=jax.device_count())
  ct = config.classifier.training
  directory = classifier_dir(workdir)
  os.makedirs(directory, exist_ok=True)
  mesh = parallel.make_mesh()
  layout = parallel.batch_layout(ct.batch_size, mesh)
  manager = checkpointing.create_manager(directory, ct.keep_checkpoints)
  model, diffusion_ = experiment.create_classifier(config), experiment.create_diffusion(config)
  tx = make_optimizer(config)
  size, channels = config.data.image_size, config.data.num_channels
  params = jax.jit(lambda k: model.init(k, jnp.zeros((1, size, size, channels)),
                                        jnp.zeros((1,), jnp.int32))["params"])(
      jax.random.fold_in(experiment.base_keys(config)["init"], 1))
  host_state = jax.device_get(train_state.create_train_state(params, tx))
  restored, start = checkpointing.restore_latest(manager, host_state)
  host_state, start = (restored, start) if restored is not None else (host_state, 0)
  logging.info("Classifier: %s parameters, steps %d -> %d.",
               f"{sum(np.size(x) for x in jax.tree.leaves(host_state.params)):,}", start,
               ct.num_train_steps)
  train_iter = input_pipeline.create_train_iterator(config.data, layout=layout, seed=config.seed + 1,
                                                    start_step=start)
  state = parallel.replicate(host_state, mesh)
  p_step = parallel.pmap(make_train_step(config, model, diffusion_, tx), mesh, donate_argnums=(0,))
  lr = learning_rate_schedule(config)
  writer = metric_writers.create_default_writer(directory, just_logging=jax.process_index() != 0)
  num_t = diffusion_.schedule.num_timesteps
  step, pending = start, []
  with metric_writers.ensure_flushes(writer), train._Preemption() as preemption, train._closing(manager):  # pylint: disable=protected-access
    while step < ct.num_train_steps:
      state, metrics = p_step(state, parallel.shard(next(train_iter), mesh))
      step += 1
      pending.append(metrics)
      final = step == ct.num_train_steps
      checkpoint_now = final or preemption.requested or step % ct.checkpoint_every_steps == 0
      if checkpoint_now or step % ct.log_every_steps == 0:
        sums = _sum_pending(pending)
        scalars = _scalars(sums, num_t)
        scalars.update(grad_norm=sums["grad_norm"] / len(pending), learning_rate=float(lr(step)))
        writer.write_scalars(step, scalars)
        logging.info("classifier step %d: loss %.4f, accuracy %.4f", step, scalars["loss"],
                     scalars["accuracy"])
        pending = []
      if checkpoint_now:
        checkpointing.save(manager, step, parallel.unreplicate(state))
      if preemption.requested:
        logging.warning("Preempted at step %d; rerun the same command to resume.", step)
        break
  host_state = parallel.unreplicate(state)
  if step == ct.num_train_steps and ct.eval_batches:
    evaluate(config, model, host_state.params, diffusion_, mesh, step, directory)
  return host_state
