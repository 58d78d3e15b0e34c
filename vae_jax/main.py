"""Trains a VAE: python -m vae_jax.main --config=configs/mlp.py --workdir=runs/mlp

Any config value can be overridden on the command line, e.g.
--config.model.latent_dim=32 --config.train.num_epochs=5; unknown keys are refused.
"""

import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from vae_jax import checkpoint
from vae_jax import config_schema
from vae_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Training configuration file, e.g. configs/mlp.py.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and figures.")
flags.mark_flags_as_required(["config", "workdir"])


def _parse_flags(argv):
  """absl's parser, with a clean message (not a traceback) for a bad --config.* override."""
  try:
    return app.parse_flags_with_usage(argv)  # Handles ordinary flag errors itself.
  except (AttributeError, KeyError, TypeError, ValueError) as error:
    message = str(error).strip("'\"").replace("\\n", " ").replace("\\'", "'")
    sys.exit(f"Bad config override on the command line: {message}\n"
             "Every key and its allowed values are in vae_jax/config_schema.py.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  try:
    config_schema.validate(FLAGS.config)  # Before any data loading or compilation.
  except ValueError as error:
    sys.exit(str(error))
  checkpoint.quiet_orbax_logging()
  logging.info("JAX devices: %s", jax.devices())
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
