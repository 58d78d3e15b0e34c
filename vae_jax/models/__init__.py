"""Model families, built from `config.model` by `get_model`."""

import flax.linen as nn

from vae_jax.models import mlp
from vae_jax.models.vae import VAE, reparameterize

IMAGE_SHAPE = (28, 28, 1)

ACTIVATIONS = {
    "tanh": nn.tanh,
    "relu": nn.relu,
    "leaky_relu": nn.leaky_relu,
    "elu": nn.elu,
    "gelu": nn.gelu,
    "softplus": nn.softplus,
}

KERNEL_INITS = {
    "glorot_uniform": nn.initializers.glorot_uniform(),
    "lecun_normal": nn.initializers.lecun_normal(),
    "he_normal": nn.initializers.he_normal(),
}


def get_model(model_config) -> VAE:
  """A pure VAE module for `config.model` (read here, once, outside any jitted code)."""
  activation = ACTIVATIONS[model_config.activation]
  kernel_init = KERNEL_INITS[model_config.kernel_init]
  if model_config.name == "mlp":
    hidden_dims = tuple(model_config.hidden_dims)
    return VAE(
        encoder=mlp.MLPEncoder(hidden_dims, model_config.latent_dim, activation, kernel_init),
        decoder=mlp.MLPDecoder(hidden_dims, IMAGE_SHAPE, activation, kernel_init))
  raise ValueError(f"Unknown config.model.name={model_config.name!r}.")


__all__ = ["VAE", "get_model", "reparameterize", "IMAGE_SHAPE"]
