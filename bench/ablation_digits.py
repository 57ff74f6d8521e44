"""DDPM Table 2 on the 8x8 digits: what the network predicts x the objective x the reverse variance.

  python -m bench.ablation_digits --workdir_root=/tmp/ablation_digits

Trains one model per row of the paper's Table 2 with `main.py` (the same command a user runs),
each for the SAME --num_train_steps on configs/digits.py (U-Net, T = 1000 linear betas, batch,
optimizer, seed and data order identical), then evaluates it with `main.py --mode=eval`:

  mu prediction,  L (true bound),     fixed isotropic Sigma   mean / kl  / fixedlarge
  mu prediction,  L (true bound),     learned diagonal Sigma  mean / kl  / learned
  mu prediction,  ||mu~ - mu||^2,     fixed isotropic Sigma   mean / mse / fixedlarge
  eps prediction, L (true bound),     fixed isotropic Sigma   eps  / kl  / fixedlarge
  eps prediction, L (true bound),     learned diagonal Sigma  eps  / kl  / learned
  eps prediction, ||eps~ - eps||^2 (L_simple), fixed Sigma    eps  / mse / fixedlarge

"L" is `loss_type="kl"`: one uniformly drawn term of the variational bound per example (an
unbiased estimate of L / T; Adam makes the constant factor irrelevant). "Fixed isotropic" is
sigma_t^2 = beta_t (DDPM's CIFAR-10 choice); "learned diagonal" is the network's own
log-variance (`var_type="learned"`, not Improved DDPM's interpolation).

Reported per row: the digits Frechet distance and the digits "Inception Score" (the IS formula
on the fixed digits classifier's logits) of --num_samples ancestral samples (--sample_steps:
1000 = the full chain; fewer = the respaced chain of Improved DDPM Sec. 4, whose fixed
variances are recomputed for the longer steps while a learned variance is used as the network
outputs it, as in the reference code), test bits/dim of the first --eval_batches x
--eval_batch_size test images (all 1000 terms + prior, the `--mode=eval` loop), and the training
time per step (median of the logged steps/s after the first log, so compilation is excluded).
A row whose training stops on a non-finite loss is reported as diverged.
Rows already trained and evaluated under --workdir_root are reused, so the script resumes.
Writes <workdir_root>/results.json and results.md (the table and every command).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (what the network predicts, objective, Sigma) and the config overrides.
ROWS = {
    "mu_bound_fixed": (("mu", "L (true bound)", "fixed isotropic"),
                       dict(mean_type="mean", loss_type="kl", var_type="fixedlarge")),
    "mu_bound_learned": (("mu", "L (true bound)", "learned diagonal"),
                         dict(mean_type="mean", loss_type="kl", var_type="learned")),
    "mu_mse_fixed": (("mu", "unweighted MSE ||mu~ - mu||^2", "fixed isotropic"),
                     dict(mean_type="mean", loss_type="mse", var_type="fixedlarge")),
    "eps_bound_fixed": (("eps", "L (true bound)", "fixed isotropic"),
                        dict(mean_type="eps", loss_type="kl", var_type="fixedlarge")),
    "eps_bound_learned": (("eps", "L (true bound)", "learned diagonal"),
                          dict(mean_type="eps", loss_type="kl", var_type="learned")),
    "eps_simple_fixed": (("eps", "L_simple ||eps~ - eps||^2", "fixed isotropic"),
                         dict(mean_type="eps", loss_type="mse", var_type="fixedlarge")),
}


def flags_of(name: str, args: argparse.Namespace) -> list[str]:
  """The main.py flags of row `name` (the same for training and evaluation)."""
  _, overrides = ROWS[name]
  steps = args.num_train_steps
  fields = {f"diffusion.{k}": v for k, v in overrides.items()}
  fields.update({
      "training.num_train_steps": steps, "training.checkpoint_every_steps": steps,
      "training.sample_every_steps": 0, "eval.sample_quality_at_end": False,
      "sampling.sampler": "ancestral", "eval.num_batches": args.eval_batches,
      "eval.batch_size": args.eval_batch_size,
      "eval.num_quality_samples": args.num_samples, "eval.quality_batch_size": args.num_samples,
      "eval.save_samples": False})
  if args.sample_steps != 1000:
    fields["sampling.num_steps"] = args.sample_steps
  return ["--config=configs/digits.py", f"--workdir={os.path.join(args.workdir_root, name)}"] + [
      f"--config.{k}={v}" for k, v in fields.items()]


def run(cmd: list[str], log_path: str) -> tuple[int, float]:
  """Runs a command from the repository root, appending its output to log_path."""
  start = time.time()
  with open(log_path, "a") as log:
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    code = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
  return code, time.time() - start


def seconds_per_step(workdir: str) -> float | None:
  """Median seconds per training step from the logged steps_per_sec (the first log excluded)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (reads the TensorBoard events)
  rates = []
  for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == "steps_per_sec":
          rates.append((event.step, float(tf.make_ndarray(value.tensor)) if value.HasField("tensor")
                        else value.simple_value))
  rates = [r for _, r in sorted(rates)][1:]
  return float(1.0 / np.median(rates)) if rates else None


