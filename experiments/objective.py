"""ELBO or IWAE, and how many samples: k in {1, 5, 50} (Burda et al. 2015, table 1).

configs/iwae.py's one-layer model (784-200-200-50) on dynamically binarized MNIST for
the schedule's first two stages (4 epochs), the test NLL from k = 1000. With k = 1 the
two objectives are the same bound.

    python -m vae_jax.sweep --sweep=experiments/objective.py --workdir=runs/sweeps/objective
"""

from vae_jax import sweep


def get_sweep():
  return sweep.Sweep(
      question="ELBO or IWAE, with k = 1, 5 or 50 samples per example?",
      config="configs/iwae.py",
      config_arg="objective=vae,k=1",
      fixed={"train.schedule_stages": 2, "train.num_epochs": 4,
             "eval.num_importance_samples": 1000, "figures.final": False},
      points=sweep.product({"loss.objective": ["elbo", "iwae"],
                            "loss.num_samples": [1, 5, 50]}),
      seeds=(0,))
