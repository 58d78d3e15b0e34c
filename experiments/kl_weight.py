"""beta-VAE: how do the KL weight beta's values trade reconstruction against KL?

Seed 000's MLP VAE on dynamically binarized MNIST (as experiments/latent_dim.py), with
the loss reconstruction + beta * KL for beta in {0.5, 1, 2, 4}. beta and the seed are
numbers inside the step, so all 8 runs can train as one vmapped program:

    python -m vae_jax.sweep --sweep=experiments/kl_weight.py --workdir=runs/sweeps/kl_weight \
        --mode=vectorized
"""

from vae_jax import sweep

from experiments.latent_dim import MLP_BUDGET


def get_sweep():
  return sweep.Sweep(
      question="How does the KL weight β trade reconstruction against KL, and what does it "
               "cost in test NLL?",
      config="configs/mlp.py",
      fixed=MLP_BUDGET,
      points=sweep.product({"loss.kl_weight": [0.5, 1.0, 2.0, 4.0]}),
      seeds=(0, 1))
