"""Improved DDPM on the 8x8 digits: L_hybrid + learned Sigma vs L_simple, same steps, on CPU.

  python -m bench.iddpm_digits --workdir_root=/tmp/iddpm_digits

Trains two models for the SAME number of steps with the library's trainer
(`diffusion_jax.train.train_and_evaluate`, what `main.py --mode=train` runs):

  L_simple  configs/digits.py         eps, fixedlarge Sigma, loss "mse"
  L_hybrid  configs/digits_hybrid.py  eps, learned_range Sigma, loss "rescaled_mse"

(everything else identical: U-Net, T = 1000 linear betas, optimizer, batch, seed, data order).
A workdir that already holds the final checkpoint is reused (its training is skipped). Then:

1. test-set bits/dim of each EMA model with `inference.evaluate` (what `--mode=eval` runs:
   `losses.calc_bpd_loop`, all T terms + the prior), on the first --eval_batches batches of
   the test split (None = the whole split, 355 images);
2. the digits Frechet distance (`evaluation.digits_fd`, reference = test split) of
   --num_samples ancestral samples at each of --steps (1000 = the full chain; fewer = the
   respaced chain on evenly spaced timesteps, Improved DDPM Sec. 4), with the wall time of
   each sample set (compilation excluded, reported apart). Every row uses the same N and the
   same sampling key, so rows compare; FD is biased upward for small N (digits_fd docs) and
   noisy: at N = 250 two sampling seeds differed by up to 14 FD on the same model, so use
   --num_samples=1000 for conclusions (the 1000-step rows then cost ~8 min per model here).

Prints two markdown tables and writes them (and the raw numbers) to
<workdir_root>/results.md and results.json (--results_name). Defaults: digits.py's model and
optimizer for --num_train_steps=2000 steps; on 2 CPU cores shared with other jobs (load ~9)
the default run took 32 minutes. Rows can be added later on the same --workdir_root (training
is then skipped), e.g.:

  python -m bench.iddpm_digits --skip_bpd --steps=50,100 --num_samples=1000 \
      --results_name=results_n1000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from configs import digits, digits_hybrid
from diffusion_jax import experiment, inference, parallel, train
from diffusion_jax.evaluation import digits_fd

MODELS = {"L_simple": digits.get_config, "L_hybrid": digits_hybrid.get_config}


def make_config(name: str, args: argparse.Namespace):
  """The experiment config of model `name`, with the bench's shared overrides."""
  config = MODELS[name]()
  config.training.num_train_steps = args.num_train_steps
  config.training.checkpoint_every_steps = args.num_train_steps  # Only the final one.
  config.training.sample_every_steps = 0  # No periodic grids: the bench samples below.
  config.eval.sample_quality_at_end = False
  config.eval.num_batches = args.eval_batches
  return config


