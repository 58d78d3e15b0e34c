"""Bernoulli or Gaussian pixels on (statically) binarized MNIST?

Seed 000's MLP VAE on the binarized_mnist dataset (Larochelle's fixed binarization)
with a Bernoulli decoder, a Gaussian with fixed unit variance, and a Gaussian with a
learned variance per pixel. A Gaussian's NLL is a density of 0/1 pixels, so compare
samples and reconstructions as well as numbers: only the Bernoulli's NLL is a
probability in nats.

    python -m vae_jax.sweep --sweep=experiments/likelihood.py --workdir=runs/sweeps/likelihood
"""

from vae_jax import sweep


def get_sweep():
  return sweep.Sweep(
      question="Bernoulli or Gaussian pixels on binarized MNIST?",
      config="configs/mlp.py",
      fixed={"data.name": "binarized_mnist", "data.binarization": "static",
             "train.num_epochs": 10, "eval.num_importance_samples": 200},
      points=[{"model.likelihood": "bernoulli"},
              {"model.likelihood": "gaussian", "model.gaussian_variance": "fixed"},
              {"model.likelihood": "gaussian",
               "model.gaussian_variance": "learned_per_pixel"}],
      seeds=(0, 1))
