"""Ablation sweeps: python -m vae_jax.sweep --sweep=experiments/latent_dim.py --workdir=DIR

A sweep file defines `get_sweep()` returning a `Sweep`: a base config file, overrides
shared by every run, a list of points (each a dict of config overrides; `product` builds
a grid) and the seeds. Every (point, seed) is an ordinary training run in its own
workdir, DIR/<point>/seed=<seed>, so it resumes where it stopped, and a finished run
(one with a result.json) is skipped when the command is run again.

Modes (--mode):
  sequential  one run after the other on the local devices (data-parallel as usual);
  vectorized  runs that differ only in the seed and numeric hyperparameters
              (steps.VECTORIZABLE_KEYS) train together as one vmapped program
              (train.train_group), up to --max_models_per_program at a time.
Across independent processes or hosts: --num_shards=N --shard_index=I trains every N-th
run from the I-th on, each process on its own devices, all writing under the same DIR (a
shared filesystem); every process aggregates what has finished when it ends, and
--aggregate_only collects the whole sweep once all are done. (These are not
jax.distributed processes: each shard is an ordinary single-host program.)

Results (vae_jax/sweep_results.py): DIR/results.csv (a row per run), DIR/results.md
(mean ± std over seeds, and each point's difference to a baseline point, --baseline,
paired by seed with a 95% paired t interval) and DIR/<metric>.png against the swept values;
--report=FOLDER also writes them into FOLDER/README.md, keeping the text written there by
hand.
"""

import ast
import dataclasses
import itertools
import os
import signal
import sys
import time

from absl import app
from absl import flags
from absl import logging
from etils import epath
import jax

from vae_jax import checkpoint
from vae_jax import config_schema
from vae_jax import input_pipeline
from vae_jax import steps
from vae_jax import sweep_results
from vae_jax import train
from vae_jax import workdir as workdir_lib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_FILE = "result.json"


@dataclasses.dataclass(frozen=True)
class Sweep:
  """What to train. `config` is a config file's path relative to the repository root."""
  question: str
  config: str
  points: list[dict]
  seeds: tuple[int, ...] = (0,)
  config_arg: str | None = None
  fixed: dict = dataclasses.field(default_factory=dict)


def product(axes: dict[str, list]) -> list[dict]:
  """Every combination: product({"a": [1, 2], "b": ["x"]}) -> [{a: 1, b: x}, {a: 2, b: x}]."""
  keys = list(axes)
  return [dict(zip(keys, values)) for values in itertools.product(*axes.values())]


@dataclasses.dataclass(frozen=True)
class SweepRun:
  """One (point, seed) of a sweep: its overrides, name, workdir and full config."""
  point: dict
  seed: int
  name: str
  workdir: str
  config: object


def point_name(point: dict) -> str:
  """'model.latent_dim=2,loss.kl_weight=0.5': a readable, file-safe directory name."""
  return sweep_results.point_name(point)


def with_overrides(sweep: Sweep, extra_overrides: dict | None) -> Sweep:
  """The sweep as its runs were configured: --set overrides join its fixed ones (so the
  report's "Every run" line says what was run)."""
  return dataclasses.replace(sweep, fixed={**sweep.fixed, **(extra_overrides or {})})


def load_sweep(path: str) -> tuple[str, Sweep]:
  """(name, Sweep) from a sweep file; the name is the file's stem."""
  if not os.path.isfile(path):
    raise ValueError(f"Sweep file {path} does not exist (e.g. experiments/latent_dim.py).")
  # Sweep files may share settings (`from experiments.latent_dim import ...`): make the
  # folder that holds experiments/ importable, from any working directory.
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  if root not in sys.path:
    sys.path.insert(0, root)
  module = config_schema.load_module(path)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"{path} has no get_sweep() returning a vae_jax.sweep.Sweep.")
  sweep = module.get_sweep()
  if not sweep.points or not sweep.seeds:
    raise ValueError(f"{path}: a sweep needs at least one point and one seed.")
  return os.path.splitext(os.path.basename(path))[0], sweep