def evaluate_row(name: str, args: argparse.Namespace) -> dict:
  """Trains and evaluates one row (reusing what its workdir already holds)."""
  workdir = os.path.join(args.workdir_root, name)
  os.makedirs(workdir, exist_ok=True)
  log_path = os.path.join(workdir, "bench.log")
  flags = flags_of(name, args)
  base = [sys.executable, "main.py"]
  result = {"flags": flags, "train_command": " ".join(["python", "main.py"] + flags),
            "eval_command": " ".join(["python", "main.py"] + flags + ["--mode=eval"])}
  step = args.num_train_steps
  if not os.path.exists(os.path.join(workdir, "checkpoints", str(step))):
    code, seconds = run(base + flags, log_path)
    result["train_seconds"] = round(seconds, 1)
    if code != 0:
      with open(log_path) as f:
        tail = f.read()[-2000:]
      result["diverged"] = "non-finite" in tail.lower() or "nan" in tail.lower()
      result["error"] = tail.strip().splitlines()[-1] if tail.strip() else f"exit {code}"
      return result
  result["seconds_per_step"] = seconds_per_step(workdir)
  bpd_path = os.path.join(workdir, "eval", f"bpd_{step}.json")
  fd_paths = lambda: glob.glob(os.path.join(workdir, "eval", f"digits_{step}*.json"))
  if not (os.path.exists(bpd_path) and fd_paths()):
    code, seconds = run(base + flags + ["--mode=eval"], log_path)
    result["eval_seconds"] = round(seconds, 1)
    if code != 0:
      result["error"] = f"--mode=eval exited {code}; see {log_path}"
      return result
  [fd_path] = fd_paths()  # one sampler setting per row
  with open(bpd_path) as f:
    bpd = json.load(f)
  with open(fd_path) as f:
    quality = json.load(f)
  result.update(total_bpd=bpd["total_bpd"], decoder_bpd=bpd["decoder_bpd"],
                bpd_images=bpd["num_examples"], digits_fd=quality.get("digits_fd"),
                digits_is=quality.get("digits_is"))
  return result


def table(results: dict, args: argparse.Namespace) -> str:
  lines = ["| prediction | objective | Sigma | digits IS | digits FD | test bits/dim | s / step |",
           "|---|---|---|---|---|---|---|"]
  for name, res in results.items():
    (pred, objective, sigma), _ = ROWS[name]
    if "error" in res:
      cells = ["diverged" if res.get("diverged") else "failed"] + ["-"] * 2
    else:
      cells = [f"{res['digits_is']:.2f}", f"{res['digits_fd']:.2f}", f"{res['total_bpd']:.3f}"]
    per_step = res.get("seconds_per_step")
    cells.append(f"{per_step:.3f}" if per_step else "-")
    lines.append(f"| {pred} | {objective} | {sigma} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir_root", default="/tmp/ablation_digits")
  parser.add_argument("--num_train_steps", type=int, default=1500)
  parser.add_argument("--num_samples", type=int, default=500, help="Samples per row for the FD.")
  parser.add_argument("--sample_steps", type=int, default=100,
                      help="Ancestral sampling steps (1000 = the full chain).")
  parser.add_argument("--eval_batches", type=int, default=1, help="Test batches for bits/dim.")
  parser.add_argument("--eval_batch_size", type=int, default=64, help="Images per test batch.")
  parser.add_argument("--rows", default=",".join(ROWS), help="Subset of the rows, in this order.")
  args = parser.parse_args(argv)
  os.makedirs(args.workdir_root, exist_ok=True)
  results = {}
  for name in args.rows.split(","):
    start = time.time()
    results[name] = evaluate_row(name, args)
    shown = {k: v for k, v in results[name].items() if "command" not in k and k != "flags"}
    print(f"[{name}] {json.dumps(shown)} ({time.time() - start:.0f}s)", flush=True)
    with open(os.path.join(args.workdir_root, "results.json"), "w") as f:
      json.dump({"args": vars(args), "results": results}, f, indent=2)
  text = (f"{args.num_train_steps} training steps per row (configs/digits.py); digits IS / FD of "
          f"{args.num_samples} EMA samples, {args.sample_steps} ancestral steps; bits/dim of "
          f"{args.eval_batches * args.eval_batch_size} test images (all 1000 terms + prior).\n\n")
  text += table({k: results[k] for k in ROWS if k in results}, args)
  text += "\n\nCommands (from the repository root):\n\n" + "\n".join(
      f"    {res['train_command']}\n    {res['eval_command']}" for res in results.values())
  with open(os.path.join(args.workdir_root, "results.md"), "w") as f:
    f.write(text + "\n")
  print(text, flush=True)


if __name__ == "__main__":
  main()
