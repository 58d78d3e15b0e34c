"""The new families and objectives against the one-layer VAE on Burda et al.'s short
protocol.

configs/iwae.py:objective=vae,k=1,short (784-200-200-50 tanh, Bernoulli, dynamically
binarized MNIST, batch 20, 13 epochs of the paper's schedule, the test NLL at
k = 5000), one change at a time: the VampPrior (K = 500 pseudo-inputs), an IAF
posterior (2 steps of width 320), and MIWAE with M = 5 bounds of K = 10 samples (the
same 50 samples per example as the IWAE k = 50 row of docs/iwae.md). Three seeds, paired
by seed against the VAE. The VampPrior without KL warm-up collapses on this protocol (KL
near 0, docs/models.md), so it runs with the KL weight warmed up over 4 epochs, as the
paper warms it up, beside the VAE with the same warm-up to pair it with
(--baseline='model.family=vae,loss.kl_warmup_epochs=4.0' for that difference).

    python -m vae_jax.sweep --sweep=experiments/families.py \\
        --workdir=runs/sweeps/families --baseline=model.family=vae \\
        --report=experiments/families
"""

from vae_jax import sweep


def get_sweep():
  return sweep.Sweep(
      question="What do a learned prior, a flow posterior and a tighter objective buy "
               "the one-layer VAE after 13 epochs?",
      config="configs/iwae.py",
      config_arg="objective=vae,k=1,short",
      fixed={"figures.final": False, "model.iaf.hidden_dim": 320},
      points=[{"model.family": "vae"},
              {"model.family": "vae", "loss.kl_warmup_epochs": 4.0},
              {"model.family": "vampprior", "loss.kl_warmup_epochs": 4.0},
              {"model.family": "iaf"},
              {"model.family": "vae", "loss.objective": "miwae", "loss.num_bounds": 5,
               "loss.num_samples": 10}],
      seeds=(0, 1, 2))
