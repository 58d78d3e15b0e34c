"""Free bits: does a floor of 0.5 nats per latent dimension keep more of them active?

Seed 000's MLP VAE on dynamically binarized MNIST (as experiments/latent_dim.py) with
free bits 0 (off) and 0.5 nats per dimension (vectorizable: --mode=vectorized).

    python -m vae_jax.sweep --sweep=experiments/free_bits.py --workdir=runs/sweeps/free_bits \
        --mode=vectorized
"""

from vae_jax import sweep

from experiments.latent_dim import MLP_BUDGET


def get_sweep():
  return sweep.Sweep(
      question="Does a free-bits floor of 0.5 nats per latent dimension change the test NLL "
               "and the KL?",
      config="configs/mlp.py",
      fixed=MLP_BUDGET,
      points=sweep.product({"loss.free_bits": [0.0, 0.5]}),
      seeds=(0, 1))
