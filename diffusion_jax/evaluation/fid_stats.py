"""Command line: reference statistics (pool3 mean/covariance + P&R features) of real images.

  python -m diffusion_jax.evaluation.fid_stats --source=tfds:cifar10 --split=train \
      --image_size=32 --inception_weights=/path/pt_inception-2015-12-05-6726825d.pth \
      --output=cifar10_train.npz

`--source` is `tfds:<name>` or a folder of images, read like the trainer reads them (center crop
and resize to `--image_size`, the samples' resolution). Every image of the split/folder is
counted (the last partial batch is kept). The output is what `config.eval.reference_stats` points to.
"""
import argparse
import logging
import sys
from typing import Optional, Sequence

from diffusion_jax.evaluation import inception
from diffusion_jax.evaluation import sample_quality


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--source", required=True, help="tfds:<name> or an image folder")
  parser.add_argument("--output", required=True, help="output .npz path")
  parser.add_argument("--inception_weights", required=True, help="local FID Inception weights")
  parser.add_argument("--image_size", type=int, required=True, help="side of the samples, px")
  parser.add_argument("--num_channels", type=int, default=3, help="3 RGB, 1 grey")
  parser.add_argument("--split", default="train", help="TFDS split (DDPM protocol: train)")
  parser.add_argument("--data_dir", default=None, help="TFDS data_dir")
  parser.add_argument("--batch_size", type=int, default=500)
  parser.add_argument("--inception_batch_size", type=int, default=200)
  parser.add_argument("--num_pr_features", type=int, default=10000)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO)
  extractor = inception.InceptionExtractor.from_file(args.inception_weights,
                                                     batch_size=args.inception_batch_size)
  ref = sample_quality.compute_reference_stats(
      args.source, output_path=args.output, image_size=args.image_size,
      num_channels=args.num_channels, extractor=extractor, split=args.split,
      data_dir=args.data_dir, batch_size=args.batch_size, num_pr_features=args.num_pr_features)
  print(f"wrote {args.output}: {ref.metadata['num_images']} images, sha256 {ref.sha256}")


if __name__ == "__main__":
  main(sys.argv[1:])
