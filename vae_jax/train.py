"""The training loop, the one place with side effects, for one run or K runs together.

`train_and_evaluate(config, workdir)` trains one run; `train_group(configs, workdirs)`
trains K runs that differ only in steps.VECTORIZABLE_KEYS as one vmapped program (a
`--mode=vectorized` sweep). Both are the same loop over a `Group`, which holds the device
side (the train state, stacked for K runs; the program; the data; the evaluators), and
one `RunRecord` per run, which reads that run's own config and owns its files, so every
run's workdir ends the same as if it trained alone (vae_jax/workdir.py lists the files).
The loop:

    dispatch steps -> record their metrics -> fetch and check them at log steps ->
    evaluate at epoch ends -> save -> draw figures -> stop on preemption

with the host acting only at the steps `Cadence` names. A run resumes from its latest
good checkpoint with the same data order and random numbers, so a resumed run ends with
the parameters and metrics of an uninterrupted one.
"""

import dataclasses
import os
import time

from absl import logging
from clu import metric_writers
from clu import parameter_overview
from etils import epath
import jax
import ml_collections
import numpy as np

from vae_jax import checkpoint
from vae_jax import config_schema
from vae_jax import evaluators as evaluators_lib
from vae_jax import input_pipeline
from vae_jax import models
from vae_jax import parallel
from vae_jax import progress
from vae_jax import steps
from vae_jax import visualize
from vae_jax import workdir as workdir_lib


class NonFiniteLossError(FloatingPointError):
  """Training produced NaN or inf; the message names the step and the bad terms."""


class PreemptedError(RuntimeError):
  """SIGTERM: a checkpoint was saved (the message says where); the same command resumes."""


class PeerLostError(RuntimeError):
  """A collective with the run's other processes failed: one of them stopped. The message
  names the last complete checkpoint; every process resumes with the same command."""


class WriteFailedError(RuntimeError):
  """A file of the run could not be written: the message names it, the OS error, the
  last good checkpoint, and that the same command resumes once the cause is fixed."""


