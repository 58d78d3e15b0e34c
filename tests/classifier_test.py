"""The label classifier learns, caches itself, and scores conditional samples correctly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import MNIST_SHAPE, tiny_config
from vae_jax import classifier
from vae_jax import evaluate
from vae_jax import input_pipeline
from vae_jax import models
from vae_jax import steps


def _quadrant_splits(num=640):
  """Class c in {0..3}: quadrant c of the image is bright, plus noise."""
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, num).astype(np.int32)
  images = rng.integers(0, 60, (num, 28, 28, 1))
  for index, label in enumerate(labels):
    row, column = divmod(int(label), 2)
    images[index, 14 * row:14 * row + 14, 14 * column:14 * column + 14] += 180
  split = input_pipeline.Split(images.astype(np.uint8), labels)
  return {"train": split, "validation": split, "test": split}


@pytest.mark.slow
def test_classifier_learns_and_is_cached(tmp_path, monkeypatch):
  monkeypatch.setattr(input_pipeline, "load_splits", lambda data_config: _quadrant_splits())
  data_config = tiny_config().data
  _, params, accuracy = classifier.load_or_train(data_config, MNIST_SHAPE, str(tmp_path),
                                                 num_classes=4)
  assert accuracy >= 0.95

  def no_data(data_config):
    raise AssertionError("the cached classifier should not load data")

  monkeypatch.setattr(input_pipeline, "load_splits", no_data)
  classify, cached_params, cached_accuracy = classifier.load_or_train(
      data_config, MNIST_SHAPE, str(tmp_path), num_classes=4)
  assert cached_accuracy == accuracy
  jax.tree.map(np.testing.assert_array_equal, cached_params, params)
  logits = classify(cached_params, jnp.zeros((2, 28, 28, 1)))
  assert logits.shape == (2, 4)


@pytest.mark.parametrize("always", [0, 3])
def test_label_fidelity_counts_the_samples_classified_as_their_label(always):
  config = tiny_config()
  config.model.conditional = True
  model = models.get_model(config.model, MNIST_SHAPE)
  params = steps.create_train_state(model, config, jax.random.key(0)).params

  def classify(unused_params, images):  # Says `always` whatever it sees.
    return jnp.broadcast_to(jax.nn.one_hot(always, 10), images.shape[:1] + (10,))

  per_class = np.asarray(evaluate.label_fidelity(
      model, params, classify, None, jax.random.key(1), likelihood="bernoulli",
      samples_per_class=7))
  np.testing.assert_array_equal(per_class, np.eye(10)[always])
