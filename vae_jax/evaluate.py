"""Evaluators: take parameters and device-resident data, return numbers or arrays; write nothing."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from vae_jax import input_pipeline
from vae_jax import losses


def make_elbo_evaluator(model: nn.Module, config, mesh: jax.sharding.Mesh):
  """Returns evaluate(params, dataset, rng) -> mean ELBO terms (nats) over the whole split.

  Batches are sharded over the mesh's "batch" axis. The last partial batch is padded and
  masked, so one compiled program serves every batch. Example i's noise comes from
  fold_in(rng, i), so the result does not depend on the batch size or the device count.
  """
  example_terms = losses.make_example_terms_fn(model, config, train=False)
  num_devices = mesh.shape["batch"]
  batch_size = -(-config.eval.batch_size // num_devices) * num_devices
  index_sharding = NamedSharding(mesh, P("batch"))

  def batch_sums(params, dataset, indices, mask, rng):
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, indices)
    terms = jax.vmap(example_terms, in_axes=(None, 0, 0, 0))(
        params, dataset["image"][indices], dataset["label"][indices], keys)
    return {name: jnp.sum(jnp.where(mask, value, 0.0)) for name, value in terms.items()}

  batch_sums = jax.jit(batch_sums)

  def evaluate(params, dataset, rng) -> dict[str, float]:
    num_examples = dataset["image"].shape[0]
    totals = None
    for start in range(0, num_examples, batch_size):
      indices = np.arange(start, start + batch_size)
      mask = indices < num_examples
      indices = np.where(mask, indices, 0).astype(np.int32)
      sums = batch_sums(params, dataset, jax.device_put(indices, index_sharding),
                        jax.device_put(mask, index_sharding), rng)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    return {name: float(value) / num_examples for name, value in jax.device_get(totals).items()}

  return evaluate


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
  mean, _ = model.apply({"params": params}, images, labels, method=model.encode)
  decoded = model.apply({"params": params}, mean, labels, method=model.decode)
  return losses.mean_image(likelihood, decoded)


def _decode_mean(model, params, z, labels, likelihood):
  decoded = model.apply({"params": params}, z, labels, method=model.decode)
  return losses.mean_image(likelihood, decoded)


@functools.partial(jax.jit, static_argnames=("model", "likelihood", "num_samples"))
def sample_prior(model: nn.Module, params, rng: jax.Array, labels: jax.Array | None = None,
                 *, likelihood: str, num_samples: int) -> jax.Array:
  """Mean images E[x|z(, y)] for z ~ N(0, I); pass a fixed key to compare runs or epochs.

  A conditional model needs `labels` (num_samples,): the class of each sample.
  """
  z = jax.random.normal(rng, (num_samples, model.latent_dim))
  return _decode_mean(model, params, z, labels, likelihood)


@functools.partial(jax.jit, static_argnames=("model", "binarization"))
def posterior_means(model: nn.Module, params, images_uint8: jax.Array, labels: jax.Array,
                    rng: jax.Array, *, binarization: str) -> jax.Array:
  """The means of q(z|x[, y]) of a batch of images, (N, latent_dim)."""
  images = input_pipeline.to_model_input(images_uint8, binarization, rng)
  return model.apply({"params": params}, images, labels, method=model.encode)[0]


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
  images = _decode_mean(model, params, z, labels, likelihood)
  return images.reshape((size, size) + images.shape[1:])


@functools.partial(jax.jit, static_argnames=("model", "likelihood", "samples_per_class"))
def class_grid(model: nn.Module, params, rng: jax.Array, *, likelihood: str,
               samples_per_class: int) -> jax.Array:
  """(num_classes, samples_per_class, H, W, C) for a conditional model.

  Column j uses the same z for every class, so a column holds the style fixed while the
  label changes.
  """
  num_classes = model.num_classes
  z = jax.random.normal(rng, (samples_per_class, model.latent_dim))
  z = jnp.broadcast_to(z, (num_classes,) + z.shape).reshape(-1, model.latent_dim)
  labels = jnp.repeat(jnp.arange(num_classes), samples_per_class)
  images = _decode_mean(model, params, z, labels, likelihood)
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
  z_start = model.apply({"params": params}, starts, start_labels, method=model.encode)[0]
  z_end = model.apply({"params": params}, ends, end_labels, method=model.encode)[0]
  weights = jnp.linspace(0.0, 1.0, num_steps)[None, :, None]  # (1, steps, 1)
  z = (1 - weights) * z_start[:, None] + weights * z_end[:, None]
  labels = None
  if model.conditional:
    start_onehot = jax.nn.one_hot(start_labels, model.num_classes)[:, None]
    end_onehot = jax.nn.one_hot(end_labels, model.num_classes)[:, None]
    labels = (1 - weights) * start_onehot + weights * end_onehot
  paths = _decode_mean(model, params, z, labels, likelihood)
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
