"""Seed 003, part 2: the MLP VAE with a 2-D latent, for the latent manifold.

784-256 ReLU encoder, latent 2, 2-256-784 decoder with a linear output (a Gaussian mean);
truncated-normal init with stddev 0.001 (the seed notes that a larger init gave NaN);
Adam 1e-3, batch 128, 50 epochs.

The seed's loss is 0.5 * squared error: a Gaussian likelihood with unit variance, whose
negative log-likelihood adds the constant (784/2) log(2 pi) = 720.45 nats; our -ELBO
includes it. The seed sums that squared error over the batch but averages the KL over it,
so per example its KL weight is 1/128 (= 1/batch size); `loss.kl_weight` reproduces this.
The -ELBO we report always weighs the KL fully. For the standard VAE objective:
--config.loss.kl_weight=1.

    python -m vae_jax.main --config=configs/mlp2d.py --workdir=runs/mlp2d
"""

from vae_jax import config_schema


def get_config(arg=None):
  config_schema.parse_config_arg(arg, "configs/mlp2d.py")  # No options: refuses any.
  config = config_schema.default_config()
  config.data.name = "mnist"
  config.data.binarization = "none"
  config.data.validation_size = 5000

  config.model.name = "mlp"
  config.model.hidden_dims = (256,)
  config.model.latent_dim = 2
  config.model.activation = "relu"
  config.model.kernel_init = "truncated_normal"
  config.model.init_stddev = 0.001
  config.model.likelihood = "gaussian"
  config.model.gaussian_mean = "linear"
  config.model.gaussian_variance = "fixed"
  config.model.gaussian_fixed_variance = 1.0

  config.loss.objective = "elbo"
  config.loss.num_samples = 1
  config.train.batch_size = 128
  config.loss.kl_weight = 1.0 / config.train.batch_size  # See the docstring.
  config.train.learning_rate = 1e-3
  config.train.num_epochs = 50
  config.figures.every_epochs = 10
  return config
