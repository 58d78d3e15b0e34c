"""Fréchet distance, precision and recall against closed forms and hand-computed cases."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import MNIST_SHAPE, tiny_config
from vae_jax import classifier
from vae_jax import models
from vae_jax import sample_quality
from vae_jax import steps


def _random_covariance(rng, dim):
  factor = rng.normal(size=(dim, dim))
  return factor @ factor.T / dim + 0.1 * np.eye(dim)


def _two_gaussians(dim=6, seed=0):
  rng = np.random.default_rng(seed)
  mean_a = rng.normal(size=dim)
  mean_b = mean_a + 0.5 * rng.normal(size=dim)
  return mean_a, _random_covariance(rng, dim), mean_b, _random_covariance(rng, dim)


def test_gaussian_frechet_distance_matches_closed_forms():
  # Commuting covariances (shared eigenvectors Q, eigenvalues a, b): the distance is
  # |m1 - m2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
  rng = np.random.default_rng(1)
  rotation, _ = np.linalg.qr(rng.normal(size=(5, 5)))
  eigenvalues_a, eigenvalues_b = rng.uniform(0.1, 3.0, 5), rng.uniform(0.1, 3.0, 5)
  mean_a, mean_b = rng.normal(size=5), rng.normal(size=5)
  expected = (np.sum((mean_a - mean_b) ** 2)
              + np.sum((np.sqrt(eigenvalues_a) - np.sqrt(eigenvalues_b)) ** 2))
  distance = sample_quality.gaussian_frechet_distance(
      mean_a, rotation @ np.diag(eigenvalues_a) @ rotation.T,
      mean_b, rotation @ np.diag(eigenvalues_b) @ rotation.T)
  np.testing.assert_allclose(distance, expected, rtol=1e-6)  # float64 eigh: ~1e-14 apart.

  # Non-commuting covariances: Tr (S1 S2)^{1/2} also equals the sum of the square roots of
  # the (real, positive) eigenvalues of the non-symmetric S1 S2, an independent route.
  mean_a, covariance_a, mean_b, covariance_b = _two_gaussians()
  eigenvalues = np.linalg.eigvals(covariance_a @ covariance_b).real
  expected = (np.sum((mean_a - mean_b) ** 2) + np.trace(covariance_a)
              + np.trace(covariance_b) - 2 * np.sum(np.sqrt(eigenvalues)))
  forward = sample_quality.gaussian_frechet_distance(mean_a, covariance_a, mean_b, covariance_b)
  backward = sample_quality.gaussian_frechet_distance(mean_b, covariance_b, mean_a,
                                                      covariance_a)
  np.testing.assert_allclose(forward, expected, rtol=1e-6)
  np.testing.assert_allclose(backward, expected, rtol=1e-6)
  assert sample_quality.gaussian_frechet_distance(
      mean_a, covariance_a, mean_a, covariance_a) == pytest.approx(0.0, abs=1e-6)
  # A singular covariance (a dead feature) is fine: one dimension of variance 0 vs 4 adds
  # (0 - 2)^2.
  assert sample_quality.gaussian_frechet_distance(
      np.zeros(2), np.diag([1.0, 0.0]), np.zeros(2), np.diag([1.0, 4.0])) == pytest.approx(
          4.0, abs=1e-6)


def test_frechet_distance_of_samples_approaches_the_gaussians_distance():
  mean_a, covariance_a, mean_b, covariance_b = _two_gaussians()
  expected = sample_quality.gaussian_frechet_distance(mean_a, covariance_a, mean_b,
                                                      covariance_b)  # About 3.95.
  rng = np.random.default_rng(2)
  features_a = rng.multivariate_normal(mean_a, covariance_a, 50_000)
  features_b = rng.multivariate_normal(mean_b, covariance_b, 50_000)
  # Over 30 seeds at 50,000 points per set the estimate's error had standard deviation
  # 0.022 and |error| at most 0.046: 0.1 is about 4.5 standard deviations.
  assert sample_quality.frechet_distance(features_a, features_b) == pytest.approx(
      expected, abs=0.1)


def test_frechet_distance_same_distribution_far_below_noise():
  # Stand-in for FD(test, train) << FD(noise, test): two draws from one clustered
  # distribution against uniform noise over the same box.
  rng = np.random.default_rng(3)
  centers = rng.uniform(-3, 3, (10, 16))

  def clustered(num):
    return centers[rng.integers(0, 10, num)] + 0.3 * rng.normal(size=(num, 16))

  data_a, data_b = clustered(2000), clustered(2000)
  noise = rng.uniform(-3, 3, (2000, 16))
  same = sample_quality.frechet_distance(data_a, data_b)
  different = sample_quality.frechet_distance(noise, data_a)
  assert same < 0.02 * different, (same, different)


def _reference_precision_recall(real, generated, k):
  """Brute force in float64, straight from the paper's definitions."""
  def radii(points):
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    return np.sort(distances, axis=1)[:, k]  # Column 0 is the point itself.

  cross = np.linalg.norm(generated[:, None] - real[None], axis=-1)
  precision = np.mean(np.any(cross <= radii(real)[None, :], axis=1))
  recall = np.mean(np.any(cross <= radii(generated)[:, None], axis=0))
  return precision, recall


