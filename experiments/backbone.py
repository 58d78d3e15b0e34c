"""MLP or conv backbone, everything else equal.

Seed 000's setup (Bernoulli on dynamically binarized MNIST, latent 128, Adam 1e-3,
batch 100, 10 epochs) with the MLP encoder/decoder or the conv layers of seeds 001/002
(model.conv.* defaults). The conv runs take about 30 times as long on a CPU.

    python -m vae_jax.sweep --sweep=experiments/backbone.py --workdir=runs/sweeps/backbone
"""

from vae_jax import sweep

from experiments.latent_dim import MLP_BUDGET


def get_sweep():
  return sweep.Sweep(
      question="MLP or conv encoder and decoder, everything else equal?",
      config="configs/mlp.py",
      fixed={**MLP_BUDGET, "train.steps_per_dispatch": 1,  # XLA CPU convs in lax.scan: slow.
             "eval.nll_batch_size": 10, "eval.importance_chunk_size": 200},
      points=[{"model.name": "mlp"}, {"model.name": "conv"}],
      seeds=(0, 1))
