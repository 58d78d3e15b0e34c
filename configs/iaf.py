"""An inverse autoregressive flow posterior (Kingma et al. 2016) on dynamically binarized
MNIST.

q(z|x) is the encoder's diagonal Gaussian followed by 2 IAF steps, each a MADE with one
hidden layer of 320 units (vae_jax/models/iaf.py); the prior stays N(0, I). The rest is
configs/vampprior.py's setup (784-300-300 tanh, latent 40, Bernoulli, 50000/10000
train/validation, Adam 5e-4, batch 100, KL warm-up over the first 100 epochs, 200
epochs, test NLL with k = 5000), so the two families and the plain VAE
(--config.model.family=vae) compare on one footing. (The paper's MNIST IAF is
convolutional, with ResNet blocks and a context from the encoder: 79.88 nats.)

Variants by arg: `short` (20 epochs, warm-up over 10); steps=N for N IAF steps.

    python -m vae_jax.main --config=configs/iaf.py --workdir=runs/iaf
    python -m vae_jax.main --config=configs/iaf.py:short,steps=4 --workdir=runs/iaf4_short
"""

from vae_jax import config_schema


def get_config(arg=None):
  options = config_schema.parse_config_arg(arg, "configs/iaf.py", short=False, steps=2)
  config = config_schema.load_shipped("vampprior", "short" if options.short else None)
  config.model.family = "iaf"
  config.model.iaf.steps = options.steps
  config.model.iaf.hidden_dim = 320
  return config
