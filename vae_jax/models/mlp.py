"""Fully connected encoder and decoder (seed 000's MLP VAE, seed 003's 2-D VAE and CVAE)."""

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLPEncoder(nn.Module):
  """Image [+ condition] -> hidden layers -> (mean, logvar) of q(z|x); batched or not."""
  hidden_dims: Sequence[int]
  latent_dim: int
  activation: Callable[[jax.Array], jax.Array]
  kernel_init: nn.initializers.Initializer
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, image: jax.Array, condition: jax.Array | None = None,
               train: bool = False):
    hidden = image.reshape(image.shape[:-3] + (-1,))
    if condition is not None:  # Seed 003's CVAE: the one-hot joins the flattened pixels.
      hidden = jnp.concatenate([hidden, condition.astype(hidden.dtype)], axis=-1)
    for width in self.hidden_dims:
      hidden = self.activation(nn.Dense(width, kernel_init=self.kernel_init)(hidden))
      hidden = nn.Dropout(self.dropout_rate, deterministic=not train)(hidden)
    mean = nn.Dense(self.latent_dim, kernel_init=self.kernel_init, name="mean")(hidden)
    logvar = nn.Dense(self.latent_dim, kernel_init=self.kernel_init, name="logvar")(hidden)
    return mean, logvar


class MLPDecoder(nn.Module):
  """Latent -> hidden layers (the encoder's, mirrored) -> one output per pixel."""
  hidden_dims: Sequence[int]
  image_shape: tuple[int, int, int]
  activation: Callable[[jax.Array], jax.Array]
  kernel_init: nn.initializers.Initializer
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False):
    hidden = z
    for width in reversed(self.hidden_dims):
      hidden = self.activation(nn.Dense(width, kernel_init=self.kernel_init)(hidden))
      hidden = nn.Dropout(self.dropout_rate, deterministic=not train)(hidden)
    num_pixels = math.prod(self.image_shape)
    output = nn.Dense(num_pixels, kernel_init=self.kernel_init, name="output")(hidden)
    return output.reshape(z.shape[:-1] + tuple(self.image_shape))
