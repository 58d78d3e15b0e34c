"""Trains a VAE: python -m vae_jax.main --config=configs/mlp.py --workdir=runs/mlp

Any config value can be overridden on the command line, e.g.
--config.model.latent_dim=32 --config.train.num_epochs=5; unknown keys are refused.
The same command on the same workdir resumes from its latest checkpoint. On SIGTERM the
run saves a checkpoint and exits with status 143 (128 + SIGTERM).
"""

import time

_START = time.perf_counter()  # Before the heavy imports, which the run's timings report.

import os
import signal
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from vae_jax import config_schema

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Training configuration file, e.g. configs/mlp.py.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and figures.")
flags.DEFINE_bool("distributed", False,
                  "Multi-host: call jax.distributed.initialize before anything else. Without "
                  "the three flags below JAX reads the cluster's environment (TPU pods, "
                  "SLURM, Open MPI, ...).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (--distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes (--distributed).")
flags.DEFINE_integer("process_id", None, "This process's index (--distributed).")
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
  # Imported once the config is known to be valid: they bring in TensorFlow (TFDS and
  # TensorBoard's writer), 3 of the 5 s it takes to start, so a bad config fails at once.
  from vae_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from vae_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from vae_jax import train  # pylint: disable=g-import-not-at-top
  from vae_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  if FLAGS.distributed:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
  checkpoint.quiet_orbax_logging()
  logging.info("JAX process %d of %d; devices: %s", jax.process_index(),
               jax.process_count(), jax.devices())
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir,
                             imports_seconds=time.perf_counter() - _START)
  except train.PreemptedError as preempted:
    print(preempted, file=sys.stderr)
    sys.exit(128 + signal.SIGTERM)
  except (workdir_lib.ConfigMismatchError, train.NonFiniteLossError,
          input_pipeline.DataError) as error:
    sys.exit(str(error))  # The message says what is wrong and what to do.
  except (train.WriteFailedError, train.PeerLostError) as error:
    print(error, file=sys.stderr)
    # At once: a failed save can leave orbax's writer threads with coroutines whose
    # garbage collection at a normal exit prints pages of tracebacks after the message,
    # and with a lost process jax.distributed's shutdown barrier would wait out its
    # heartbeat timeout and abort.
    sys.stderr.flush()
    os._exit(1)  # pylint: disable=protected-access


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
