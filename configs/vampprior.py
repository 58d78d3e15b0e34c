"""VampPrior (Tomczak & Welling 2018) on dynamically binarized MNIST.

The prior p(z) = 1/K sum_k q(z|u_k) over K = 500 learned pseudo-inputs
(vae_jax/models/vampprior.py), on the setup of the paper's MLP rows: 784-300-300 encoder
and mirrored decoder (tanh; the paper's layers are gated), latent 40, Bernoulli
likelihood; 50000 training images with 10000 held out for validation, Adam 5e-4,
batch 100, the KL weight warmed up linearly over the first 100 epochs; the test NLL with
k = 5000 at the end. The paper trains up to 2000 epochs with early stopping (its Table 2:
VAE 88.56, VAE + VampPrior 85.57 nats); here 200 by default.

Variants by arg: `short` (20 epochs, warm-up over 10) for a CPU budget of minutes. The
same setup with the standard N(0, I) prior, for a paired comparison, is
--config.model.family=vae.

    python -m vae_jax.main --config=configs/vampprior.py --workdir=runs/vampprior
    python -m vae_jax.main --config=configs/vampprior.py:short --config.model.family=vae --workdir=runs/vae40_short
"""

from vae_jax import config_schema


def get_config(arg=None):
  options = config_schema.parse_config_arg(arg, "configs/vampprior.py", short=False)
  config = config_schema.default_config()
  config.data.name = "mnist"
  config.data.binarization = "dynamic"
  config.data.validation_size = 10000

  config.model.family = "vampprior"
  config.model.vampprior.num_pseudo_inputs = 500
  config.model.name = "mlp"
  config.model.hidden_dims = (300, 300)
  config.model.latent_dim = 40
  config.model.activation = "tanh"
  config.model.likelihood = "bernoulli"

  config.loss.objective = "elbo"
  config.loss.num_samples = 1
  config.loss.kl_warmup_epochs = 10.0 if options.short else 100.0

  config.train.batch_size = 100
  config.train.learning_rate = 5e-4
  config.train.num_epochs = 20 if options.short else 200

  config.eval.num_importance_samples = 5000
  return config
