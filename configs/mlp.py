"""Seed 000: the MLP VAE on grayscale MNIST.

784-512-256 tanh encoder, Gaussian posterior with latent 128, mirrored decoder with
Bernoulli logits, glorot-uniform init; Adam 1e-3, batch 100, 20 epochs on the 55000
training images of the seeds' TF MNIST reader (5000 held out for validation).

    python -m vae_jax.main --config=configs/mlp.py --workdir=runs/mlp
    python -m vae_jax.main --config=configs/mlp.py --config.model.latent_dim=32
"""

from vae_jax import config_schema


def get_config(arg=None):
  del arg  # No variants yet.
  config = config_schema.default_config()
  config.data.name = "mnist"
  config.data.binarization = "none"
  config.data.validation_size = 5000

  config.model.name = "mlp"
  config.model.hidden_dims = (512, 256)
  config.model.latent_dim = 128
  config.model.activation = "tanh"
  config.model.kernel_init = "glorot_uniform"
  config.model.likelihood = "bernoulli"

  config.loss.objective = "elbo"
  config.loss.num_samples = 1

  config.train.batch_size = 100
  config.train.learning_rate = 1e-3
  config.train.num_epochs = 20
  return config
