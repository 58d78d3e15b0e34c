"""How good the samples are: Fréchet distance, precision and recall in classifier features.

Samples from the prior, mean images E[x|z(, y)] of prior samples z as
visualize.decode_prior_samples makes them (z ~ N(0, I); for two stochastic layers the
ancestral z2 ~ N(0, I), z1 ~ p(z1|z2)), and the test images are both mapped to the
penultimate layer of the project's own classifier (vae_jax/classifier.py,
`classifier.features`). In that space:

- the Fréchet distance (FD) between Gaussians fitted to the two sets, as FID does with
  Inception features: |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}); lower is better. It is
  biased upwards by the finite number of points, so it is only comparable between results
  with the same numbers of samples and test images (reported beside it);
- improved precision and recall (Kynkäänniemi et al., 2019): each set's manifold is the
  union of balls around its points, each ball reaching the point's k-th nearest neighbour
  in its own set. Precision is the fraction of samples inside the test images' manifold
  (are the samples realistic?), recall the fraction of test images inside the samples'
  manifold (do the samples cover the data?).

A conditional model is scored on all classes together (samples with labels distributed as
the test set's) and per class y (samples of class y against test images of class y).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import visualize

_BLOCK_SIZE = 1000  # Rows of a pairwise-distance block: 1000 x 10000 float32 is 40 MB.


def gaussian_frechet_distance(mean_a, covariance_a, mean_b, covariance_b) -> float:
  """The Fréchet distance (squared 2-Wasserstein) between two Gaussians, in float64."""
  mean_a, mean_b = np.asarray(mean_a, np.float64), np.asarray(mean_b, np.float64)
  covariance_a = np.asarray(covariance_a, np.float64)
  covariance_b = np.asarray(covariance_b, np.float64)
  # Tr (S_a S_b)^{1/2} without scipy.linalg.sqrtm: S_a S_b is not symmetric, and a general
  # eigen-decomposition of it can return complex rounding noise. With R = S_a^{1/2}
  # (symmetric PSD, from eigh), S_a S_b = R (R S_b) has the eigenvalues of (R S_b) R =
  # R S_b R (XY and YX share eigenvalues, even for a singular R), which is symmetric PSD:
  # eigvalsh gives them stably, real and >= 0, and the trace of the principal square root
  # is the sum of their square roots. Eigenvalues a rounding error below zero are clipped.
  eigenvalues, eigenvectors = np.linalg.eigh(covariance_a)
  root_a = (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T
  product = root_a @ covariance_b @ root_a
  product = (product + product.T) / 2  # Symmetric up to rounding; eigvalsh reads one half.
  trace_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(product), 0.0, None)))
  distance = (np.sum((mean_a - mean_b) ** 2) + np.trace(covariance_a)
              + np.trace(covariance_b) - 2 * trace_sqrt)
  return float(max(distance, 0.0))  # Only rounding makes it negative.


def frechet_distance(features_a, features_b) -> float:
  """FD between Gaussians fitted (mean, unbiased covariance) to two sets of (N, D) features."""
  features_a = np.asarray(features_a, np.float64)
  features_b = np.asarray(features_b, np.float64)
  for features in (features_a, features_b):
    if features.ndim != 2 or features.shape[0] < 2:
      raise ValueError(f"Need (N >= 2, D) features for a covariance; got {features.shape}.")
  return gaussian_frechet_distance(
      features_a.mean(0), np.cov(features_a, rowvar=False),
      features_b.mean(0), np.cov(features_b, rowvar=False))


def _squared_distances(rows: jax.Array, columns: jax.Array) -> jax.Array:
  # HIGHEST: on GPU and TPU the default matmul precision rounds the inputs to bfloat16.
  cross = jnp.matmul(rows, columns.T, precision=jax.lax.Precision.HIGHEST)
  squared = (jnp.sum(rows ** 2, 1)[:, None] + jnp.sum(columns ** 2, 1)[None, :] - 2 * cross)
  return jnp.maximum(squared, 0.0)


_squared_distances_jit = jax.jit(_squared_distances)


@jax.jit
def _manifold_memberships(rows, row_radii_squared, points, point_radii_squared):
  """(each row inside some point's ball, each point inside some row's ball)."""
  squared = _squared_distances(rows, points)
  rows_inside = jnp.any(squared <= point_radii_squared[None, :], axis=1)
  points_inside = jnp.any(squared <= row_radii_squared[:, None], axis=0)
  return rows_inside, points_inside


def _row_blocks(array: np.ndarray, block_size: int):
  """(block padded to block_size rows, number of real rows): one compiled shape for all."""
  for start in range(0, len(array), block_size):
    block = array[start:start + block_size]
    valid = len(block)
    if valid < block_size:
      block = np.concatenate([block, np.zeros((block_size - valid,) + block.shape[1:],
                                              block.dtype)])
    yield block, valid


def _kth_neighbour_radii_squared(points: np.ndarray, k: int, block_size: int) -> np.ndarray:
  # The (k + 1)-th smallest distance of each row: its smallest is to itself (0), as in the
  # paper's reference code. np.partition, not jax.lax.top_k: on CPU top_k took 2.2 s a
  # 1000 x 10000 block, the distances 0.07 s and partition on the host 0.2 s (with the copy).
  radii = []
  for block, valid in _row_blocks(points, block_size):
    squared = np.asarray(_squared_distances_jit(block, points))[:valid]
    radii.append(np.partition(squared, k, axis=1)[:, k])
  return np.concatenate(radii)


def precision_recall(real, generated, k: int = 3, *,
                     block_size: int = _BLOCK_SIZE) -> tuple[float, float]:
  """Improved precision and recall (Kynkäänniemi et al., 2019) of (N, D), (M, D) features.

  precision: the fraction of generated points within the k-NN radius of some real point;
  recall: the fraction of real points within the k-NN radius of some generated point.
  Balls are closed (distance <= radius). Distances are computed in float32 blocks of
  block_size rows, so 10,000 x 10,000 points need tens of MB.
  """
  real = np.asarray(real, np.float64)
  generated = np.asarray(generated, np.float64)
  for name, points in (("real", real), ("generated", generated)):
    if points.ndim != 2 or points.shape[0] <= k:
      raise ValueError(f"Need (N > k = {k}, D) {name} features; got {points.shape}.")
  # Centring on the real mean keeps |a|^2 + |b|^2 - 2 a.b from cancelling large norms in
  # float32; distances do not change.
  center = real.mean(0)
  real = (real - center).astype(np.float32)
  generated = (generated - center).astype(np.float32)
  block_size = min(block_size, max(len(real), len(generated)))
  real_radii = _kth_neighbour_radii_squared(real, k, block_size)
  generated_radii = _kth_neighbour_radii_squared(generated, k, block_size)
  generated_inside = []
  real_inside = np.zeros(len(real), bool)
  padded_radii = np.concatenate([generated_radii, np.full(block_size, -1.0, np.float32)])
  for index, (block, valid) in enumerate(_row_blocks(generated, block_size)):
    # Padding rows get radius -1: they cover no real point.
    radii = padded_radii[index * block_size:(index + 1) * block_size]
    block_inside, covered = _manifold_memberships(block, radii, real, real_radii)
    generated_inside.append(np.asarray(block_inside)[:valid])
    real_inside |= np.asarray(covered)
  return float(np.mean(np.concatenate(generated_inside))), float(np.mean(real_inside))


def _features_in_batches(function, arrays: tuple, batch_size: int) -> np.ndarray:
  """function(*batch) over the leading axis, padded to batch_size: one compiled shape."""
  num = len(arrays[0])
  outputs = []
  for start in range(0, num, batch_size):
    batch = [array[start:start + batch_size] for array in arrays]
    valid = len(batch[0])
    batch = [np.concatenate([part, np.zeros((batch_size - valid,) + part.shape[1:],
                                            part.dtype)]) for part in batch]
    outputs.append(np.asarray(function(*batch))[:valid])
  return np.concatenate(outputs)


@functools.partial(jax.jit, static_argnames=("features_fn",))
def _image_features(features_fn, features_params, images_uint8):
  return features_fn(features_params, images_uint8.astype(jnp.float32) / 255.0)


@functools.partial(jax.jit, static_argnames=("model", "likelihood", "features_fn"))
def _sample_features(model: nn.Module, params, likelihood: str, features_fn, features_params,
                     noise, labels):
  images = visualize.decode_prior_samples(model, params, noise, labels, likelihood)
  return features_fn(features_params, images)


def sample_labels(test_labels: np.ndarray, num_samples: int) -> np.ndarray:
  """num_samples labels, sorted, whose class counts follow test_labels' (within one)."""
  # Evenly spaced quantiles of the sorted test labels: they sum to num_samples, and at
  # num_samples == len(test_labels) they are the test labels themselves.
  return np.sort(test_labels)[(np.arange(num_samples) * len(test_labels)) // num_samples]


def _scores(real: np.ndarray, generated: np.ndarray, k: int) -> dict:
  precision, recall = precision_recall(real, generated, k)
  return {"fd": frechet_distance(real, generated), "precision": precision, "recall": recall,
          "num_samples": len(generated), "num_real": len(real)}


def evaluate_sample_quality(model: nn.Module, params, likelihood: str, classifier_features_fn,
                            classifier_params, test_images_uint8: np.ndarray,
                            test_labels: np.ndarray | None, rng: jax.Array, *,
                            num_samples: int | None = None, k: int = 3,
                            batch_size: int = 1000) -> dict:
  """FD, precision and recall of prior samples against the test images, JSON-able.

  classifier_features_fn(params, images in [0, 1]) -> (N, D), e.g. classifier.features with
  classifier.load_or_train's params. num_samples (default: as many as test images) samples
  are drawn with `rng`. A conditional model's sample labels follow the test set's class
  frequencies (exactly its labels when num_samples is the default), and it is also scored
  per class: samples of class y against test images of class y, under "per_class", with
  the means over classes as *_class_mean.

  Returns {"fd", "precision", "recall", "num_samples", "num_real", "k"} and, for a
  conditional model, "per_class": [{"label", "fd", ...}, ...], "fd_class_mean",
  "precision_class_mean", "recall_class_mean".
  """
  test_images_uint8 = np.asarray(test_images_uint8)
  num_real = len(test_images_uint8)
  num_samples = num_real if num_samples is None else num_samples
  if model.conditional and test_labels is None:
    raise ValueError("A conditional model is scored per class: the test split needs labels.")
  real = _features_in_batches(
      functools.partial(_image_features, classifier_features_fn, classifier_params),
      (test_images_uint8,), batch_size)
  noise = np.asarray(model.prior_noise(rng, num_samples))
  if model.conditional:
    test_labels = np.asarray(test_labels, np.int32)
    labels = sample_labels(test_labels, num_samples)
    generated = _features_in_batches(
        functools.partial(_sample_features, model, params, likelihood,
                          classifier_features_fn, classifier_params), (noise, labels),
        batch_size)
  else:
    labels = None
    generated = _features_in_batches(
        lambda noise_batch: _sample_features(model, params, likelihood, classifier_features_fn,
                                             classifier_params, noise_batch, None),
        (noise,), batch_size)
  result = dict(_scores(real, generated, k), k=k)
  if model.conditional:
    per_class = []
    for label in range(model.num_classes):
      class_real, class_generated = real[test_labels == label], generated[labels == label]
      if min(len(class_real), len(class_generated)) <= k:
        raise ValueError(f"Class {label} has {len(class_real)} test images and "
                         f"{len(class_generated)} samples; scoring it needs more than "
                         f"k = {k} of each.")
      per_class.append(dict(_scores(class_real, class_generated, k), label=label))
    result["per_class"] = per_class
    for key in ("fd", "precision", "recall"):
      result[f"{key}_class_mean"] = float(np.mean([entry[key] for entry in per_class]))
  return result


def format_sample_quality(result: dict) -> str:
  """One line, two for a conditional model (the per-class means)."""
  lines = [f"samples vs test images in classifier features: FD {result['fd']:.2f}, "
           f"precision {result['precision']:.3f}, recall {result['recall']:.3f} "
           f"(k = {result['k']}; {result['num_samples']} samples, {result['num_real']} "
           f"test images)"]
  if "per_class" in result:
    lines.append(f"per class, mean over {len(result['per_class'])} classes: FD "
                 f"{result['fd_class_mean']:.2f}, precision "
                 f"{result['precision_class_mean']:.3f}, recall "
                 f"{result['recall_class_mean']:.3f} (about "
                 f"{result['num_samples'] // len(result['per_class'])} samples per class)")
  return "\n".join(lines)