def sample_quality(config, ema_params, num_steps: int, num_samples: int,
                   sample_seed: int = 1) -> dict:
  """Digits FD of `num_samples` EMA samples with `num_steps` ancestral steps, and their time."""
  config.sampling.sampler = "ancestral"
  config.sampling.num_steps = None if num_steps == config.diffusion.num_timesteps else num_steps
  model, diffusion_ = experiment.create_model(config), experiment.create_diffusion(config)
  mesh = parallel.make_mesh()
  batch = -(-num_samples // mesh.devices.size) * mesh.devices.size
  sampler = inference.make_sampler(config, model, diffusion_, mesh, batch)
  params = parallel.replicate(ema_params, mesh)
  key = jax.random.fold_in(experiment.base_keys(config)["eval"], sample_seed)
  start = time.time()
  sampler(params, key)  # compilation + one batch
  first_call_s = time.time() - start
  start = time.time()
  images, _ = inference.generate(sampler, params, key, num_samples)
  seconds = time.time() - start
  fd = float(digits_fd.digits_frechet_distance(images.astype(np.float32) / 127.5 - 1.0))
  return {"num_steps": num_steps, "num_samples": num_samples, "digits_fd": fd,
          "seconds": round(seconds, 1), "first_call_seconds": round(first_call_s, 1)}


def tables(results: dict, args: argparse.Namespace) -> str:
  """The two markdown tables of `results`."""
  lines = []
  if any("bpd" in res for res in results.values()):
    lines += [f"Test-set bits/dim (EMA params, {args.num_train_steps} training steps each, "
              "`--mode=eval` loop: all 1000 terms + prior):", "",
              "| model | objective | Sigma | test images | bits/dim | decoder L0 (bpd) | eval s |",
              "|---|---|---|---|---|---|---|"]
    for name, res in results.items():
      bpd = res.get("bpd")
      if bpd:
        lines.append(f"| {name} | {res['loss_type']} | {res['var_type']} | "
                     f"{bpd['num_examples']} | {bpd['total_bpd']:.4f} | "
                     f"{bpd['decoder_bpd']:.4f} | {bpd['seconds']} |")
    lines.append("")
  lines += [f"Sample quality vs sampling steps (digits Frechet distance vs the test split, "
            f"{args.num_samples} samples per row, ancestral sampler, sample seed "
            f"{args.sample_seed}, lower is better):", "",
            "| model | steps | digits FD | sampling s | s per 100 samples | first call s |",
            "|---|---|---|---|---|---|"]
  for name, res in results.items():
    for q in res.get("quality", []):
      lines.append(f"| {name} | {q['num_steps']} | {q['digits_fd']:.2f} | {q['seconds']} | "
                   f"{100 * q['seconds'] / q['num_samples']:.1f} | {q['first_call_seconds']} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir_root", default="/tmp/iddpm_digits",
                      help="Holds one workdir per model (reused when already trained).")
  parser.add_argument("--num_train_steps", type=int, default=2000,
                      help="Training steps of BOTH models (digits.py trains 3000).")
  parser.add_argument("--eval_batches", type=int, default=1,
                      help="Test batches (of 128) of the bits/dim loop; 0 = the whole split.")
  parser.add_argument("--num_samples", type=int, default=250,
                      help="Samples per Frechet-distance row.")
  parser.add_argument("--steps", default="50,100,1000",
                      help="Comma-separated sampling step counts (1000 = the full chain).")
  parser.add_argument("--models", default="L_simple,L_hybrid", help="Subset of the models.")
  parser.add_argument("--sample_seed", type=int, default=1,
                      help="Sampling key = fold_in(eval key, this); vary it to see FD noise.")
  parser.add_argument("--skip_bpd", action="store_true", help="Only the sample-quality table.")
  parser.add_argument("--results_name", default="results",
                      help="Writes <workdir_root>/<results_name>.md and .json.")
  args = parser.parse_args(argv)
  args.eval_batches = args.eval_batches or None
  steps = [int(s) for s in args.steps.split(",")]
  names = [m for m in args.models.split(",") if m]
  os.makedirs(args.workdir_root, exist_ok=True)
  results: dict = {}
  path = os.path.join(args.workdir_root, f"{args.results_name}.json")
  wall = time.time()

  def dump():
    with open(path, "w") as f:
      json.dump({"args": vars(args), "results": results}, f, indent=2)

  states = {}
  for name in names:  # Train (or reuse) both first, so a partial run still pairs the models.
    config = make_config(name, args)
    workdir = os.path.join(args.workdir_root, name)
    start = time.time()
    states[name] = train.train_and_evaluate(config, workdir)
    results[name] = {"workdir": workdir, "loss_type": config.diffusion.loss_type,
                     "var_type": config.diffusion.var_type,
                     "train_call_seconds": round(time.time() - start, 1)}
    print(f"[{name}] trained/restored at step {int(states[name].step)} in "
          f"{results[name]['train_call_seconds']}s", flush=True)
    dump()
  for name in ([] if args.skip_bpd else names):
    bpd = inference.evaluate(make_config(name, args), results[name]["workdir"])
    results[name]["bpd"] = {k: bpd[k] for k in ("total_bpd", "prior_bpd", "decoder_bpd",
                                               "num_examples", "step", "seconds")}
    dump()
  for num_steps in sorted(steps):  # Cheap rows first.
    for name in names:
      q = sample_quality(make_config(name, args), states[name].ema_params, num_steps,
                         args.num_samples, args.sample_seed)
      results[name].setdefault("quality", []).append(q)
      print(f"[{name}] {num_steps} steps: FD {q['digits_fd']:.2f} in {q['seconds']}s", flush=True)
      dump()
  for res in results.values():
    res["quality"] = sorted(res.get("quality", []), key=lambda q: -q["num_steps"])
  text = tables(results, args)
  text += (f"\n\nCommand: python -m bench.iddpm_digits {' '.join(sys.argv[1:])}\n"
           f"Total wall time {time.time() - wall:.0f}s on {jax.device_count()} "
           f"{jax.devices()[0].platform} device(s).")
  dump()
  with open(os.path.join(args.workdir_root, f"{args.results_name}.md"), "w") as f:
    f.write(text + "\n")
  print(text, flush=True)


if __name__ == "__main__":
  main()