def expand(sweep: Sweep, workdir: str, extra: dict | None = None) -> list[SweepRun]:
  """Every (point, seed) with its validated config; any bad key or value fails here,
  naming the run, before anything trains."""
  runs = []
  names = [point_name(point) for point in sweep.points]
  if len(set(names)) != len(names):
    raise ValueError("Two points of the sweep are the same: " + ", ".join(
        sorted({n for n in names if names.count(n) > 1})))
  for point, name in zip(sweep.points, names):
    for seed in sweep.seeds:
      config = config_schema.load_file(os.path.join(REPO_ROOT, sweep.config),
                                       sweep.config_arg)
      config.lock()
      try:
        for key, value in {**sweep.fixed, **(extra or {}), **point, "seed": seed}.items():
          config_schema.override(config, key, value)
        config_schema.validate(config)
      except ValueError as error:
        raise ValueError(f"Run {name}, seed {seed}: {error}") from None
      runs.append(SweepRun(point=point, seed=seed, name=f"{name}/seed={seed}",
                           workdir=os.path.join(workdir, name, f"seed={seed}"),
                           config=config))
  return runs


def is_finished(run: SweepRun) -> bool:
  return epath.Path(run.workdir, RESULT_FILE).exists()


def _write_result(run: SweepRun, summary: dict, wall_seconds: float,
                  models_per_program: int) -> None:
  result = {"name": run.name, "point": run.point, "seed": run.seed, "summary": summary,
            "wall_seconds": wall_seconds, "models_per_program": models_per_program,
            "machine": sweep_results.machine()}
  workdir_lib.write_json(run.workdir, RESULT_FILE, result)


def groups_for(runs: list[SweepRun], mode: str, max_models: int) -> list[list[SweepRun]]:
  """The programs to train: one run each (sequential), or runs that can share a vmapped
  program together, in the sweep's order, at most max_models (0: no limit) per group."""
  if mode == "sequential":
    return [[run] for run in runs]
  by_program = {}
  for run in runs:
    by_program.setdefault(steps.program_key(run.config), []).append(run)
  groups = []
  for members in by_program.values():
    size = max_models or len(members)
    groups += [members[i:i + size] for i in range(0, len(members), size)]
  return groups


def train_runs(group: list[SweepRun]) -> None:
  """Trains one program's runs (train.train_group) and writes each one's result.json.

  wall_seconds is the program's time divided among its runs."""
  start = time.time()
  summaries = train.train_group([run.config for run in group], [run.workdir for run in group])
  seconds = (time.time() - start) / len(group)
  for run, summary in zip(group, summaries):
    _write_result(run, summary, seconds, len(group))


def run_sweep(sweep_path: str, workdir: str, *, mode: str = "sequential",
              max_models_per_program: int = 0, num_shards: int = 1, shard_index: int = 0,
              extra_overrides: dict | None = None, report_dir: str | None = None,
              command: str = "", baseline: str | None = None) -> list[str]:
  """Trains this process's unfinished share of the sweep, then aggregates what has
  finished, with paired differences to `baseline` (a point's name; None: the first).
  Returns the names of the runs that failed (their errors are logged)."""
  if mode not in ("sequential", "vectorized"):
    raise ValueError(f"--mode={mode!r} is not one of 'sequential', 'vectorized'.")
  if num_shards < 1:
    raise ValueError(f"--num_shards={num_shards} must be >= 1.")
  if not 0 <= shard_index < num_shards:
    raise ValueError(f"--shard_index={shard_index} must be in [0, --num_shards="
                     f"{num_shards}).")
  if max_models_per_program < 0:
    raise ValueError(f"--max_models_per_program={max_models_per_program} must be >= 0 "
                     "(0: no limit).")
  name, sweep = load_sweep(sweep_path)
  runs = expand(sweep, workdir, extra_overrides)
  sweep_results.baseline_name(sweep, baseline)  # An unknown name fails before training.
  mine = runs[shard_index::num_shards]
  todo = [run for run in mine if not is_finished(run)]
  logging.info("Sweep %s: %d runs; this process's share is %d, of which %d are finished "
               "and %d to train (%s).", name, len(runs), len(mine), len(mine) - len(todo),
               len(todo), mode)
  groups = groups_for(todo, mode, max_models_per_program)
  for group in groups:  # Every group's keys are checked before anything trains.
    try:
      steps.check_vectorizable([run.config for run in group])
    except ValueError as error:
      raise ValueError(f"Runs {', '.join(run.name for run in group)}: {error}") from None
  failed = []
  for group in groups:
    names = ", ".join(run.name for run in group)
    logging.info("Training %s.", names)
    try:
      train_runs(group)
    except (train.NonFiniteLossError, workdir_lib.ConfigMismatchError, ValueError) as error:
      # One bad run does not stop the sweep; it is reported and left unfinished.
      logging.error("Failed: %s: %s", names, error)
      failed += [run.name for run in group]
  if jax.process_index() == 0:
    sweep_results.aggregate(with_overrides(sweep, extra_overrides), runs, workdir,
                            name=name, report_dir=report_dir, command=command,
                            baseline=baseline)
  return failed


