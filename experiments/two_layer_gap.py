"""Why does the two-layer VAE trail the one-layer one after 13 epochs?

Burda et al. 2015's models on the short protocol (configs/iwae.py:...,short: 13 epochs,
the test NLL at k = 5000), one change at a time against the shipped two-layer VAE:

- the one-layer VAE, with its closed-form KL and with the Monte-Carlo KL that the
  two-layer model must use (isolates the sampled KL's noise);
- the two-layer VAE with a linear KL warm-up over the first 4 epochs (Sønderby et al.
  2016), and with free bits per layer (0.1 nats per unit: 10 nats for z1, 5 for z2).

The one-layer points' configs are configs/iwae.py:objective=vae,k=1,short key for key.

    python -m vae_jax.sweep --sweep=experiments/two_layer_gap.py \\
        --workdir=runs/sweeps/two_layer_gap --baseline=model.stochastic_layers=2 \\
        --report=experiments/two_layer_gap
"""

from vae_jax import sweep

_ONE_LAYER = {"model.stochastic_layers": 1, "model.latent_dim": 50}


def get_sweep():
  return sweep.Sweep(
      question="Why does the two-layer VAE trail the one-layer one after 13 epochs: the "
               "model, the sampled KL, or the optimization?",
      config="configs/iwae.py",
      config_arg="layers=2,objective=vae,k=1,short",
      fixed={"figures.final": False},
      points=[_ONE_LAYER,
              {**_ONE_LAYER, "loss.kl_estimator": "monte_carlo"},
              {"model.stochastic_layers": 2},
              {"model.stochastic_layers": 2, "loss.kl_warmup_epochs": 4.0},
              {"model.stochastic_layers": 2, "loss.free_bits": 0.1}],
      seeds=(0, 1))
