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
    images = dataset["image"][indices]
    terms = jax.vmap(example_terms, in_axes=(None, 0, 0))(params, images, keys)
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


@functools.partial(jax.jit, static_argnames=("model", "likelihood", "binarization"))
def reconstruct(model: nn.Module, params, images_uint8: jax.Array, rng: jax.Array, *,
                likelihood: str, binarization: str) -> tuple[jax.Array, jax.Array]:
  """(model inputs, mean reconstructions) in [0, 1], decoding the posterior mean."""
  images = input_pipeline.to_model_input(images_uint8, binarization, rng)
  mean, _ = model.apply({"params": params}, images, method=model.encode)
  output = model.apply({"params": params}, mean, method=model.decode)
  return images, losses.mean_image(likelihood, output)


@functools.partial(jax.jit,
                   static_argnames=("model", "likelihood", "latent_dim", "num_samples"))
def sample_prior(model: nn.Module, params, rng: jax.Array, *, likelihood: str,
                 latent_dim: int, num_samples: int) -> jax.Array:
  """Mean images E[x|z] for z ~ N(0, I); pass a fixed key to compare runs or epochs."""
  z = jax.random.normal(rng, (num_samples, latent_dim))
  output = model.apply({"params": params}, z, method=model.decode)
  return losses.mean_image(likelihood, output)
