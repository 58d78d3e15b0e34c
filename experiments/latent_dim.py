"""How do the test NLL and -ELBO change with the size of the latent space?

Seed 000's MLP VAE (784-512-256-z, Bernoulli) on dynamically binarized MNIST for 10
epochs; the test NLL from k = 200 importance samples. The latent sizes change the
program's shapes, so the runs train one by one (--mode=sequential).

    python -m vae_jax.sweep --sweep=experiments/latent_dim.py --workdir=runs/sweeps/latent_dim
"""

from vae_jax import sweep

# Shared by the sweeps of seed 000's model: a CPU budget of about a minute per run.
MLP_BUDGET = {"data.binarization": "dynamic", "train.num_epochs": 10,
              "eval.num_importance_samples": 200, "figures.final": False}


def get_sweep():
  return sweep.Sweep(
      question="How do the test NLL and −ELBO change with the size of the latent space?",
      config="configs/mlp.py",
      fixed=MLP_BUDGET,
      points=sweep.product({"model.latent_dim": [2, 8, 32, 128]}),
      seeds=(0, 1))
