"""Does KL warm-up help the conv VAE? Warm-up epochs in {0, 10}.

Seeds 001/002's conv VAE (configs/conv.py) for 20 epochs; with warm-up the KL weight
rises linearly from 0 to 1 over the first 10. Runs differing only in warm-up and seed
can share one program (--mode=vectorized).

    python -m vae_jax.sweep --sweep=experiments/kl_warmup.py --workdir=runs/sweeps/kl_warmup \
        --mode=vectorized
"""

from vae_jax import sweep


def get_sweep():
  return sweep.Sweep(
      question="Does a linear KL warm-up over 10 epochs help the conv VAE?",
      config="configs/conv.py",
      fixed={"train.num_steps": 0, "train.num_epochs": 20,
             "eval.num_importance_samples": 200, "figures.final": False},
      points=sweep.product({"loss.kl_warmup_epochs": [0.0, 10.0]}),
      seeds=(0, 1))