@pytest.mark.parametrize("k, real, generated, expected", [
    # k = 1: real balls of radius 1 cover [-1, 4]; only 3.4 is inside. 3.4 and 5 are each
    # other's neighbours (radius 1.6, covering [1.8, 6.6]): real 2 and 3 are inside.
    (1, [0, 1, 2, 3], [3.4, 5, 10, 11], (0.25, 0.5)),
    # k = 3: real 3-NN radii 3, 2, 2, 2, 3 cover [-3, 7]; the samples are the real points
    # shifted by 5.5, so their balls cover [2.5, 12.5]. Inside: 5.5, 6.5 and 3, 4.
    (3, [0, 1, 2, 3, 4], [5.5, 6.5, 7.5, 8.5, 9.5], (0.4, 0.4)),
])
def test_precision_recall_by_hand_in_one_dimension(k, real, generated, expected):
  real = np.asarray(real, float)[:, None]
  generated = np.asarray(generated, float)[:, None]
  assert sample_quality.precision_recall(real, generated, k) == expected  # Exact fractions.


def test_precision_recall_identical_sets_overlap_and_far_apart():
  rng = np.random.default_rng(4)
  real = rng.normal(size=(300, 8))
  assert sample_quality.precision_recall(real, real) == (1.0, 1.0)
  base = rng.normal(size=(300, 8))
  shift = np.eye(8)[0]
  near, shifted, far = (sample_quality.precision_recall(real, base + distance * shift)
                        for distance in (0.0, 2.0, 100.0))
  assert min(near) > 0.8, near  # A second draw of the same distribution is mostly inside.
  assert near[0] > shifted[0] > far[0] and near[1] > shifted[1] > far[1], (near, shifted)
  assert far == (0.0, 0.0)


def test_precision_recall_blocks_match_brute_force():
  rng = np.random.default_rng(5)
  real = rng.normal(size=(50, 3))
  generated = 0.8 * rng.normal(size=(33, 3)) + 0.5
  expected = _reference_precision_recall(real, generated, k=3)
  # Continuous random points: no distance lies within float32 rounding of a radius, so the
  # fractions agree exactly; block_size 7 pads the last block of each set.
  for block_size in (7, 1000):
    assert sample_quality.precision_recall(real, generated, 3,
                                           block_size=block_size) == expected


def test_classifier_features_are_the_penultimate_layer():
  model = classifier.Classifier(10)
  params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
  # The cached classifiers' parameter tree: adding `features` must not change it.
  assert sorted(params) == ["Conv_0", "Conv_1", "Dense_0", "Dense_1"]
  images = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
  hidden = classifier.features(params, images)
  assert hidden.shape == (3, classifier.FEATURE_DIM)
  logits = hidden @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]
  np.testing.assert_allclose(logits, model.apply({"params": params}, images),
                             rtol=1e-5, atol=1e-6)  # Float32 rounding of one matmul.


def _test_split(num_per_class=8, num_classes=10):
  rng = np.random.default_rng(6)
  labels = np.repeat(np.arange(num_classes), num_per_class).astype(np.int32)
  images = rng.integers(0, 256, (len(labels), 28, 28, 1)).astype(np.uint8)
  return images, labels


