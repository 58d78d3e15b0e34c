"""Samples from a finished (or running) run's latest checkpoint, without retraining.

    python -m vae_jax.sample --workdir=runs/cvae --label=7 --num=64

Rebuilds the model from workdir/config.json, restores the latest checkpoint and writes
`--num` samples from the prior under workdir/figures/ (and to TensorBoard): of class
`--label` for a conditional model (samples_label<label>.png), else prior_samples.png.
With --all_figures it also redraws every other figure of the run (this loads the test
split and takes longer).
"""

import sys

from absl import app
from absl import flags
from clu import metric_writers

from vae_jax import checkpoint
from vae_jax import input_pipeline
from vae_jax import visualize
from vae_jax import workdir as workdir_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A run's workdir (holds config.json and checkpoints/).")
flags.DEFINE_integer("label", None, "Class to sample (conditional models); default: "
                     "config.figures.label.")
flags.DEFINE_integer("num", 64, "Number of samples from the prior.")
flags.DEFINE_bool("all_figures", False, "Also redraw every other figure of the run.")
flags.mark_flags_as_required(["workdir"])


def make_run_figures(workdir: str, *, label: int | None, num: int,
                     all_figures: bool = False) -> list[str]:
  """Writes the figures; returns their paths. Raises ValueError on a bad request."""
  run = workdir_lib.load_run(workdir)
  config, model, params, step = run.config, run.model, run.params, run.step
  if label is not None and not model.conditional:
    raise ValueError(f"--label={label} needs a conditional model; the run in {workdir} has "
                     "config.model.conditional=False. Drop --label.")
  if label is not None and not 0 <= label < model.num_classes:
    raise ValueError(f"--label={label} must be in [0, {model.num_classes}).")
  if num <= 0:
    raise ValueError(f"--num={num} must be positive.")

  named_figures = {}
  if all_figures:
    test_split = input_pipeline.load_splits(config.data)["test"]
    named_figures = visualize.make_figures(model, params, config, test_split,
                                           run.keys["figures"],
                                           history=workdir_lib.read_history(workdir, step))
  name, figure = visualize.sample_figure(model, params, config, run.keys["figures"],
                                         num=num, label=label)
  named_figures[name] = figure
  with metric_writers.ensure_flushes(workdir_lib.open_writer(workdir)) as writer:
    return workdir_lib.write_figures(workdir, writer, step, named_figures)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  checkpoint.quiet_orbax_logging()
  try:
    paths = make_run_figures(FLAGS.workdir, label=FLAGS.label, num=FLAGS.num,
                             all_figures=FLAGS.all_figures)
  except (ValueError, input_pipeline.DataError) as error:
    sys.exit(str(error))
  for path in paths:
    print(path)


if __name__ == "__main__":
  app.run(main)
