"""Pure loss functions, in nats per example.

Array-level densities first, then `elbo_terms`, which wires a VAE module to them for one
example (callers vmap it over a batch, one explicit key per example).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vae_jax import input_pipeline
from vae_jax.models import reparameterize

_IMAGE_AXES = (-3, -2, -1)


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, I)), summed over the last (latent) axis."""
  return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar, axis=-1)


def bernoulli_log_likelihood(image: jax.Array, logits: jax.Array) -> jax.Array:
  """log p(x|z) for pixels in [0, 1] under Bernoulli(sigmoid(logits)), summed per image.

  Computed from logits via log-sigmoid, so it stays finite for saturated logits (unlike
  the seeds' log(sigmoid + 1e-10)). Grayscale targets give the usual cross-entropy.
  """
  return -jnp.sum(optax.sigmoid_binary_cross_entropy(logits, image), axis=_IMAGE_AXES)


def gaussian_log_likelihood(image: jax.Array, mean: jax.Array,
                            logvar: jax.Array) -> jax.Array:
  """log N(image; mean, exp(logvar)), pixels independent, summed per image, constant included.

  With unit variance this is -0.5 * squared error - (D/2) log(2 pi): a proper log-density
  in nats, not the seeds' bare squared error.
  """
  per_pixel = -0.5 * (jnp.square(image - mean) * jnp.exp(-logvar) + logvar
                      + jnp.log(2.0 * jnp.pi))
  return jnp.sum(per_pixel, axis=_IMAGE_AXES)


def log_likelihood(likelihood: str, image: jax.Array, decoded: dict) -> jax.Array:
  """log p(x|z) per image, from the likelihood parameters the model's head returns."""
  if likelihood == "bernoulli":
    return bernoulli_log_likelihood(image, decoded["logits"])
  if likelihood == "gaussian":
    return gaussian_log_likelihood(image, decoded["mean"], decoded["logvar"])
  raise ValueError(f"Unknown likelihood {likelihood!r}.")


def elbo_terms(model: nn.Module, variables, image: jax.Array, label, rng: jax.Array, *,
               likelihood: str, num_samples: int = 1, kl_weight: float = 1.0,
               train: bool = False, dropout_rng: jax.Array | None = None
               ) -> dict[str, jax.Array]:
  """The ELBO's parts for ONE example, averaging the reconstruction over `num_samples`.

  `label` is the example's class for a conditional model (ignored otherwise); `rng` draws
  the reparameterization noise; `dropout_rng` is needed when training a model with dropout.
  Returns scalars: `reconstruction` (-E_q log p(x|z)), `kl` (analytic), `neg_elbo`
  (their sum, the bound in nats) and `loss` (reconstruction + kl_weight * kl, what is
  minimized).
  """
  eps = jax.random.normal(rng, (num_samples, model.latent_dim), image.dtype)
  rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
  mean, logvar, _, decoded = model.apply(variables, image, eps, label, train=train, rngs=rngs)
  reconstruction = -jnp.mean(log_likelihood(likelihood, image, decoded))
  kl = gaussian_kl(mean, logvar)
  return {
      "loss": reconstruction + kl_weight * kl,
      "neg_elbo": reconstruction + kl,
      "reconstruction": reconstruction,
      "kl": kl,
  }


def mean_image(likelihood: str, decoded: dict) -> jax.Array:
  """E[x|z], clipped to the pixel range [0, 1], for figures."""
  if likelihood == "bernoulli":
    return jax.nn.sigmoid(decoded["logits"])
  if likelihood == "gaussian":
    return jnp.clip(decoded["mean"], 0.0, 1.0)
  raise ValueError(f"Unknown likelihood {likelihood!r}.")


# Each example's key is split by purpose with fold_in, so adding a purpose later leaves the
# random numbers of the others unchanged.
_PURPOSE_REPARAMETERIZATION = 0
_PURPOSE_BINARIZATION = 1
_PURPOSE_DROPOUT = 2


def make_example_terms_fn(model: nn.Module, config, *, train: bool):
  """fn(params, image_uint8, label, example_key) -> elbo_terms for one dataset example.

  The config is read here, once; the returned function is pure and meant to be vmapped
  over a batch with one key per example (derived from the example's global index, so the
  result does not depend on how the batch is split over devices). Dropout is on only
  when `train`; evaluation is deterministic given the key.
  """
  likelihood = config.model.likelihood
  binarization = config.data.binarization
  num_samples = config.loss.num_samples
  kl_weight = config.loss.kl_weight

  def example_terms(params, image_uint8, label, example_key):
    image = input_pipeline.to_model_input(
        image_uint8, binarization, jax.random.fold_in(example_key, _PURPOSE_BINARIZATION))
    dropout_rng = jax.random.fold_in(example_key, _PURPOSE_DROPOUT) if train else None
    return elbo_terms(model, {"params": params}, image, label,
                      jax.random.fold_in(example_key, _PURPOSE_REPARAMETERIZATION),
                      likelihood=likelihood, num_samples=num_samples, kl_weight=kl_weight,
                      train=train, dropout_rng=dropout_rng)

  return example_terms
