"""Convolutional encoder and decoder (seeds 001/002).

Encoder: strided 'SAME' convolutions, each followed by dropout, then dense mean and
log-variance heads. (The seeds' log-std head `0.5 * dense` is the same parametrization:
logvar = 2 * log-std = dense.) Decoder: dense layers up to a small feature map,
transposed convolutions, then a dense layer to the outputs of every pixel (the seeds), or
a stride-1 convolution to each pixel's outputs (`output='conv'`: larger images).
"""

import functools
import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class ConvEncoder(nn.Module):
  """Image [+ condition as constant channels] -> convs -> (mean, logvar); batched or not."""
  features: Sequence[int]
  strides: Sequence[int]
  kernel_size: int
  latent_dim: int
  activation: Callable[[jax.Array], jax.Array]
  kernel_init: nn.initializers.Initializer
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32  # Of the computation; parameters are float32.

  @nn.compact
  def __call__(self, image: jax.Array, condition: jax.Array | None = None,
               train: bool = False):
    hidden = image
    if condition is not None:
      # The one-hot as extra input channels, constant over the image: the conv analogue of
      # concatenating it to the flattened pixels.
      channels = jnp.broadcast_to(condition[..., None, None, :].astype(image.dtype),
                                  image.shape[:-1] + condition.shape[-1:])
      hidden = jnp.concatenate([image, channels], axis=-1)
    for features, stride in zip(self.features, self.strides, strict=True):
      hidden = nn.Conv(features, (self.kernel_size, self.kernel_size), strides=stride,
                       padding="SAME", kernel_init=self.kernel_init, dtype=self.dtype)(hidden)
      hidden = self.activation(hidden)
      hidden = nn.Dropout(self.dropout_rate, deterministic=not train)(hidden)
    hidden = hidden.reshape(hidden.shape[:-3] + (-1,))
    dense = functools.partial(nn.Dense, kernel_init=self.kernel_init, dtype=self.dtype)
    # float32 out, whatever the compute dtype: the sampling and the losses stay float32.
    mean = dense(self.latent_dim, name="mean")(hidden).astype(jnp.float32)
    logvar = dense(self.latent_dim, name="logvar")(hidden).astype(jnp.float32)
    return mean, logvar


class ConvDecoder(nn.Module):
  """Latent -> dense layers -> (side, side, c) map -> transposed convs -> the outputs,
  output_shape (H, W, outputs per pixel): by a dense layer from the whole map (`output`
  'dense', the seeds; any H, W) or a stride-1 conv ('conv'; the map must be H x W).

  The last dense width must be side * side * c for the reshape (seeds: 49 = 7 x 7 x 1).
  Dropout follows every transposed conv but the last, as in the seeds.
  """
  dense_dims: Sequence[int]
  initial_side: int
  features: Sequence[int]
  strides: Sequence[int]
  kernel_size: int
  output_shape: tuple[int, int, int]
  activation: Callable[[jax.Array], jax.Array]
  conv_activation: Callable[[jax.Array], jax.Array]
  kernel_init: nn.initializers.Initializer
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32  # Of the computation; parameters are float32.
  output: str = "dense"

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False):
    dense = functools.partial(nn.Dense, kernel_init=self.kernel_init, dtype=self.dtype)
    hidden = z
    for width in self.dense_dims:
      hidden = self.activation(dense(width)(hidden))
    channels = self.dense_dims[-1] // (self.initial_side * self.initial_side)
    hidden = hidden.reshape(z.shape[:-1] + (self.initial_side, self.initial_side, channels))
    for index, (features, stride) in enumerate(zip(self.features, self.strides, strict=True)):
      hidden = nn.ConvTranspose(features, (self.kernel_size, self.kernel_size),
                                strides=(stride, stride), padding="SAME",
                                kernel_init=self.kernel_init, dtype=self.dtype)(hidden)
      hidden = self.conv_activation(hidden)
      if index < len(self.features) - 1:
        hidden = nn.Dropout(self.dropout_rate, deterministic=not train)(hidden)
    if self.output == "conv":
      output = nn.Conv(self.output_shape[-1], (self.kernel_size, self.kernel_size),
                       padding="SAME", kernel_init=self.kernel_init, dtype=self.dtype,
                       name="output")(hidden)
      return output.astype(jnp.float32)
    hidden = hidden.reshape(z.shape[:-1] + (-1,))
    num_outputs = math.prod(self.output_shape)
    output = dense(num_outputs, name="output")(hidden).astype(jnp.float32)
    return output.reshape(z.shape[:-1] + tuple(self.output_shape))
