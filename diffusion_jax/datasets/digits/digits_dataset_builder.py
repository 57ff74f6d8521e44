"""TFDS builder "digits": scikit-learn's bundled 8x8 handwritten digits, the embedded default.

Builds offline into any data_dir (the data ship with scikit-learn; nothing is downloaded):

  import diffusion_jax.datasets  # registers "digits"
  builder = tfds.builder("digits", data_dir="/tmp/tfds")
  builder.download_and_prepare()
  ds = builder.as_dataset(split="train")

Features: {"image": uint8 [8, 8, 1], "label": ClassLabel(10)}. Splits: train 1442, test 355,
fixed and stratified (see `digits_arrays` for the exact pixel and split rules). Example keys are
the indices in sklearn's `load_digits()` order; a split read without shuffling comes
in that order.
"""
from __future__ import annotations

import tensorflow_datasets as tfds

from diffusion_jax.datasets.digits import digits_arrays

_DESCRIPTION = """\
The 1797 8x8 grey-level images of handwritten digits bundled with scikit-learn
(sklearn.datasets.load_digits; a copy of the UCI "Optical Recognition of Handwritten Digits"
test set). Grey levels 0..16 are stored as uint8 floor(v * 255 / 16 + 0.5). Within each class,
every 5th example in sklearn's order is "test" (355), the rest "train" (1442).
"""

_CITATION = """\
@misc{alpaydin1998optdigits,
  author = {Alpaydin, E. and Kaynak, C.},
  title = {Optical Recognition of Handwritten Digits},
  year = {1998},
  howpublished = {UCI Machine Learning Repository},
}
"""


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 digits as a TFDS dataset (registered as "digits")."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: 8x8x1 uint8, fixed stratified train/test split."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1)),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
        citation=_CITATION,
        # Keep the example order of the generator (sklearn order) on disk: reading a split
        # without shuffling gives the order of `digits_arrays.load_split`.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download: the data ship with scikit-learn.
    return {split: self._generate_examples(split) for split in digits_arrays.SPLITS}

  def _generate_examples(self, split: str):
    images, labels = digits_arrays.load_split(split)
    for index, image, label in zip(digits_arrays.split_indices(split), images, labels):
      yield int(index), {"image": image, "label": int(label)}