@pytest.mark.parametrize("conditional", [False, True])
def test_evaluate_sample_quality_end_to_end(conditional):
  config = tiny_config()
  config.model.conditional = conditional
  model = models.get_model(config.model, MNIST_SHAPE)
  params = steps.create_train_state(model, config, jax.random.key(0)).params
  classifier_params = classifier.Classifier(10).init(
      jax.random.key(1), jnp.zeros((1, 28, 28, 1)))["params"]
  images, labels = _test_split()

  def evaluate(rng, **kwargs):
    return sample_quality.evaluate_sample_quality(
        model, params, "bernoulli", classifier.features, classifier_params, images, labels,
        rng, batch_size=32, **kwargs)

  result = evaluate(jax.random.key(2))
  assert json.loads(json.dumps(result)) == result  # JSON-able as it is.
  assert result == evaluate(jax.random.key(2))  # A fixed key gives the same numbers.
  assert result["num_samples"] == result["num_real"] == 80 and result["k"] == 3
  assert result["fd"] >= 0 and 0 <= result["precision"] <= 1 and 0 <= result["recall"] <= 1
  lines = sample_quality.format_sample_quality(result).splitlines()
  assert len(lines) == (2 if conditional else 1) and "FD" in lines[0]
  if not conditional:
    assert "per_class" not in result
    return
  per_class = result["per_class"]
  assert [entry["label"] for entry in per_class] == list(range(10))
  assert all(entry["num_samples"] == entry["num_real"] == 8 for entry in per_class)
  for key in ("fd", "precision", "recall"):
    assert result[f"{key}_class_mean"] == pytest.approx(
        np.mean([entry[key] for entry in per_class]), rel=1e-12)


def test_sample_labels_follow_the_test_class_frequencies():
  test_labels = np.repeat(np.arange(4), [10, 20, 30, 40]).astype(np.int32)
  np.random.default_rng(8).shuffle(test_labels)
  np.testing.assert_array_equal(sample_quality.sample_labels(test_labels, 100),
                                np.sort(test_labels))
  np.testing.assert_array_equal(
      np.bincount(sample_quality.sample_labels(test_labels, 50)), [5, 10, 15, 20])
  counts = np.bincount(sample_quality.sample_labels(test_labels, 37), minlength=4)
  assert counts.sum() == 37 and np.all(np.abs(counts - 37 * np.array([.1, .2, .3, .4])) < 1)


@pytest.mark.slow
def test_real_mnist_test_vs_train_far_below_noise(tmp_path, mnist_manual_dir, tfds_data_dir,
                                                   monkeypatch):
  from vae_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  data_config = tiny_config(manual_dir=mnist_manual_dir, tfds_data_dir=tfds_data_dir).data
  splits = input_pipeline.load_splits(data_config)
  # The classifier learns from the first 3,000 training images (a twentieth of the time
  # of all 55,000); the next 10,000, unseen by it, stand in for "train" below.
  monkeypatch.setattr(input_pipeline, "load_splits", lambda unused_config: dict(
      splits, train=input_pipeline.Split(splits["train"].images[:3_000],
                                         splits["train"].labels[:3_000])))
  _, params, accuracy = classifier.load_or_train(data_config, MNIST_SHAPE, str(tmp_path),
                                                 10)
  assert accuracy > 0.9  # Measured 0.939 from 3,000 images (0.990 from all 55,000).
  features_jit = jax.jit(classifier.features)

  def features_of(images_uint8):
    return np.concatenate([np.asarray(features_jit(params, images_uint8[i:i + 1000] / 255.0))
                           for i in range(0, len(images_uint8), 1000)])

  test = features_of(splits["test"].images)
  train = features_of(splits["train"].images[3_000:3_000 + len(test)])
  noise = features_of(np.random.default_rng(7).integers(0, 256, (len(test), 28, 28, 1)))
  same, different = (sample_quality.frechet_distance(test, other) for other in (train, noise))
  # Measured: 0.36 vs 534 (1.10 vs 742 with the classifier of all 55,000 training images).
  assert same < 0.01 * different, (same, different)
  precision, recall = sample_quality.precision_recall(test, train)
  noise_precision, noise_recall = sample_quality.precision_recall(test, noise)
  # Measured: train 0.896, 0.912; noise 0.004, 0 (0.105, 0 with the full classifier: a few
  # real outliers with wide k-NN balls reach the noise, k-NN precision's known weakness).
  assert precision > 0.8 and recall > 0.8, (precision, recall)
  assert noise_precision < 0.3 and noise_recall < 0.01, (noise_precision, noise_recall)