def aggregate_sweep(sweep_path: str, workdir: str, *, extra_overrides: dict | None = None,
                    report_dir: str | None = None, command: str = "",
                    baseline: str | None = None) -> None:
  """What --aggregate_only runs: collects the sweep's finished runs into workdir's
  results (and report_dir's README.md), as run_sweep does after training, with paired
  differences to `baseline` (a point's name; None: the first)."""
  name, sweep = load_sweep(sweep_path)
  runs = expand(sweep, workdir, extra_overrides)
  sweep_results.aggregate(with_overrides(sweep, extra_overrides), runs, workdir, name=name,
                          report_dir=report_dir, command=command, baseline=baseline)


FLAGS = flags.FLAGS


def _define_flags():
  """Called by the command line only: sweep files import this module too."""
  flags.DEFINE_string("sweep", None, "Sweep file, e.g. experiments/latent_dim.py.")
  flags.DEFINE_string("workdir", None, "Directory of the sweep's runs and results.")
  flags.DEFINE_enum("mode", "sequential", ["sequential", "vectorized"],
                    "sequential: one run at a time; vectorized: runs differing only in seed "
                    "and numeric hyperparameters train as one vmapped program.")
  flags.DEFINE_integer("max_models_per_program", 0,
                       "vectorized: at most this many runs per program (0: no limit).")
  flags.DEFINE_integer("num_shards", 1, "Independent processes (or hosts) sharing the "
                       "sweep's runs, each training every num_shards-th run.")
  flags.DEFINE_integer("shard_index", 0, "This process's share, in [0, num_shards).")
  flags.DEFINE_multi_string("set", [], "KEY=VALUE: a config override for every run, e.g. "
                            "--set=train.num_epochs=1 (values are Python literals).")
  flags.DEFINE_bool("aggregate_only", False, "Only collect finished runs into the results.")
  flags.DEFINE_string("report", None, "Folder whose README.md gets the results (the text "
                      "outside the generated block is kept), with the plots beside it.")
  flags.DEFINE_string("baseline", None, "The point the report's paired differences are "
                      "taken to, by its name in results.csv's point column, e.g. "
                      "loss.kl_weight=1.0 (default: the sweep's first point).")
  flags.mark_flags_as_required(["sweep", "workdir"])


def _parse_set(items: list[str]) -> dict:
  overrides = {}
  for item in items:
    key, sep, text = item.partition("=")
    if not sep:
      raise ValueError(f"--set={item!r} must be KEY=VALUE, e.g. --set=train.num_epochs=1.")
    try:
      overrides[key] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      overrides[key] = text  # A bare word is a string, as on main's command line.
  return overrides


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  checkpoint.quiet_orbax_logging()
  command = " ".join(["python -m vae_jax.sweep"] + sys.argv[1:])
  try:
    if FLAGS.aggregate_only:
      aggregate_sweep(FLAGS.sweep, FLAGS.workdir, extra_overrides=_parse_set(FLAGS.set),
                      report_dir=FLAGS.report, command=command, baseline=FLAGS.baseline)
      return
    failed = run_sweep(FLAGS.sweep, FLAGS.workdir, mode=FLAGS.mode,
                       max_models_per_program=FLAGS.max_models_per_program,
                       num_shards=FLAGS.num_shards, shard_index=FLAGS.shard_index,
                       extra_overrides=_parse_set(FLAGS.set), report_dir=FLAGS.report,
                       command=command, baseline=FLAGS.baseline)
  except (ValueError, input_pipeline.DataError) as error:
    sys.exit(str(error))
  except train.PreemptedError as preempted:
    print(f"{preempted} Finished runs are kept; the same sweep command continues.",
          file=sys.stderr)
    sys.exit(128 + signal.SIGTERM)
  except (train.WriteFailedError, train.PeerLostError) as error:
    print(f"{error} Finished runs are kept; the same sweep command continues.",
          file=sys.stderr)
    sys.stderr.flush()
    os._exit(1)  # pylint: disable=protected-access  (as vae_jax.main: no shutdown noise)
  if failed:
    sys.exit(f"{len(failed)} runs failed (see the log): {', '.join(failed)}. The others "
             "finished; fix the cause and run the same command to train the failed ones.")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
