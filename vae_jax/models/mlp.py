"""Fully connected encoder and decoder (seed 000's MLP VAE, seed 003's 2-D VAE and CVAE)."""

import functools
import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax.models.vae import join_condition


def _gaussian_layers(hidden: jax.Array, module: nn.Module, train: bool):
  """Hidden layers then (mean, logvar), built inside `module`'s compact __call__."""
  dense = functools.partial(nn.Dense, kernel_init=module.kernel_init, dtype=module.dtype)
  for width in module.hidden_dims:
    hidden = module.activation(dense(width)(hidden))
    hidden = nn.Dropout(module.dropout_rate, deterministic=not train)(hidden)
  # float32 out, whatever the compute dtype: the sampling and the losses stay float32.
  mean = dense(module.latent_dim, name="mean")(hidden).astype(jnp.float32)
  logvar = dense(module.latent_dim, name="logvar")(hidden).astype(jnp.float32)
  return mean, logvar


class GaussianMLP(nn.Module):
  """Vector [+ condition] -> hidden layers -> (mean, logvar) of a diagonal Gaussian.

  The stochastic layers between z1 and z2 of the two-layer model: q(z2|z1) and p(z1|z2);
  with a flattened image as the input, MLPEncoder below.
  """
  hidden_dims: Sequence[int]
  latent_dim: int
  activation: Callable[[jax.Array], jax.Array]
  kernel_init: nn.initializers.Initializer
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32  # Of the computation; parameters are float32.

  @nn.compact
  def __call__(self, inputs: jax.Array, condition: jax.Array | None = None,
               train: bool = False):
    return _gaussian_layers(join_condition(inputs, condition), self, train)


class MLPEncoder(GaussianMLP):
  """Image [+ condition] -> hidden layers -> (mean, logvar) of q(z|x); batched or not."""

  @nn.compact
  def __call__(self, image: jax.Array, condition: jax.Array | None = None,
               train: bool = False):
    # Seed 003's CVAE: the one-hot joins the flattened pixels.
    hidden = join_condition(image.reshape(image.shape[:-3] + (-1,)), condition)
    return _gaussian_layers(hidden, self, train)


class MLPDecoder(nn.Module):
  """Latent -> hidden layers (the encoder's, mirrored) -> the head's outputs per pixel,
  output_shape (H, W, outputs per pixel)."""
  hidden_dims: Sequence[int]
  output_shape: tuple[int, int, int]
  activation: Callable[[jax.Array], jax.Array]
  kernel_init: nn.initializers.Initializer
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32  # Of the computation; parameters are float32.

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False):
    dense = functools.partial(nn.Dense, kernel_init=self.kernel_init, dtype=self.dtype)
    hidden = z
    for width in reversed(self.hidden_dims):
      hidden = self.activation(dense(width)(hidden))
      hidden = nn.Dropout(self.dropout_rate, deterministic=not train)(hidden)
    num_outputs = math.prod(self.output_shape)
    output = dense(num_outputs, name="output")(hidden).astype(jnp.float32)
    return output.reshape(z.shape[:-1] + tuple(self.output_shape))
