"""Guidance on the digits: the fixed digits classifier's accuracy and the digits Frechet distance
of guided samples against the guidance scale, for classifier and classifier-free guidance.

  python main.py --config=configs/digits_cond.py --workdir=/tmp/digits_cond
  python main.py --config=configs/digits_classifier.py --workdir=/tmp/digits_cond --mode=train_classifier
  python -m bench.guidance_digits --workdir=/tmp/digits_cond

For each kind and scale it draws --num_samples samples with uniformly drawn classes (the
config's sampler: 50 DDIM steps, so classifier guidance takes Algorithm 2's eps form) from the
EMA model and reports: accuracy = fraction whose class under the FIXED digits classifier of
`diffusion_jax.evaluation.digits_fd` (test accuracy 98.0%, not the guidance classifier) is the
requested one; FD = the digits Frechet distance against the test split (lower is better; 1000
real training digits score about 3-4). Classifier scale 0 and classifier-free w = 1 are both
plain conditional sampling; w = 0 is the same network with the null label (unconditional).
It also writes the figure: rows = classes 0-9, columns = scales, classifier guidance on the
left and classifier-free on the right, each column from the same x_T.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

from configs import digits_classifier
from diffusion_jax import experiment, inference, parallel, utils
from diffusion_jax.evaluation import digits_fd


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--classifier_scales", default="0,1,2,4,8")
  parser.add_argument("--free_scales", default="0,1,2,3,5")
  parser.add_argument("--num_samples", type=int, default=1000)
  parser.add_argument("--figure", default="docs/figures/guidance_digits.png")
  args = parser.parse_args()
  config = digits_classifier.get_config()
  model, diffusion_, params, step = inference.restore(config, args.workdir, None)
  mesh = parallel.make_mesh()
  key = experiment.base_keys(config)["sample"]
  rows, grids = [], []
  for kind, scales in (("classifier", args.classifier_scales), ("classifier_free", args.free_scales)):
    scales = [float(s) for s in scales.split(",")]
    config.sampling.guidance.kind = kind
    config.sampling.guidance.grid_scales = tuple(scales)
    guidance_ = inference.load_guidance(config, args.workdir)
    guided_params = inference.sampler_params(params, guidance_, mesh)
    grids.append(inference.guidance_grid(config, model, diffusion_, mesh, guided_params, guidance_,
                                         jax.random.fold_in(key, 2)))
    for scale in scales:
      config.sampling.guidance.scale = scale
      start = time.time()
      sampler = inference.make_sampler(config, model, diffusion_, mesh, config.sampling.batch_size,
                                       guidance_=guidance_)
      images, labels = inference.generate(sampler, guided_params, jax.random.fold_in(key, 1),
                                          args.num_samples)
      x = images.astype(np.float32) / 127.5 - 1.0
      logits, _ = digits_fd.digits_logits_and_features(x)
      accuracy = float(np.mean(logits.argmax(-1) == labels))
      fd = digits_fd.digits_frechet_distance(x)
      rows.append((kind, scale, accuracy, fd))
      print(f"# {kind} scale {scale:g}: accuracy {accuracy:.3f}, FD {fd:.3f} ({time.time() - start:.0f} s)",
            flush=True)
  print(f"\nstep {step}, {args.num_samples} samples per row, sampler {config.sampling.sampler} "
        f"{config.sampling.num_steps} steps\n")
  print("| guidance | scale | digits-classifier accuracy | digits FD |")
  print("|---|---|---|---|")
  for kind, scale, accuracy, fd in rows:
    print(f"| {kind} | {scale:g} | {accuracy:.3f} | {fd:.2f} |")
  # The figure: the two grids side by side, a blank column between them.
  left, right = grids
  gap = np.full((left.shape[0], 1) + left.shape[2:], 255, np.uint8)
  both = np.concatenate([left, gap, right], axis=1)
  os.makedirs(os.path.dirname(args.figure) or ".", exist_ok=True)
  utils.save_png(args.figure, utils.make_grid(both.reshape((-1,) + both.shape[2:]), num_cols=both.shape[1],
                                              scale=utils.grid_scale(both.shape[2])))
  print(f"\nfigure: {args.figure}")


if __name__ == "__main__":
  main()
