"""Data: the real TFDS path from the offline files, splits, shuffling, binarization, bad data."""

import os
import shutil
import socket
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import data_config
from vae_jax import input_pipeline


@pytest.mark.slow
def test_mnist_splits_match_the_published_counts_and_means(mnist_manual_dir, tfds_data_dir,
                                                           monkeypatch):
  splits = input_pipeline.load_splits(data_config("mnist", mnist_manual_dir, tfds_data_dir))
  assert {k: v.num_examples for k, v in splits.items()} == {
      "train": 55000, "validation": 5000, "test": 10000}
  assert splits["train"].images.dtype == np.uint8
  assert splits["train"].images.shape[1:] == (28, 28, 1)
  # Published in shared/data/README.md (independent of TFDS): label counts and pixel means.
  np.testing.assert_array_equal(np.bincount(splits["test"].labels),
                                [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
  all_train = np.concatenate([splits["train"].images, splits["validation"].images])
  np.testing.assert_allclose(all_train.mean(), 33.318, atol=5e-4)
  np.testing.assert_allclose(splits["test"].images.mean(), 33.791, atol=5e-4)
  # A second load_splits returns the process's arrays.
  assert input_pipeline.load_splits(
      data_config("mnist", mnist_manual_dir, tfds_data_dir)) is splits
  # A new process reads the decoded arrays the first read cached, bit for bit, and the
  # carved validation split is TFDS's own slice of the training split.
  cache = os.path.join(tfds_data_dir, "mnist", "3.0.1", input_pipeline.DECODED_ARRAYS_FILE)
  assert os.path.isfile(cache)
  again = input_pipeline._load_splits(  # pylint: disable=protected-access
      data_config("mnist", mnist_manual_dir, tfds_data_dir))
  for name, split in splits.items():
    np.testing.assert_array_equal(again[name].images, split.images)
    np.testing.assert_array_equal(again[name].labels, split.labels)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds_slice = tfds.as_numpy(tfds.load("mnist", split="train[55000:]", data_dir=tfds_data_dir,
                                       batch_size=-1, download=False))
  np.testing.assert_array_equal(again["validation"].images, tfds_slice["image"])
  np.testing.assert_array_equal(again["validation"].labels, tfds_slice["label"])
  # A damaged cache is read from TFDS again, with a warning, and rewritten.
  size = os.path.getsize(cache)
  with open(cache, "r+b") as f:
    f.truncate(size // 2)
  warnings = []
  monkeypatch.setattr(input_pipeline.logging, "warning",
                      lambda fmt, *args: warnings.append(fmt % args))
  repaired = input_pipeline._load_splits(  # pylint: disable=protected-access
      data_config("mnist", mnist_manual_dir, tfds_data_dir))
  np.testing.assert_array_equal(repaired["train"].images, splits["train"].images)
  assert len(warnings) == 1 and "does not load" in warnings[0], warnings
  assert os.path.getsize(cache) == size


@pytest.mark.slow
def test_fashion_mnist_loads(mnist_manual_dir, prepared_datasets):
  splits = input_pipeline.load_splits(
      data_config("fashion_mnist", mnist_manual_dir, prepared_datasets))
  np.testing.assert_array_equal(np.bincount(splits["test"].labels), [1000] * 10)
  all_train = np.concatenate([splits["train"].images, splits["validation"].images])
  np.testing.assert_allclose(all_train.mean(), 72.940, atol=5e-4)


@pytest.mark.slow
def test_binarized_mnist_uses_its_own_splits(mnist_manual_dir, prepared_datasets):
  splits = input_pipeline.load_splits(
      data_config("binarized_mnist", mnist_manual_dir, prepared_datasets))
  assert {k: v.num_examples for k, v in splits.items()} == {
      "train": 50000, "validation": 10000, "test": 10000}
  assert splits["train"].labels is None
  assert set(np.unique(splits["test"].images)) == {0, 255}
  # Fractions of ones published in shared/data/README.md.
  np.testing.assert_allclose((splits["train"].images > 0).mean(), 0.13056, atol=5e-6)
  np.testing.assert_allclose((splits["test"].images > 0).mean(), 0.13251, atol=5e-6)


def test_epoch_batch_indices_are_a_fresh_permutation_each_epoch():
  rng = jax.random.key(0)
  epoch0 = np.asarray(input_pipeline.epoch_batch_indices(rng, 0, 103, 10))
  assert epoch0.shape == (10, 10)
  assert len(np.unique(epoch0)) == 100 and epoch0.min() >= 0 and epoch0.max() < 103
  epoch1 = np.asarray(input_pipeline.epoch_batch_indices(rng, 1, 103, 10))
  assert not np.array_equal(epoch0, epoch1)
  np.testing.assert_array_equal(epoch0, input_pipeline.epoch_batch_indices(rng, 0, 103, 10))


def test_dynamic_binarization_samples_bernoulli_with_the_pixel_intensity():
  image = jnp.full((200, 28, 28, 1), 64, jnp.uint8)  # p = 64/255.
  sample = np.asarray(input_pipeline.to_model_input(image, "dynamic", jax.random.key(0)))
  assert set(np.unique(sample)) == {0.0, 1.0}
  p, n = 64 / 255, sample.size
  assert abs(sample.mean() - p) < 4 * np.sqrt(p * (1 - p) / n)
  other = np.asarray(input_pipeline.to_model_input(image, "dynamic", jax.random.key(1)))
  assert not np.array_equal(sample, other)
  grayscale = input_pipeline.to_model_input(image, "none", jax.random.key(0))
  np.testing.assert_allclose(np.asarray(grayscale), 64 / 255, rtol=1e-6)


def test_missing_files_fail_fast_naming_the_files_and_the_variable(tmp_path):
  (tmp_path / "manual" / "mnist").mkdir(parents=True)
  start = time.time()
  with pytest.raises(input_pipeline.DataError) as error:
    input_pipeline.load_splits(data_config("mnist", str(tmp_path / "manual"),
                                            str(tmp_path / "tfds")))
  assert time.time() - start < 30
  message = str(error.value)
  assert "train-images-idx3-ubyte.gz" in message and "VAE_JAX_MANUAL_DIR" in message


def test_offline_without_manual_dir_fails_fast(tmp_path, monkeypatch):
  monkeypatch.delenv("VAE_JAX_MANUAL_DIR", raising=False)

  def unreachable(*args, **kwargs):
    raise OSError("Network is unreachable")

  monkeypatch.setattr(socket, "create_connection", unreachable)
  start = time.time()
  with pytest.raises(input_pipeline.DataError, match="VAE_JAX_MANUAL_DIR"):
    input_pipeline.load_splits(data_config("mnist", "", str(tmp_path / "tfds")))
  assert time.time() - start < 30


@pytest.mark.slow
def test_corrupt_file_is_reported_as_corrupt(tmp_path, mnist_manual_dir):
  manual = tmp_path / "manual" / "mnist"
  shutil.copytree(os.path.join(mnist_manual_dir, "mnist"), manual)
  corrupt = manual / "t10k-labels-idx1-ubyte.gz"
  os.chmod(corrupt, 0o644)
  data = bytearray(corrupt.read_bytes())
  data[100] ^= 0xFF
  corrupt.write_bytes(bytes(data))
  with pytest.raises(input_pipeline.DataError, match="corrupt") as error:
    input_pipeline.load_splits(data_config("mnist", str(tmp_path / "manual"),
                                            str(tmp_path / "tfds")))
  assert "t10k-labels-idx1-ubyte.gz" in str(error.value)
