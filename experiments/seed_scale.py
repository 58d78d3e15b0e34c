"""Prints a run's per-epoch losses in nats and on its seed's own scale, as README's tables.

    python experiments/seed_scale.py runs/cvae [--epochs=1,10,50]

Reads the run's config.json and epoch_metrics.jsonl (written by python -m vae_jax.main).
Our -ELBO is a proper negative log-likelihood bound in nats per image. The seeds report:
  - seed 000 (Bernoulli): the same number (cross-entropy + KL per image);
  - seeds 001/002 (Gaussian, variance 0.5): summed squared error + KL per image, i.e. our
    -ELBO minus the constant (D/2) log(2 pi 0.5);
  - seed 003 (Gaussian, variance 1): 0.5 * squared error summed over the whole batch + the
    batch-mean KL, i.e. batch_size * (reconstruction - (D/2) log(2 pi)) + KL.
"""

import argparse
import json
import math
import os

from vae_jax import workdir as workdir_lib

_NUM_PIXELS = 28 * 28


def seed_scale(entry: dict, config: dict, split: str) -> float:
  """The seed's own loss for one epoch's metrics of `split` (train or test)."""
  model = config["model"]
  reconstruction, kl = entry[f"{split}_reconstruction_nats"], entry[f"{split}_kl_nats"]
  if model["likelihood"] == "bernoulli":
    return reconstruction + kl
  variance = model["gaussian_fixed_variance"]
  constant = 0.5 * _NUM_PIXELS * math.log(2 * math.pi * variance)
  if variance == 1.0:  # Seed 003: a batch-summed 0.5 * squared error.
    return config["train"]["batch_size"] * (reconstruction - constant) + kl
  return reconstruction - constant + kl  # Seeds 001/002: the squared error per image.


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("workdir")
  parser.add_argument("--epochs", default="", help="comma-separated epochs; default: all")
  args = parser.parse_args()
  with open(os.path.join(args.workdir, "config.json")) as f:
    config = json.load(f)
  history = workdir_lib.read_history(args.workdir)
  wanted = {float(e) for e in args.epochs.split(",") if e}
  print("| epoch | train −ELBO | reconstruction | KL | test −ELBO | train, seed's scale |")
  print("| ---: | ---: | ---: | ---: | ---: | ---: |")
  for entry in history:
    if wanted and entry["epoch"] not in wanted:
      continue
    print(f"| {entry['epoch']:g} | {entry['train_neg_elbo_nats']:.2f} | "
          f"{entry['train_reconstruction_nats']:.2f} | {entry['train_kl_nats']:.2f} | "
          f"{entry['test_neg_elbo_nats']:.2f} | {seed_scale(entry, config, 'train'):.2f} |")


if __name__ == "__main__":
  main()