@dataclasses.dataclass(frozen=True)
class Cadence:
  """When the host acts. Steps run in dispatches of `steps_per_dispatch` between the
  steps where it does (`next_stop`), then one at a time: two compiled programs."""
  steps_per_epoch: int
  num_steps: int
  log_every_steps: int
  checkpoint_every_steps: int  # 0: at epoch ends (and the end, and SIGTERM) only.
  steps_per_dispatch: int
  figures_every_epochs: int  # 0: figures at the end only.
  diagnostics_every_epochs: int  # 0: at the NLL epochs only.
  nll_at_epochs: tuple[int, ...]

  @classmethod
  def from_config(cls, config, steps_per_epoch: int, num_steps: int) -> "Cadence":
    return cls(steps_per_epoch=steps_per_epoch, num_steps=num_steps,
               log_every_steps=config.train.log_every_steps,
               checkpoint_every_steps=config.checkpoint_every_steps,
               steps_per_dispatch=config.train.steps_per_dispatch,
               figures_every_epochs=config.figures.every_epochs,
               diagnostics_every_epochs=config.eval.diagnostics_every_epochs,
               nll_at_epochs=tuple(config.eval.nll_at_epochs))

  def is_epoch_end(self, step: int) -> bool:
    return step % self.steps_per_epoch == 0 or step == self.num_steps

  def is_log_step(self, step: int) -> bool:
    return step % self.log_every_steps == 0 or self.is_epoch_end(step)

  def is_save_step(self, step: int) -> bool:
    every = self.checkpoint_every_steps
    return self.is_epoch_end(step) or bool(every and step % every == 0)

  def draws_figures(self, step: int) -> bool:
    every = self.figures_every_epochs
    epochs, partial = divmod(step, self.steps_per_epoch)
    return bool(every) and not partial and epochs % every == 0 and 0 < step < self.num_steps

  def _epoch_before_end(self, step: int) -> int | None:
    """The epochs completed at `step` when it ends an epoch before the run's end (the
    end has the final evaluation), else None."""
    epochs, partial = divmod(step, self.steps_per_epoch)
    return epochs if not partial and 0 < step < self.num_steps else None

  def evaluates_nll(self, step: int) -> bool:
    """The test NLL (eval.nll_samples_during_training) at an epoch of eval.nll_at_epochs."""
    return self._epoch_before_end(step) in self.nll_at_epochs

  def runs_diagnostics(self, step: int) -> bool:
    """The latent diagnostics every diagnostics_every_epochs epochs and at the NLL epochs."""
    epochs, every = self._epoch_before_end(step), self.diagnostics_every_epochs
    return epochs is not None and (bool(every) and epochs % every == 0
                                   or epochs in self.nll_at_epochs)

  def next_stop(self, step: int) -> int:
    """The first step after `step` where the host logs or saves (or the run ends)."""
    def next_multiple(every):
      return (step // every + 1) * every
    stops = [next_multiple(self.steps_per_epoch), self.num_steps,
             next_multiple(self.log_every_steps)]
    if self.checkpoint_every_steps:
      stops.append(next_multiple(self.checkpoint_every_steps))
    return min(stops)

  def dispatch_size(self, step: int) -> int:
    count = self.steps_per_dispatch
    return count if step + count <= self.next_stop(step) else 1


def check_finite(step_metrics: list[dict], first_step: int, checkpoint_step) -> None:
  """Raises on the first step with a NaN or inf in its metrics, unless it was skipped."""
  for offset, metrics in enumerate(step_metrics):
    if metrics.get("skipped"):
      continue
    bad = {name: float(value) for name, value in metrics.items() if not np.isfinite(value)}
    if bad:
      kept = (f"the last checkpoint (step {checkpoint_step}) was left in place"
              if checkpoint_step is not None else "no checkpoint was written")
      raise NonFiniteLossError(
          f"Non-finite training metrics at step {first_step + offset + 1}: {bad}. Lower "
          "config.train.learning_rate or check the data, or set "
          "config.train.skip_nonfinite_updates=True to skip such updates; "
          f"{kept}.")


def epoch_means(step_metrics: list[dict]) -> dict[str, float]:
  """Means over the epoch's steps, skipped updates left out (and counted), as float32
  arrays so that metrics restored from a checkpoint's JSON give the same bits."""
  kept = [m for m in step_metrics if not m.get("skipped")]
  means = {name: float(np.mean(np.asarray([m[name] for m in kept], np.float32)))
           if kept else float("nan")
           for name in ("neg_elbo_nats", "reconstruction_nats", "kl_nats", "loss")}
  if step_metrics and "skipped" in step_metrics[0]:
    means["skipped_updates"] = len(step_metrics) - len(kept)
  return means


def interval_means(step_metrics: list[dict]) -> dict[str, float]:
  """The metrics of the steps since the last log, skipped updates left out (and summed)."""
  kept = [m for m in step_metrics if not m.get("skipped")] or step_metrics
  interval = {name: float(np.mean([m[name] for m in kept])) for name in step_metrics[0]}
  if "skipped" in interval:
    interval["skipped"] = float(sum(m["skipped"] for m in step_metrics))
  return interval


def _with_split(split: str, numbers: dict) -> dict:
  """{'neg_elbo_nats': x} -> {'test_neg_elbo_nats': x}: a summary's names are the
  evaluators' with the split in front."""
  return {f"{split}_{name}": value for name, value in numbers.items()}


class RunRecord:
  """One run of a group: its config, keys and files, and what it has logged.

  It reads only its own config and writes only its own workdir: the interval means
  (train_interval/*), the epoch summaries (epoch_metrics.jsonl, TensorBoard, the log
  line), its checkpoints, figures and eval.json.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, label: str = ""):
    self.config, self.workdir = config, workdir
    self.label = label  # Prefixes its log lines when the group has several runs.
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # Local, gs://, ...
    self.checkpointer = checkpoint.Checkpointer(workdir, config.checkpoints_to_keep)
    workdir_lib.check_same_config(config, workdir, self.checkpointer.latest_step())
    workdir_lib.write_config(workdir, config)
    self.keys = steps.run_keys(config.seed)
    self.writer = workdir_lib.open_writer(workdir)
    self.history = []  # Per-epoch summaries, as epoch_metrics.jsonl holds them.
    self.epoch_metrics = []  # The current epoch's per-step metrics (host floats).
    self.final = {}  # The final evaluation's numbers, with the split in their names.

  def learning_rate(self, steps_per_epoch: int, step: int) -> float:
    """The rate this run's optimizer applied at its step `step` (its own schedule)."""
    return steps.learning_rate_at(self.config, steps_per_epoch, step - 1)

  def restore(self, checkpoint_step: int | None, saved_progress: dict) -> None:
    # The current epoch's per-step metrics: a checkpoint saved mid-epoch keeps them, so
    # the epoch's means come out the same after a resume.
    self.epoch_metrics = list(saved_progress.get("epoch_metrics", []))
    # Epochs logged after the restored checkpoint (by a run killed before its next save)
    # are dropped: the resumed run logs them again.
    self.history = workdir_lib.read_history(self.workdir, up_to_step=checkpoint_step or 0)
    workdir_lib.write_history(self.workdir, self.history)

  def record_interval(self, fetched: list[dict], *, step: int, start_step: int,
                      checkpoint_step, steps_per_sec: float, steps_per_epoch: int) -> float:
    """Checks the steps since the last log for NaN, writes their means (train_interval/*)
    and keeps them for the epoch's; returns their mean loss."""
    try:
      check_finite(fetched, start_step, checkpoint_step)
    except NonFiniteLossError as error:
      if self.label:
        raise NonFiniteLossError(f"Run {self.workdir}: {error}") from None
      raise
    interval = interval_means(fetched)
    interval.update(steps_per_sec=steps_per_sec,
                    learning_rate=self.learning_rate(steps_per_epoch, step))
    self.writer.write_scalars(step, {f"train_interval/{name}": value
                                     for name, value in interval.items()})
    self.epoch_metrics.extend(fetched)
    return interval["loss"]

  def end_epoch(self, step: int, steps_per_epoch: int, evaluations: dict) -> None:
    """The epoch's summary: its train means and `evaluations` (names with their split),
    to TensorBoard, epoch_metrics.jsonl and the log."""
    train_means = epoch_means(self.epoch_metrics)
    self.epoch_metrics = []
    summary = evaluators_lib.with_bits_per_dim(
        {**_with_split("train", train_means), **evaluations,
         "epoch": round(step / steps_per_epoch, 3)}, self.config.data.image_shape)
    self.writer.write_scalars(step, workdir_lib.tensorboard_scalars(
        {**summary, "train_learning_rate": self.learning_rate(steps_per_epoch, step)}))
    summary["step"] = step
    self.history.append(summary)
    workdir_lib.write_history(self.workdir, self.history)
    skipped = train_means.get("skipped_updates")
    logging.info("%sepoch %g (step %d): train -ELBO %.2f (reconstruction %.2f, KL %.2f); "
                 "test -ELBO %.2f nats (%.4f bits/dim)%s", self.label, summary["epoch"],
                 step, summary["train_neg_elbo_nats"], summary["train_reconstruction_nats"],
                 summary["train_kl_nats"], summary.get("test_neg_elbo_nats", float("nan")),
                 summary.get("test_neg_elbo_bits_per_dim", float("nan")),
                 f"; {skipped} updates skipped" if skipped else "")

  def save(self, step: int, state) -> None:
    logged = self.history[-1] if self.history else {}
    # At an epoch's end: ranked by its validation -ELBO, the best one is kept.
    validation = (logged.get(checkpoint.BEST_METRIC) if logged.get("step") == step
                  else None)
    self.checkpointer.save(step, state, {"epoch_metrics": self.epoch_metrics},
                           validation_neg_elbo_nats=validation)

  def draw_figures(self, model, params, test_split, step: int, *, final: bool) -> None:
    """The cheap figures (TensorBoard only) during training; every figure at the end,
    unless this run's config.figures.final is off."""
    if final and not self.config.figures.final:
      return
    named = visualize.make_figures(model, params, self.config, test_split,
                                   self.keys["figures"], history=self.history if final else None,
                                   cheap_only=not final)
    paths = workdir_lib.write_figures(self.workdir, self.writer, step, named, save_png=final)
    if final:
      logging.info("Wrote %d figures to %s/figures.", len(paths), self.workdir)

  def write_final(self, step: int, result: dict) -> None:
    """The final evaluation (evaluators.final_result's dict): logged, into eval.json,
    TensorBoard and figures, and its numbers into the run's summary."""
    logging.info("%s%s", self.label, evaluators_lib.format_result(result))
    self.final = _with_split(result["split"], evaluators_lib.summary_numbers(result))
    self.writer.write_scalars(step, workdir_lib.tensorboard_scalars(self.final))
    workdir_lib.write_eval(self.workdir, result)
    if workdir_lib.is_writer():
      workdir_lib.write_figures(self.workdir, self.writer, step,
                                visualize.result_figures(result))

  def summary(self) -> dict:
    """The last epoch's summary, with the final evaluation's numbers."""
    return {**(self.history[-1] if self.history else {}), **self.final}

  def close(self) -> None:
    self.checkpointer.close()


class Group:
  """The device side of K >= 1 runs trained by one program: the train state (stacked
  when K > 1), the program, the data, the evaluators and the step; `records` are the runs.

  The rule: the group reads from its runs' first config only what shapes the program or
  the cadence (steps.shared_config: the other keys are not there to read); everything
  else comes from each run's own config, through its record.
  """

  def __init__(self, configs: list, workdirs: list[str], timer: progress.PhaseTimer):
    if len(configs) != len(workdirs) or not configs:
      raise ValueError("Pass one workdir per config, and at least one config.")
    for config in configs:
      config_schema.validate(config)
    steps.check_vectorizable(configs)
    self.timer = timer
    self.mesh = parallel.make_mesh()
    # The data is read and checked before anything is written under a workdir, and its
    # image shape goes into every run's config (and so into its config.json).
    with timer.phase("data"):
      self.data = input_pipeline.load_device_data(steps.shared_config(configs), self.mesh)
    configs = [config_schema.with_data(config, self.data.image_shape,
                                       self.data.splits["train"].num_examples,
                                       self.data.num_classes) for config in configs]
    self.config = steps.shared_config(configs)
    self.records = [RunRecord(config, workdir, f"{workdir}: " if len(configs) > 1 else "")
                    for config, workdir in zip(configs, workdirs)]
    self.cadence = Cadence.from_config(self.config, self.data.steps_per_epoch,
                                       self.data.num_steps)
    self.model = models.get_model(self.config.model, self.config.data.image_shape,
                                  self.config.dtype)
    with timer.phase("checkpoints"):
      self.restore()
    for record in self.records:  # After restore: the step it resumes from is settled.
      workdir_lib.record_manifest(record.workdir, record.config, self.checkpoint_step)
    self.program = steps.make_train_program(self.model, configs, self.mesh,
                                            self.data.steps_per_epoch)
    self.compiled_sizes = set()
    self.rng_train = self._stacked_keys("train")
    self.rng_shuffle = self._stacked_keys("shuffle")
    num_train = self.data.splits["train"].num_examples
    batch_size = self.config.train.batch_size

    def batch_indices(rng_shuffle, epoch):
      def one_run(rng):
        return input_pipeline.epoch_batch_indices(rng, epoch, num_train, batch_size)
      return jax.vmap(one_run)(rng_shuffle) if self.vectorized else one_run(rng_shuffle)

    self._batch_indices = jax.jit(batch_indices)
    self._indices = (None, None)  # (epoch, its batch indices)
    # Once per group: every run's evaluations, during training and at the end, share them.
    self.evaluators = evaluators_lib.Evaluators(self.model, self.config, self.mesh)
    self.pending = []  # Dispatched steps' metrics, on the device.
    self.interval_start = (time.time(), self.step)

  @property
  def vectorized(self) -> bool:
    return len(self.records) > 1

  def _stacked_keys(self, purpose: str) -> jax.Array:
    keys = [record.keys[purpose] for record in self.records]
    return keys[0] if not self.vectorized else parallel.replicate(steps.stack(keys), self.mesh)

  def params(self, index: int):
    """Run `index`'s parameters (on the devices)."""
    params = self.state.params
    return steps.unstack(params, index) if self.vectorized else params

  def restore(self) -> None:
    """Each run's state, metrics and history at the latest step all runs saved."""
    initial = [parallel.replicate(steps.create_train_state(
        self.model, record.config, record.keys["init"], self.data.steps_per_epoch),
        self.mesh) for record in self.records]
    latest = [record.checkpointer.latest_step() for record in self.records]
    restored = [(state, {}, None) for state in initial]
    if all(step is not None for step in latest):
      restored = [record.checkpointer.restore_latest(state, max_step=min(latest))
                  for record, state in zip(self.records, initial)]
    elif any(step is not None for step in latest):
      saved = [r.workdir for r, step in zip(self.records, latest) if step is not None]
      raise ValueError(
          f"Some runs of this group have checkpoints ({', '.join(saved)}) and others none: "
          "they were not trained together. Move those workdirs away, or train the runs "
          "one by one with python -m vae_jax.main.")
    found = {step for _, _, step in restored}
    if len(found) != 1:
      raise ValueError(
          f"The group's checkpoints do not share a step (found {sorted(map(str, found))}); "
          "train these runs one by one with python -m vae_jax.main, which resumes each.")
    self.checkpoint_step = found.pop()
    states = [state for state, _, _ in restored]
    self.state = (states[0] if not self.vectorized
                  else parallel.replicate(steps.stack_states(states), self.mesh))
    self.step = self.checkpoint_step or 0
    for record, (_, saved_progress, _) in zip(self.records, restored):
      record.restore(self.checkpoint_step, saved_progress)

  def epoch_indices(self, epoch: int) -> jax.Array:
    if self._indices[0] != epoch:
      self._indices = (epoch, self._batch_indices(self.rng_shuffle, epoch))
    return self._indices[1]

  def dispatch(self, count: int) -> None:
    """Runs `count` steps on the device; their metrics stay there until fetched."""
    dataset, indices = self.data.train, self.epoch_indices(
        self.step // self.cadence.steps_per_epoch)
    if self.data.stream is not None:  # Over config.data.max_device_mb: from the host.
      dataset, indices = self.data.stream.batches(
          indices, self.step % self.cadence.steps_per_epoch, count)
    args = (self.state, dataset, indices, self.rng_train, count)
    if count in self.compiled_sizes:
      self.state, metrics = self.program(*args)
    else:  # The first call of each program compiles it.
      with self.timer.phase("compile"):
        self.state, metrics = self.program(*args)
        jax.block_until_ready(metrics)
      self.compiled_sizes.add(count)
    self.pending.append(metrics)
    self.step += count

  def fetch(self) -> list[list[dict]]:
    """The pending steps' metrics on the host (one transfer): per run, one dict per step."""
    host_metrics = jax.device_get(self.pending)
    self.pending = []

    def run_metrics(index):
      def value(values, i):
        return float(values[i, index] if self.vectorized else values[i])
      return [{name: value(values, i) for name, values in stacked.items()}
              for stacked in host_metrics for i in range(len(stacked["loss"]))]

    return [run_metrics(index) for index in range(len(self.records))]

  def fetch_metrics(self) -> None:
    """Brings the pending steps' metrics to the host, and each run records them (NaN
    check, train_interval/*); logs the interval's losses and steps/s."""
    if not self.pending:
      return
    start_time, start_step = self.interval_start
    steps_per_sec = (self.step - start_step) / max(time.time() - start_time, 1e-9)
    losses_logged = [
        record.record_interval(fetched, step=self.step, start_step=start_step,
                               checkpoint_step=self.checkpoint_step,
                               steps_per_sec=steps_per_sec,
                               steps_per_epoch=self.cadence.steps_per_epoch)
        for record, fetched in zip(self.records, self.fetch())]
    logging.info("step %d/%d: loss %s, %.1f steps/s", self.step, self.cadence.num_steps,
                 ", ".join(f"{loss:.2f}" for loss in losses_logged), steps_per_sec)
    self.interval_start = (time.time(), self.step)

  def epoch_evaluations(self, index: int) -> dict[str, float]:
    """Run `index`'s evaluations at this epoch's end, as its own config sets them, with
    the split in their names: the −ELBO of every evaluation split, and as the cadence
    says, the latent diagnostics and the test NLL."""
    record, params = self.records[index], self.params(index)
    config, rng = record.config, record.keys["eval"]
    results = {}
    for split, split_data in self.data.eval.items():
      results.update(_with_split(split, self.evaluators.neg_elbo(params, split_data, rng,
                                                                 config)))
    # Cheap next to the epoch, unlike the final evaluation's whole test split.
    split = next(name for name in ("validation", "test") if name in self.data.eval)
    num_examples = min(config.eval.diagnostics_examples,
                       self.data.eval[split]["image"].shape[0])
    if num_examples and self.cadence.runs_diagnostics(self.step):
      latents = self.evaluators.latents(params, self.data.eval[split], rng, config,
                                        num_examples)
      results.update(_with_split(split, evaluators_lib.summary_numbers(latents)))
    if self.cadence.evaluates_nll(self.step) and "test" in self.data.eval:
      num_samples = config.eval.nll_samples_during_training
      nll = self.evaluators.nll(params, self.data.eval["test"], rng, config, num_samples)
      logging.info("%sepoch %d: test NLL %.2f ± %.2f nats (k = %d)", record.label,
                   self.step // self.cadence.steps_per_epoch, nll["nll_nats"],
                   nll["nll_stderr"], num_samples)
      results.update(test_nll_nats=nll["nll_nats"], test_nll_stderr=nll["nll_stderr"],
                     test_nll_num_samples=num_samples)
    return results

  def log_epoch(self) -> None:
    """Each run's epoch summary: its train means and epoch_evaluations."""
    with self.timer.phase("epoch_eval"):
      for index, record in enumerate(self.records):
        record.end_epoch(self.step, self.cadence.steps_per_epoch,
                         self.epoch_evaluations(index))

  def save(self) -> None:
    """A checkpoint of every run at this step, its metrics and parameters checked."""
    self.fetch_metrics()  # Never saves a state whose metrics were not checked.
    if not self.config.train.skip_nonfinite_updates and not bool(
        steps.all_finite(self.state.params)):
      # A non-finite gradient in the last step shows in the parameters before any loss.
      raise NonFiniteLossError(
          f"Non-finite parameters after step {self.step}: a gradient was NaN or inf. "
          "Lower config.train.learning_rate or check the data, or set "
          "config.train.skip_nonfinite_updates=True to skip such updates; the last "
          f"checkpoint (step {self.checkpoint_step}) was left in place.")
    with self.timer.phase("checkpoints"):
      for index, record in enumerate(self.records):
        record.save(self.step,
                    steps.unstack(self.state, index) if self.vectorized else self.state)
    self.checkpoint_step = self.step

  def draw_figures(self, *, final: bool) -> None:
    """Process 0 draws alone, from host parameters, on its own device."""
    if not workdir_lib.is_writer():
      return
    with self.timer.phase("figures"):
      for index, record in enumerate(self.records):
        record.draw_figures(self.model, jax.device_get(self.params(index)),
                            self.data.splits["test"], self.step, final=final)

  def evaluate_final(self) -> None:
    """Each run's final evaluation of the test split, from the group's evaluators (so
    each program compiles once for all runs) with the run's own eval.* settings."""
    # Data without a test split (a folder or an .npz with data.test_size = 0): validation.
    split = next((name for name in ("test", "validation") if name in self.data.eval), None)
    if split is None:
      return
    with self.timer.phase("final_eval"):
      for index, record in enumerate(self.records):
        record.write_final(self.step, evaluators_lib.final_result(
            self.evaluators, self.params(index), self.data.eval[split],
            record.keys["eval"], record.config,
            num_importance_samples=record.config.eval.num_importance_samples,
            history=record.history, split=split, step=self.step, checkpoint="latest",
            weights="raw"))

  def close(self) -> None:
    for record in self.records:
      try:
        record.close()
      except Exception as error:  # pylint: disable=broad-except
        # After a failed save orbax may fail to close too; the save's error is the news.
        logging.warning("Closing the checkpoints of %s: %s", record.workdir,
                        checkpoint.os_error_reason(error))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       imports_seconds: float | None = None) -> dict[str, float]:
  """Trains and evaluates a VAE as `config` says, writing everything under `workdir`.

  Returns the final epoch's summary (train and test -ELBO parts, in nats per example),
  with the test NLL when config.eval.num_importance_samples > 0. Raises PreemptedError
  after saving a checkpoint on SIGTERM. `imports_seconds` (the caller's start-up) is
  counted in the time by phase.
  """
  return train_group([config], [workdir], imports_seconds)[0]


def train_group(configs: list, workdirs: list[str],
                imports_seconds: float | None = None) -> list[dict]:
  """Trains K runs as one program (see the module's docstring); returns their summaries.

  Raises ValueError before training when the configs cannot share a program, and
  WriteFailedError when a file cannot be written (nothing already written is lost).
  """
  try:
    return _train_group(configs, workdirs, imports_seconds)
  except checkpoint.WriteError as error:
    raise WriteFailedError(f"{error} Nothing already written was lost. "
                           f"{_resume_point(workdirs)} when the same command is run again, "
                           "once the cause is fixed.") from None
  except jax.errors.JaxRuntimeError as error:
    if jax.process_count() == 1:
      raise
    raise PeerLostError(
        f"Process {jax.process_index()} of {jax.process_count()}: a collective with the "
        f"other processes failed ({str(error).splitlines()[0][:200]}); one of them has "
        f"most likely stopped (killed, preempted or crashed). {_resume_point(workdirs)} "
        "when every process is started again with its same command.") from None


def _resume_point(workdirs: list[str]) -> str:
  """Where a run stopped now would resume: its last complete checkpoint (the oldest of a
  group's last ones, as Group.restore takes it)."""
  steps_saved = [checkpoint.saved_steps(workdir) for workdir in workdirs]
  if not all(steps_saved):
    return "No checkpoint was written yet: the run starts again from the beginning"
  step = min(saved[-1] for saved in steps_saved)
  return (f"The last good checkpoint is step {step} "
          f"({os.path.join(workdirs[0], 'checkpoints', str(step))}"
          + (f", and the same step of the group's other {len(workdirs) - 1} runs"
             if len(workdirs) > 1 else "") + "): the run resumes from it")


def _train_group(configs: list, workdirs: list[str],
                 imports_seconds: float | None) -> list[dict]:
  timer = progress.PhaseTimer(imports_seconds)
  group = Group(configs, workdirs, timer)
  cadence, config = group.cadence, group.config
  start_step = group.step
  if start_step >= cadence.num_steps:
    logging.info("The checkpoints in %s are at step %d of %d: nothing left to train.",
                 ", ".join(workdirs), start_step, cadence.num_steps)
  elif start_step:
    logging.info("Resuming %sat step %d of %d (epoch %.2f).",
                 f"{len(configs)} runs " if group.vectorized else "", start_step,
                 cadence.num_steps, start_step / cadence.steps_per_epoch)
  else:
    for record in group.records:
      workdir_lib.write_hparams(record.writer, record.config)
    parameter_overview.log_parameter_overview(group.params(0), msg="Parameters of one run:")
  reporter = progress.Progress(
      total_steps=cadence.num_steps, steps_per_epoch=cadence.steps_per_epoch,
      batch_size=config.train.batch_size * len(configs), start_step=start_step,
      every_seconds=config.train.progress_every_seconds if workdir_lib.is_writer() else 0,
      draw_bar=None if workdir_lib.is_writer() else False)

  try:
    with checkpoint.SigtermFlag() as sigterm, metric_writers.ensure_flushes(
        *[record.writer for record in group.records]):
      while group.step < cadence.num_steps:
        group.dispatch(cadence.dispatch_size(group.step))
        step = group.step
        reporter.update(step)
        if cadence.is_log_step(step):
          group.fetch_metrics()
        host_start = time.time()
        if cadence.is_epoch_end(step):
          group.log_epoch()
        if cadence.is_save_step(step):
          group.save()
        if cadence.draws_figures(step):
          group.draw_figures(final=False)
        if cadence.is_epoch_end(step):
          # Steps/s should not count evaluation, checkpoints and figures.
          group.interval_start = (time.time(), step)
          reporter.exclude(time.time() - host_start)
        if sigterm.should_stop(step) and step < cadence.num_steps:
          group.save()
          raise PreemptedError(
              f"Received SIGTERM: saved a checkpoint of step {step} of {cadence.num_steps} "
              f"to {group.records[0].checkpointer.step_path(step)}"
              + (f" (and of the group's {len(configs) - 1} other runs)"
                 if group.vectorized else "")
              + ". Run the same command again to resume.")

      group.evaluate_final()
      group.draw_figures(final=True)
  finally:
    group.close()
  seconds = timer.finish()
  logging.info("%s", progress.PhaseTimer.format(seconds))
  for record in group.records:
    workdir_lib.write_json(record.workdir, workdir_lib.TIMINGS_FILE, seconds)
  return [record.summary() for record in group.records]
