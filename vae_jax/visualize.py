"""Which figures a trained model gets: data from `evaluate`, drawn by `figures`.

Returns matplotlib Figures by name and writes nothing; train.py and sample.py save them
(PNG under workdir/figures/ and TensorBoard images). Every figure comes from a fixed key
derived from the caller's, so epochs and runs can be compared image by image.
"""

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import evaluate
from vae_jax import figures
from vae_jax import input_pipeline

# Sub-keys of the figure key, one per figure, so adding a figure changes no other.
_RECONSTRUCTIONS, _SAMPLES, _SCATTER, _INTERPOLATION, _DENOISING, _CLASS_GRID = range(6)
_NUM_DENOISING_ERROR_EXAMPLES = 1000


def _labels(split: input_pipeline.Split, count: int) -> np.ndarray:
  if split.labels is None:
    return np.zeros(count, np.int32)
  return split.labels[:count]


def sample_figure(model, params, config, rng, *, num: int, label: int | None = None):
  """(name, Figure) of `num` samples from the prior, of class `label` if conditional."""
  labels = None
  if model.conditional:
    label = config.figures.label if label is None else label
    labels = jnp.full((num,), label, jnp.int32)
  images = evaluate.sample_prior(model, params, jax.random.fold_in(rng, _SAMPLES), labels,
                                 likelihood=config.model.likelihood, num_samples=num)
  if model.conditional:
    return f"samples_label{label}", figures.image_grid(
        np.asarray(images), f"samples of class {label}")
  return "prior_samples", figures.image_grid(np.asarray(images), "samples from the prior")


def make_figures(model, params, config, test_split: input_pipeline.Split, rng, *,
                 history: list[dict] | None = None, cheap_only: bool = False) -> dict:
  """name -> Figure for every figure that applies to this model.

  `cheap_only` keeps the ones worth redrawing during training: reconstructions and
  samples (the class grid for a conditional model).
  """
  likelihood = config.model.likelihood
  binarization = config.data.binarization
  fig_config = config.figures
  result = {}

  num = min(fig_config.num_reconstructions, test_split.num_examples)
  if num:
    inputs, reconstructed = evaluate.reconstruct(
        model, params, jnp.asarray(test_split.images[:num]),
        jnp.asarray(_labels(test_split, num)), jax.random.fold_in(rng, _RECONSTRUCTIONS),
        likelihood=likelihood, binarization=binarization)
    result["reconstructions"] = figures.reconstructions(
        np.asarray(inputs), np.asarray(reconstructed),
        None if test_split.labels is None else test_split.labels[:num])

  if model.conditional:
    grid = evaluate.class_grid(model, params, jax.random.fold_in(rng, _CLASS_GRID),
                               likelihood=likelihood,
                               samples_per_class=fig_config.samples_per_class)
    result["class_grid"] = figures.class_grid(
        np.asarray(grid), title="one row per class; one z per column")
  elif fig_config.num_prior_samples:
    name, figure = sample_figure(model, params, config, rng,
                                 num=fig_config.num_prior_samples)
    result[name] = figure
  if cheap_only:
    return result

  if model.latent_dim == 2:
    label = jnp.asarray(fig_config.label, jnp.int32) if model.conditional else None
    manifold = evaluate.latent_manifold(model, params, label, likelihood=likelihood,
                                        size=fig_config.manifold_size)
    title = "latent manifold" + (f" of class {fig_config.label}" if model.conditional else "")
    result["latent_manifold"] = figures.latent_manifold(
        np.asarray(manifold), evaluate.manifold_grid(fig_config.manifold_size), title)
    if fig_config.num_scatter_points:
      means = _posterior_means(model, params, config, test_split,
                               jax.random.fold_in(rng, _SCATTER))
      result["latent_scatter"] = figures.latent_scatter(
          means, None if test_split.labels is None else
          test_split.labels[:len(means)], "posterior means of test images")

  pairs = min(fig_config.num_interpolations, test_split.num_examples // 2)
  if pairs:
    pair_labels = _labels(test_split, 2 * pairs)
    starts, ends, paths = evaluate.interpolate(
        model, params, jnp.asarray(test_split.images[:pairs]),
        jnp.asarray(test_split.images[pairs:2 * pairs]),
        jnp.asarray(pair_labels[:pairs]), jnp.asarray(pair_labels[pairs:]),
        jax.random.fold_in(rng, _INTERPOLATION), likelihood=likelihood,
        binarization=binarization, num_steps=fig_config.interpolation_steps)
    result["interpolations"] = figures.interpolations(
        np.asarray(paths), np.asarray(starts), np.asarray(ends),
        "interpolation between posterior means of test digits")

  noise_stds = tuple(fig_config.denoising_noise_stds)
  if noise_stds and fig_config.num_denoising_examples:
    num = min(_NUM_DENOISING_ERROR_EXAMPLES, test_split.num_examples)
    denoised = evaluate.denoise(
        model, params, jnp.asarray(test_split.images[:num]),
        jnp.asarray(_labels(test_split, num)), jnp.asarray(noise_stds, jnp.float32),
        jax.random.fold_in(rng, _DENOISING), likelihood=likelihood,
        binarization=binarization)
    denoised = jax.device_get(denoised)
    shown = fig_config.num_denoising_examples
    result["denoising"] = figures.denoising(
        denoised["clean"][:shown], denoised["noisy"][:, :shown],
        denoised["reconstructed"][:, :shown], noise_stds,
        "reconstructions of noisy test images")
    result["denoising_error"] = figures.denoising_error(
        noise_stds, denoised["reconstruction_error"], denoised["input_error"],
        ylabel=f"squared error vs clean, mean of {num}")

  if history:
    result["training_curves"] = figures.training_curves(history)
  return result


def _posterior_means(model, params, config, split, rng) -> np.ndarray:
  """Posterior means of the first num_scatter_points images, in eval-sized chunks."""
  num = min(config.figures.num_scatter_points, split.num_examples)
  chunk = config.eval.batch_size
  labels = _labels(split, split.num_examples)
  means = []
  for start in range(0, num, chunk):
    stop = min(start + chunk, num)
    # Pad the last chunk to full size so it reuses the compiled program.
    indices = np.minimum(np.arange(start, start + chunk), split.num_examples - 1)
    batch_means = evaluate.posterior_means(
        model, params, jnp.asarray(split.images[indices]),
        jnp.asarray(labels[indices]),
        jax.random.fold_in(rng, start), binarization=config.data.binarization)
    means.append(np.asarray(batch_means)[:stop - start])
  return np.concatenate(means)
