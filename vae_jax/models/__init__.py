"""Model families, built from `config.model` by `get_model`."""

import functools

import flax.linen as nn
import jax.numpy as jnp

from vae_jax.models import conv
from vae_jax.models import mlp
from vae_jax.models import two_layer
from vae_jax.models.two_layer import TwoLayerVAE
from vae_jax.models.vae import VAE, BernoulliHead, GaussianHead, reparameterize

IMAGE_SHAPE = (28, 28, 1)

ACTIVATIONS = {
    "tanh": nn.tanh,
    "relu": nn.relu,
    "leaky_relu": nn.leaky_relu,  # Its slope for x < 0 is config.model.negative_slope.
    "elu": nn.elu,
    "gelu": nn.gelu,
    "softplus": nn.softplus,
}

KERNEL_INITS = {
    "glorot_uniform": lambda stddev: nn.initializers.glorot_uniform(),
    "lecun_normal": lambda stddev: nn.initializers.lecun_normal(),
    "he_normal": lambda stddev: nn.initializers.he_normal(),
    # As TF's truncated_normal: a normal of this stddev, cut at 2 stddev (seed 003).
    "truncated_normal": nn.initializers.truncated_normal,
}


def _activation(name: str, negative_slope: float):
  if name == "leaky_relu":
    return functools.partial(nn.leaky_relu, negative_slope=negative_slope)
  return ACTIVATIONS[name]


def _head(model_config) -> nn.Module:
  if model_config.likelihood == "bernoulli":
    return BernoulliHead()
  return GaussianHead(mean_activation=model_config.gaussian_mean,
                      variance=model_config.gaussian_variance,
                      fixed_variance=model_config.gaussian_fixed_variance,
                      min_variance=model_config.gaussian_min_variance)


def get_model(model_config, dtype: str = "float32") -> VAE | two_layer.TwoLayerVAE:
  """A pure VAE module for `config.model` (read here, once, outside any jitted code).

  `dtype` (config.dtype) is the dtype of the networks' computation; parameters, the
  sampling and the losses are float32 whatever it is.
  """
  compute_dtype = jnp.dtype(dtype)
  activation = _activation(model_config.activation, model_config.negative_slope)
  kernel_init = KERNEL_INITS[model_config.kernel_init](model_config.init_stddev)
  dropout_rate = model_config.dropout_rate
  if model_config.name == "mlp":
    hidden_dims = tuple(model_config.hidden_dims)
    encoder = mlp.MLPEncoder(hidden_dims, model_config.latent_dim, activation, kernel_init,
                             dropout_rate, compute_dtype)
    decoder = mlp.MLPDecoder(hidden_dims, IMAGE_SHAPE, activation, kernel_init, dropout_rate,
                             compute_dtype)
  elif model_config.name == "conv":
    spec = model_config.conv
    encoder = conv.ConvEncoder(
        features=tuple(spec.encoder_features), strides=tuple(spec.encoder_strides),
        kernel_size=spec.kernel_size, latent_dim=model_config.latent_dim,
        activation=activation, kernel_init=kernel_init, dropout_rate=dropout_rate,
        dtype=compute_dtype)
    decoder = conv.ConvDecoder(
        dense_dims=tuple(spec.decoder_dense_dims), initial_side=spec.decoder_initial_side,
        features=tuple(spec.decoder_features), strides=tuple(spec.decoder_strides),
        kernel_size=spec.kernel_size, image_shape=IMAGE_SHAPE, activation=activation,
        conv_activation=_activation(spec.decoder_conv_activation,
                                    model_config.negative_slope),
        kernel_init=kernel_init, dropout_rate=dropout_rate, dtype=compute_dtype)
  else:
    raise ValueError(f"Unknown config.model.name={model_config.name!r}.")
  num_classes = model_config.num_classes if model_config.conditional else 0
  if model_config.stochastic_layers == 2:
    top = model_config.top_layer
    top_hidden_dims = tuple(top.hidden_dims)
    return two_layer.TwoLayerVAE(
        bottom_encoder=encoder,
        top_encoder=mlp.GaussianMLP(top_hidden_dims, top.latent_dim, activation,
                                    kernel_init, dropout_rate, compute_dtype),
        top_decoder=mlp.GaussianMLP(tuple(reversed(top_hidden_dims)),
                                    model_config.latent_dim, activation, kernel_init,
                                    dropout_rate, compute_dtype),
        decoder=decoder, head=_head(model_config), num_classes=num_classes)
  return VAE(encoder=encoder, decoder=decoder, head=_head(model_config),
             num_classes=num_classes)


__all__ = ["VAE", "TwoLayerVAE", "BernoulliHead", "GaussianHead", "get_model", "reparameterize",
           "IMAGE_SHAPE"]
