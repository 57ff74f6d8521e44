"""First use of a TFDS data set prepares it (`data.download`), offline, with a mocked download.

A toy TFDS builder defined here fetches one file in `_split_generators`; the download manager's
`download` is replaced by a copy from the test's own directory, so the real
`download_and_prepare` path runs without network.
"""

import os

from etils import epath
import numpy as np
import pytest
import tensorflow_datasets as tfds

from diffusion_jax import errors, input_pipeline

URL = "https://example.invalid/toy_remote.npz"


class ToyRemote(tfds.core.GeneratorBasedBuilder):
  """12 8x8 grey images with labels, fetched from URL."""
  VERSION = tfds.core.Version("1.0.0")
  pkg_dir_path = epath.Path(os.path.dirname(os.path.abspath(__file__)))  # not in a package

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(8, 8, 1)),
        "label": tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    path = dl_manager.download(URL)
    return {"train": self._generate_examples(path, slice(0, 8)),
            "test": self._generate_examples(path, slice(8, 12))}

  def _generate_examples(self, path, rows):
    with open(path, "rb") as f:
      data = np.load(f)
      images, labels = data["images"][rows], data["labels"][rows]
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image, "label": int(label)}


def _data(tmp_path, download=True):
  return {"dataset": "toy_remote", "data_dir": str(tmp_path / "tfds"), "image_size": 8,
          "num_channels": 1, "download": download}


@pytest.fixture()
def served(tmp_path, monkeypatch):
  """The mocked network: DownloadManager.download returns a local copy of URL."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (12, 8, 8, 1), dtype=np.uint8)
  labels = rng.integers(0, 3, 12)
  source = tmp_path / "served.npz"
  np.savez(source, images=images, labels=labels)
  calls = []

  def download(self, url):
    calls.append(url)
    return str(source)

  monkeypatch.setattr(tfds.download.DownloadManager, "download", download)
  monkeypatch.setattr(input_pipeline, "_network_problem", lambda: None)
  return images, labels, calls


def test_first_use_downloads_and_prepares_once(tmp_path, served):
  images, labels, calls = served
  got, got_labels = input_pipeline.load_split(_data(tmp_path), "train")
  # The served train examples, in TFDS's (shuffled) order.
  expected = sorted((x.tobytes(), int(y)) for x, y in zip(images[:8], labels[:8]))
  assert sorted((x.tobytes(), int(y)) for x, y in zip(got, got_labels)) == expected
  assert calls == [URL]
  assert tfds.builder("toy_remote", data_dir=str(tmp_path / "tfds")).is_prepared()
  batches = list(input_pipeline.create_eval_iterator(_data(tmp_path), local_batch_shape=(1, 4)))
  assert sum(int(b["mask"].sum()) for b in batches) == 4  # the test split
  assert calls == [URL]  # prepared once, read from disk afterwards


def test_download_false_never_downloads(tmp_path, served):
  _, _, calls = served
  with pytest.raises(errors.MissingFileError) as e:
    input_pipeline.load_split(_data(tmp_path, download=False), "train")
  assert "data.download=False" in str(e.value) and "tfds build toy_remote" in str(e.value)
  assert calls == []


def test_no_network_fails_fast_with_the_way_out(tmp_path, monkeypatch):
  monkeypatch.setattr(input_pipeline, "_network_problem", lambda: "example.org cannot be reached")
  with pytest.raises(errors.MissingFileError) as e:
    input_pipeline.load_split(_data(tmp_path), "train")
  message = str(e.value)
  assert "example.org cannot be reached" in message and "tfds build toy_remote" in message
  assert "`data.data_dir`" in message


def test_a_failing_download_is_reported(tmp_path, monkeypatch):
  def refuse(self, url):
    raise ConnectionError(f"refused: {url}")

  monkeypatch.setattr(tfds.download.DownloadManager, "download", refuse)
  monkeypatch.setattr(input_pipeline, "_network_problem", lambda: None)
  with pytest.raises(errors.MissingFileError, match="download_and_prepare failed: .*refused"):
    input_pipeline.load_split(_data(tmp_path), "train")
