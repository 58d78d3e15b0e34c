"""Model families: the registry FAMILIES, and `get_model`, which builds the one that
`config.model` names."""

import functools

import flax.linen as nn
import jax.numpy as jnp

from vae_jax.models import contract
from vae_jax.models import conv
from vae_jax.models import iaf
from vae_jax.models import mlp
from vae_jax.models import two_layer
from vae_jax.models import vampprior
from vae_jax.models.two_layer import TwoLayerVAE
from vae_jax.models.vae import (VAE, BernoulliHead, GaussianHead, LogisticMixtureHead,
                                 reparameterize)

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


def _head(model_config, channels: int) -> nn.Module:
  if model_config.likelihood == "bernoulli":
    return BernoulliHead()
  if model_config.likelihood == "logistic_mixture":
    return LogisticMixtureHead(components=model_config.logistic_mixture_components,
                               channels=channels)
  return GaussianHead(mean_activation=model_config.gaussian_mean,
                      variance=model_config.gaussian_variance,
                      fixed_variance=model_config.gaussian_fixed_variance,
                      min_variance=model_config.gaussian_min_variance)


def _build_vae(model_config, parts: contract.Parts) -> VAE | TwoLayerVAE:
  """The Gaussian VAE with N(0, I) prior: one stochastic layer, or Burda et al.'s two."""
  if model_config.stochastic_layers == 2:
    top = model_config.top_layer
    top_hidden_dims = tuple(top.hidden_dims)
    return two_layer.TwoLayerVAE(
        bottom_encoder=parts.encoder,
        top_encoder=mlp.GaussianMLP(top_hidden_dims, top.latent_dim, parts.activation,
                                    parts.kernel_init, parts.dropout_rate, parts.dtype),
        top_decoder=mlp.GaussianMLP(tuple(reversed(top_hidden_dims)),
                                    model_config.latent_dim, parts.activation,
                                    parts.kernel_init, parts.dropout_rate, parts.dtype),
        decoder=parts.decoder, head=parts.head, num_classes=parts.num_classes,
        image_shape=parts.image_shape)
  return VAE(encoder=parts.encoder, decoder=parts.decoder, head=parts.head,
             num_classes=parts.num_classes, image_shape=parts.image_shape)


# The registry: config.model.family -> its Registration (vae_jax/models/contract.py). A new
# family is one module with its REGISTRATION, and its line here.
FAMILIES = {
    "vae": contract.Registration(
        build=_build_vae,
        examples={  # A small model of each shipped config's kind.
            "mlp": {},  # configs/mlp.py
            "conv": {"model.name": "conv", "model.likelihood": "gaussian"},  # conv.py
            "mlp2d": {"model.likelihood": "gaussian", "model.latent_dim": 2},  # mlp2d.py
            "cvae": {"model.likelihood": "gaussian", "model.latent_dim": 2,  # cvae.py
                     "model.conditional": True},
            "two_layer": {"model.stochastic_layers": 2},  # iwae.py:layers=2
            "two_layer_conditional": {"model.stochastic_layers": 2,
                                      "model.conditional": True},
        }),
    "vampprior": vampprior.REGISTRATION,
    "iaf": iaf.REGISTRATION,
}


def get_model(model_config, image_shape, dtype: str = "float32") -> contract.Family:
  """A pure module of the family `config.model.family`, built from `config.model` (read
  here, once, outside any jitted code) for images of `image_shape` (H, W, C): the data's,
  config.data.image_shape once a run has read it.

  `dtype` (config.dtype) is the dtype of the networks' computation; parameters, the
  sampling and the losses are float32 whatever it is.
  """
  if len(tuple(image_shape)) != 3:
    raise ValueError(f"image_shape={tuple(image_shape)!r} must be (height, width, channels): "
                     "the data's, config.data.image_shape once the run has read the data.")
  image_shape = tuple(int(d) for d in image_shape)
  head = _head(model_config, image_shape[-1])
  output_shape = image_shape[:2] + (head.outputs_per_pixel(image_shape[-1]),)
  compute_dtype = jnp.dtype(dtype)
  activation = _activation(model_config.activation, model_config.negative_slope)
  kernel_init = KERNEL_INITS[model_config.kernel_init](model_config.init_stddev)
  dropout_rate = model_config.dropout_rate
  if model_config.name == "mlp":
    hidden_dims = tuple(model_config.hidden_dims)
    encoder = mlp.MLPEncoder(hidden_dims, model_config.latent_dim, activation, kernel_init,
                             dropout_rate, compute_dtype)
    decoder = mlp.MLPDecoder(hidden_dims, output_shape, activation, kernel_init,
                             dropout_rate, compute_dtype)
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
        kernel_size=spec.kernel_size, output_shape=output_shape, activation=activation,
        conv_activation=_activation(spec.decoder_conv_activation,
                                    model_config.negative_slope),
        kernel_init=kernel_init, dropout_rate=dropout_rate, dtype=compute_dtype,
        output=spec.decoder_output)
  else:
    raise ValueError(f"Unknown config.model.name={model_config.name!r}.")
  if model_config.family not in FAMILIES:
    raise ValueError(f"Unknown config.model.family={model_config.family!r}; registered: "
                     f"{', '.join(map(repr, FAMILIES))}.")
  parts = contract.Parts(
      encoder=encoder, decoder=decoder, head=head,
      num_classes=model_config.num_classes if model_config.conditional else 0,
      image_shape=image_shape, activation=activation, kernel_init=kernel_init,
      dropout_rate=dropout_rate, dtype=compute_dtype)
  return FAMILIES[model_config.family].build(model_config, parts)


__all__ = ["VAE", "TwoLayerVAE", "BernoulliHead", "GaussianHead", "LogisticMixtureHead",
           "FAMILIES", "get_model", "reparameterize"]
