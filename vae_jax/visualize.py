"""Figure arrays from a model (jitted), and which figures a model gets.

The array functions take parameters, images and explicit keys and return numbers and mean
images E[x|z] in [0, 1]; `make_figures` turns them into matplotlib Figures by name with
vae_jax/figures.py and writes nothing (workdir.write_figures saves them as PNG and
TensorBoard images). Every figure comes from a fixed key derived from the caller's, so
epochs and runs can be compared image by image.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import evaluators
from vae_jax import figures
from vae_jax import input_pipeline
from vae_jax import losses
from vae_jax import parallel

# Figure data. Each function is jitted with the model and the config values it needs as
# static arguments, takes explicit keys, and returns mean images E[x|z] in [0, 1].


@functools.partial(jax.jit, static_argnames=("model", "likelihood", "binarization"))
def reconstruct(model: nn.Module, params, images_uint8: jax.Array, labels: jax.Array,
                rng: jax.Array, *, likelihood: str, binarization: str
                ) -> tuple[jax.Array, jax.Array]:
  """(model inputs, mean reconstructions), decoding the posterior mean."""
  images = input_pipeline.to_model_input(images_uint8, binarization, rng)
  return images, _reconstruct_inputs(model, params, images, labels, likelihood)


def _reconstruct_inputs(model, params, images, labels, likelihood):
  z = model.apply({"params": params}, images, labels, method=model.posterior_mean)
  decoded = model.apply({"params": params}, z, labels, method=model.decode)
  return losses.mean_image(likelihood, decoded)


def decode_mean(model, params, z, labels, likelihood):
  """E[x|z(, y)] of latents z (for a conditional model, of labels y)."""
  decoded = model.apply({"params": params}, z, labels, method=model.decode)
  return losses.mean_image(likelihood, decoded)


def decode_prior_samples(model, params, noise, labels, likelihood):
  """Mean images E[x|z(, y)] of the prior samples that noise (model.prior_noise's)
  stands for, ancestral through every stochastic layer."""
  decoded = model.apply({"params": params}, noise, labels, method=model.decode_prior_sample)
  return losses.mean_image(likelihood, decoded)


@functools.partial(jax.jit, static_argnames=("model", "likelihood", "num_samples"))
def sample_prior(model: nn.Module, params, rng: jax.Array, labels: jax.Array | None = None,
                 *, likelihood: str, num_samples: int) -> jax.Array:
  """Mean images E[x|z(, y)] of prior samples (decode_prior_samples); pass a fixed key to
  compare runs or epochs.

  A conditional model needs `labels` (num_samples,): the class of each sample.
  """
  decoded = model.apply({"params": params}, rng, num_samples, labels,
                        method=model.sample_prior)
  return losses.mean_image(likelihood, decoded)


@functools.partial(jax.jit, static_argnames=("model", "binarization"))
def posterior_means(model: nn.Module, params, images_uint8: jax.Array, labels: jax.Array,
                    rng: jax.Array, *, binarization: str) -> jax.Array:
  """The posterior points (model.posterior_mean) of a batch of images, (N, latent_dim)."""
  images = input_pipeline.to_model_input(images_uint8, binarization, rng)
  return model.apply({"params": params}, images, labels, method=model.posterior_mean)


def manifold_grid(size: int) -> np.ndarray:
  """Seed 003's grid: standard-normal quantiles of linspace(0.05, 0.95, size)."""
  return np.asarray(jax.scipy.stats.norm.ppf(jnp.linspace(0.05, 0.95, size)))


@functools.partial(jax.jit, static_argnames=("model", "likelihood", "size"))
def latent_manifold(model: nn.Module, params, label: jax.Array | None = None, *,
                    likelihood: str, size: int) -> jax.Array:
  """(size, size, H, W, C): tile [i, j] decodes z = (grid[j], grid[i]) (2-D latents)."""
  grid = jax.scipy.stats.norm.ppf(jnp.linspace(0.05, 0.95, size))
  z1, z0 = jnp.meshgrid(grid, grid, indexing="ij")
  z = jnp.stack([z0, z1], axis=-1).reshape(size * size, 2)
  labels = None if label is None else jnp.full((size * size,), label, jnp.int32)
  images = decode_mean(model, params, z, labels, likelihood)
  return images.reshape((size, size) + images.shape[1:])


@functools.partial(jax.jit, static_argnames=("model", "likelihood", "samples_per_class"))
def class_grid(model: nn.Module, params, rng: jax.Array, *, likelihood: str,
               samples_per_class: int) -> jax.Array:
  """(num_classes, samples_per_class, H, W, C) for a conditional model.

  Column j uses the same prior noise for every class, so a column holds the style fixed
  while the label changes.
  """
  num_classes = model.num_classes
  noise = model.prior_noise(rng, samples_per_class)
  noise = jnp.broadcast_to(noise, (num_classes,) + noise.shape).reshape(
      (-1,) + noise.shape[1:])
  labels = jnp.repeat(jnp.arange(num_classes), samples_per_class)
  images = decode_prior_samples(model, params, noise, labels, likelihood)
  return images.reshape((num_classes, samples_per_class) + images.shape[1:])


@functools.partial(jax.jit,
                   static_argnames=("model", "likelihood", "binarization", "num_steps"))
def interpolate(model: nn.Module, params, starts_uint8: jax.Array, ends_uint8: jax.Array,
                start_labels: jax.Array, end_labels: jax.Array, rng: jax.Array, *,
                likelihood: str, binarization: str, num_steps: int):
  """Decodings along straight lines between the posterior means of pairs of images.

  Returns (start inputs, end inputs, paths (pairs, num_steps, H, W, C)). A conditional
  model also moves its one-hot label linearly from the start's class to the end's.
  """
  start_key, end_key = jax.random.split(rng)
  starts = input_pipeline.to_model_input(starts_uint8, binarization, start_key)
  ends = input_pipeline.to_model_input(ends_uint8, binarization, end_key)
  z_start = model.apply({"params": params}, starts, start_labels, method=model.posterior_mean)
  z_end = model.apply({"params": params}, ends, end_labels, method=model.posterior_mean)
  weights = jnp.linspace(0.0, 1.0, num_steps)[None, :, None]  # (1, steps, 1)
  z = (1 - weights) * z_start[:, None] + weights * z_end[:, None]
  labels = None
  if model.conditional:
    start_onehot = jax.nn.one_hot(start_labels, model.num_classes)[:, None]
    end_onehot = jax.nn.one_hot(end_labels, model.num_classes)[:, None]
    labels = (1 - weights) * start_onehot + weights * end_onehot
  paths = decode_mean(model, params, z, labels, likelihood)
  return starts, ends, paths


@functools.partial(jax.jit, static_argnames=("model", "likelihood", "binarization"))
def denoise(model: nn.Module, params, images_uint8: jax.Array, labels: jax.Array,
            noise_stds: jax.Array, rng: jax.Array, *, likelihood: str, binarization: str):
  """Seed 000's denoising test: Gaussian pixel noise, clipped to [0, 1], then reconstruct.

  Returns a dict: `clean` (N, H, W, C) model inputs, `noisy` and `reconstructed`
  (L, N, H, W, C) for the L noise stds, and per noise level the mean over images of the
  summed squared error against the clean image, of the reconstruction
  (`reconstruction_error`) and of the noisy input itself (`input_error`).
  """
  binarize_key, noise_key = jax.random.split(rng)
  clean = input_pipeline.to_model_input(images_uint8, binarization, binarize_key)
  noise = jax.random.normal(noise_key, clean.shape)
  noisy = jnp.clip(clean[None] + noise_stds[:, None, None, None, None] * noise[None], 0, 1)
  reconstructed = jax.vmap(
      lambda x: _reconstruct_inputs(model, params, x, labels, likelihood))(noisy)

  def error(images):
    return jnp.mean(jnp.sum(jnp.square(images - clean[None]), axis=(-3, -2, -1)), axis=1)

  return {"clean": clean, "noisy": noisy, "reconstructed": reconstructed,
          "reconstruction_error": error(reconstructed), "input_error": error(noisy)}


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
  images = sample_prior(model, params, jax.random.fold_in(rng, _SAMPLES), labels,
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
    inputs, reconstructed = reconstruct(
        model, params, jnp.asarray(test_split.images[:num]),
        jnp.asarray(_labels(test_split, num)), jax.random.fold_in(rng, _RECONSTRUCTIONS),
        likelihood=likelihood, binarization=binarization)
    result["reconstructions"] = figures.reconstructions(
        np.asarray(inputs), np.asarray(reconstructed),
        None if test_split.labels is None else test_split.labels[:num])

  if model.conditional:
    grid = class_grid(model, params, jax.random.fold_in(rng, _CLASS_GRID),
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

  if model.latent_dim == 2 and model.standard_normal_prior:  # A grid of N(0, I)'s quantiles.
    label = jnp.asarray(fig_config.label, jnp.int32) if model.conditional else None
    manifold = latent_manifold(model, params, label, likelihood=likelihood,
                                        size=fig_config.manifold_size)
    title = "latent manifold" + (f" of class {fig_config.label}" if model.conditional else "")
    result["latent_manifold"] = figures.latent_manifold(
        np.asarray(manifold), manifold_grid(fig_config.manifold_size), title)
    if fig_config.num_scatter_points:
      means = _posterior_means(model, params, config, test_split,
                               jax.random.fold_in(rng, _SCATTER))
      result["latent_scatter"] = figures.latent_scatter(
          means, None if test_split.labels is None else
          test_split.labels[:len(means)], "posterior means of test images")

  pairs = min(fig_config.num_interpolations, test_split.num_examples // 2)
  if pairs:
    pair_labels = _labels(test_split, 2 * pairs)
    starts, ends, paths = interpolate(
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
    denoised = denoise(
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
  """Posterior means of the first num_scatter_points images, in eval-sized batches."""
  num = min(config.figures.num_scatter_points, split.num_examples)
  labels = _labels(split, split.num_examples)
  means = []
  for indices, _, count in parallel.padded_batches(num, config.eval.batch_size):
    batch_means = posterior_means(
        model, params, jnp.asarray(split.images[indices]), jnp.asarray(labels[indices]),
        jax.random.fold_in(rng, int(indices[0])), binarization=config.data.binarization)
    means.append(np.asarray(batch_means)[:count])
  return np.concatenate(means)


# Figures of an evaluation result (evaluators.final_result's dict).


def nll_figure(result: dict):
  """nll_vs_k.png's figure from a result with the prefix estimates."""
  by_k = result["nll_by_num_samples"]
  return figures.nll_vs_k([e["k"] for e in by_k], [e["nll_nats"] for e in by_k],
                          [e["nll_stderr"] for e in by_k],
                          title=f"{result.get('split', 'test')} NLL against k")


def latent_figure(result: dict):
  """kl_per_dimension.png's figure from a result with latent_diagnostics."""
  return figures.kl_per_dimension(
      [layer.get("kl_per_dim") for layer in result["latent_layers"]],
      [layer["activity"] for layer in result["latent_layers"]],
      threshold=evaluators.ACTIVITY_THRESHOLD,
      title=f"{result.get('split', 'test')} KL per latent dimension")


def result_figures(result: dict) -> dict:
  """The figures of an evaluation result, by name: nll_vs_k and kl_per_dimension (for a
  split other than test, with the split's name after theirs)."""
  suffix = "" if result.get("split", "test") == "test" else f"_{result['split']}"
  named = {}
  if "nll_by_num_samples" in result:
    named[f"nll_vs_k{suffix}"] = nll_figure(result)
  if "latent_layers" in result:
    named[f"kl_per_dimension{suffix}"] = latent_figure(result)
  return named
