"""The VAE wrapper shared by every backbone: q(z|x) = N(mean, exp(logvar)), p(x|z) from the decoder."""

import flax.linen as nn
import jax
import jax.numpy as jnp


def reparameterize(mean: jax.Array, logvar: jax.Array, eps: jax.Array) -> jax.Array:
  """z = mean + std * eps, so gradients flow through mean and logvar, not the noise."""
  return mean + jnp.exp(0.5 * logvar) * eps


class VAE(nn.Module):
  """Pure: the caller supplies the noise `eps`, drawn from its own explicit key.

  Attributes:
    encoder: module mapping an image to (mean, logvar) of the Gaussian posterior.
    decoder: module mapping a latent to the likelihood's parameters (e.g. Bernoulli logits).
  """
  encoder: nn.Module
  decoder: nn.Module

  def encode(self, image: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    return self.encoder(image, train=train)

  def decode(self, z: jax.Array, train: bool = False) -> jax.Array:
    return self.decoder(z, train=train)

  def __call__(self, image: jax.Array, eps: jax.Array, train: bool = False):
    """Returns (mean, logvar, z, decoder output) for one reparameterized sample."""
    mean, logvar = self.encode(image, train=train)
    z = reparameterize(mean, logvar, eps)
    return mean, logvar, z, self.decode(z, train=train)
