"""The training loop, the one place with side effects, for one run or K runs together.

`train_and_evaluate(config, workdir)` trains one run; `train_group(configs, workdirs)`
trains K runs that differ only in steps.VECTORIZABLE_KEYS as one vmapped program (a
`--mode=vectorized` sweep). Both are the same loop, so every run's workdir ends the same
(vae_jax/workdir.py lists the files). The loop:

    dispatch steps -> record their metrics -> fetch and check them at log steps ->
    evaluate at epoch ends -> save -> draw figures -> stop on preemption

with the host acting only at the steps `Cadence` names. A run resumes from its latest
good checkpoint with the same data order and random numbers, so a resumed run ends with
the parameters and metrics of an uninterrupted one.
"""

import dataclasses
import os
import signal
import threading
import time

from absl import logging
from clu import metric_writers
from clu import parameter_overview
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from vae_jax import checkpoint
from vae_jax import config_schema
from vae_jax import evaluate
from vae_jax import input_pipeline
from vae_jax import losses
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

  @classmethod
  def from_config(cls, config, steps_per_epoch: int, num_steps: int) -> "Cadence":
    return cls(steps_per_epoch=steps_per_epoch, num_steps=num_steps,
               log_every_steps=config.train.log_every_steps,
               checkpoint_every_steps=config.checkpoint_every_steps,
               steps_per_dispatch=config.train.steps_per_dispatch,
               figures_every_epochs=config.figures.every_epochs)

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
           if kept else float("nan") for name in ("neg_elbo", "reconstruction", "kl", "loss")}
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


class SigtermFlag:
  """Records SIGTERM instead of dying, so the loop can save a checkpoint first.

  With several processes, JAX's preemption sync point (the coordination service relays
  the signal) makes every process stop at the same step, which a collective save needs.
  """

  def __init__(self):
    self.received = False
    self._previous = None

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.received = True

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.received

  def __exit__(self, *exc_info):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


@dataclasses.dataclass(frozen=True)
class DeviceData:
  """A run's data: host splits (for figures), device-resident train and eval splits."""
  splits: dict
  train: dict
  eval: dict  # "validation" and/or "test", the non-empty ones.
  steps_per_epoch: int
  num_steps: int


def load_device_data(config, mesh: jax.sharding.Mesh) -> DeviceData:
  """Loads the dataset, puts it on every device of the mesh and counts the steps."""
  num_devices = parallel.num_batch_shards(mesh)
  if config.train.batch_size % num_devices:
    raise ValueError(f"config.train.batch_size={config.train.batch_size} must be divisible "
                     f"by the number of devices ({num_devices}).")
  splits = input_pipeline.load_splits(config.data)
  replicated = parallel.replicated(mesh)
  steps_per_epoch = splits["train"].num_examples // config.train.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"config.train.batch_size={config.train.batch_size} exceeds the "
                     f"{splits['train'].num_examples} training examples.")
  return DeviceData(
      splits=splits, train=input_pipeline.to_device(splits["train"], replicated),
      eval={name: input_pipeline.to_device(splits[name], replicated)
            for name in ("validation", "test") if splits[name].num_examples},
      steps_per_epoch=steps_per_epoch,
      num_steps=(config.train.num_steps
                 or config_schema.num_epochs(config) * steps_per_epoch))


@dataclasses.dataclass
class Member:
  """One run of a group: its config, keys, files and what it has logged."""
  config: ml_collections.ConfigDict
  workdir: str
  keys: dict
  checkpointer: checkpoint.Checkpointer
  writer: metric_writers.MetricWriter
  history: list  # Per-epoch summaries, as epoch_metrics.jsonl holds them.
  epoch_metrics: list  # The current epoch's per-step metrics (host floats).
  final: dict = dataclasses.field(default_factory=dict)  # The final test evaluation's.


class Group:
  """The state of the loop over K >= 1 runs trained by one program: the train state
  (stacked when K > 1), the step, the metrics not yet fetched, and the members."""

  def __init__(self, configs: list, workdirs: list[str], timer: progress.PhaseTimer):
    if len(configs) != len(workdirs) or not configs:
      raise ValueError("Pass one workdir per config, and at least one config.")
    for config in configs:
      config_schema.validate(config)
    steps.check_vectorizable(configs)
    self.config = configs[0]  # Every key that shapes the program or the loop is shared.
    self.timer = timer
    self.members = []
    for config, workdir in zip(configs, workdirs):
      os.makedirs(workdir, exist_ok=True)
      checkpointer = checkpoint.Checkpointer(workdir, config.checkpoints_to_keep)
      workdir_lib.check_same_config(config, workdir, checkpointer.latest_step())
      workdir_lib.write_config(workdir, config)
      self.members.append(Member(config=config, workdir=workdir,
                                 keys=steps.run_keys(config.seed), checkpointer=checkpointer,
                                 writer=workdir_lib.open_writer(workdir), history=[],
                                 epoch_metrics=[]))
    self.mesh = parallel.make_mesh()
    with timer.phase("data"):
      self.data = load_device_data(self.config, self.mesh)
    self.cadence = Cadence.from_config(self.config, self.data.steps_per_epoch,
                                       self.data.num_steps)
    self.model = models.get_model(self.config.model, self.config.dtype)
    with timer.phase("checkpoints"):
      self.restore()
    for member in self.members:  # After restore: the step it resumes from is settled.
      workdir_lib.record_manifest(member.workdir, member.config, self.checkpoint_step)
    self.program = steps.make_train_program(self.model, configs, self.mesh,
                                            self.data.steps_per_epoch)
    self.compiled_sizes = set()
    self.rng_train = self._stacked_keys("train")
    self.rng_shuffle = self._stacked_keys("shuffle")
    num_train = self.data.splits["train"].num_examples

    def batch_indices(rng_shuffle, epoch):
      def one_run(rng):
        return input_pipeline.epoch_batch_indices(rng, epoch, num_train,
                                                  self.config.train.batch_size)
      return jax.vmap(one_run)(rng_shuffle) if self.vectorized else one_run(rng_shuffle)

    self._batch_indices = jax.jit(batch_indices)
    self._indices = (None, None)  # (epoch, its batch indices)
    self.evaluate_elbo = evaluate.make_elbo_evaluator(self.model, self.config, self.mesh)
    self.evaluate_latents = evaluate.make_latent_evaluator(self.model, self.config, self.mesh)
    self.evaluate_nll = evaluate.make_nll_evaluator(
        self.model, self.config, self.mesh,
        num_importance_samples=self.config.eval.nll_samples_during_training)
    self.pending = []  # Dispatched steps' metrics, on the device.
    self.interval_start = (time.time(), self.step)

  @property
  def vectorized(self) -> bool:
    return len(self.members) > 1

  def _stacked_keys(self, purpose: str) -> jax.Array:
    keys = [member.keys[purpose] for member in self.members]
    return keys[0] if not self.vectorized else parallel.replicate(steps.stack(keys), self.mesh)

  def params(self, index: int):
    """Member `index`'s parameters (on the devices)."""
    params = self.state.params
    return steps.unstack(params, index) if self.vectorized else params

  def restore(self) -> None:
    """Each member's state, metrics and history at the latest step all members saved."""
    initial = [parallel.replicate(steps.create_train_state(
        self.model, member.config, member.keys["init"], self.data.steps_per_epoch),
        self.mesh) for member in self.members]
    latest = [member.checkpointer.latest_step() for member in self.members]
    restored = [(state, {}, None) for state in initial]
    if all(step is not None for step in latest):
      restored = [member.checkpointer.restore_latest(state, max_step=min(latest))
                  for member, state in zip(self.members, initial)]
    elif any(step is not None for step in latest):
      saved = [m.workdir for m, step in zip(self.members, latest) if step is not None]
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
    for member, (_, saved_progress, _) in zip(self.members, restored):
      # The current epoch's per-step metrics: a checkpoint saved mid-epoch keeps them,
      # so the epoch's means come out the same after a resume.
      member.epoch_metrics = list(saved_progress.get("epoch_metrics", []))
      # Epochs logged after the restored checkpoint (by a run killed before its next
      # save) are dropped: the resumed run logs them again.
      member.history = workdir_lib.read_history(member.workdir, up_to_step=self.step)
      workdir_lib.write_history(member.workdir, member.history)

  def epoch_indices(self, epoch: int) -> jax.Array:
    if self._indices[0] != epoch:
      self._indices = (epoch, self._batch_indices(self.rng_shuffle, epoch))
    return self._indices[1]

  def dispatch(self, count: int) -> None:
    """Runs `count` steps on the device; their metrics stay there until fetched."""
    args = (self.state, self.data.train,
            self.epoch_indices(self.step // self.cadence.steps_per_epoch), self.rng_train,
            count)
    if count in self.compiled_sizes:
      self.state, metrics = self.program(*args)
    else:  # The first call of each program compiles it.
      with self.timer.phase("compile"):
        self.state, metrics = self.program(*args)
        jax.block_until_ready(metrics)
      self.compiled_sizes.add(count)
    self.pending.append(metrics)
    self.step += count

  def fetch_metrics(self) -> None:
    """Brings the pending steps' metrics to the host (one transfer), checks them for NaN
    and writes the interval's means (train_interval/*) and steps/s."""
    if not self.pending:
      return
    host_metrics = jax.device_get(self.pending)
    self.pending = []
    start_time, start_step = self.interval_start
    steps_per_sec = (self.step - start_step) / max(time.time() - start_time, 1e-9)
    learning_rate = steps.learning_rate_at(self.config, self.cadence.steps_per_epoch,
                                           self.step - 1)
    losses_logged = []
    for index, member in enumerate(self.members):
      def value(values, i, index=index):
        return float(values[i, index] if self.vectorized else values[i])
      fetched = [{name: value(values, i) for name, values in stacked.items()}
                 for stacked in host_metrics for i in range(len(stacked["loss"]))]
      try:
        check_finite(fetched, start_step, self.checkpoint_step)
      except NonFiniteLossError as error:
        if self.vectorized:
          raise NonFiniteLossError(f"Run {member.workdir}: {error}") from None
        raise
      interval = interval_means(fetched)
      losses_logged.append(f"{interval['loss']:.2f}")
      interval.update(steps_per_sec=steps_per_sec, learning_rate=learning_rate)
      member.writer.write_scalars(self.step, {f"train_interval/{name}": v
                                              for name, v in interval.items()})
      member.epoch_metrics.extend(fetched)
    logging.info("step %d/%d: loss %s, %.1f steps/s", self.step, self.cadence.num_steps,
                 ", ".join(losses_logged),
                 steps_per_sec)
    self.interval_start = (time.time(), self.step)

  def log_epoch(self) -> None:
    """Each member's epoch means and its -ELBO on the evaluation splits: TensorBoard,
    epoch_metrics.jsonl and the log."""
    epoch = round(self.step / self.cadence.steps_per_epoch, 3)
    learning_rate = steps.learning_rate_at(self.config, self.cadence.steps_per_epoch,
                                           self.step - 1)
    with self.timer.phase("eval"):
      for index, member in enumerate(self.members):
        train_means = epoch_means(member.epoch_metrics)
        member.epoch_metrics = []
        summary = {f"train_{name}": value for name, value in train_means.items()}
        for split, split_data in self.data.eval.items():
          for name, value in self.evaluate_elbo(self.params(index), split_data,
                                                member.keys["eval"],
                                                losses.loss_weights(member.config)).items():
            summary[f"{split}_{name}"] = value
        summary.update(self.latent_summary(index, member))
        summary.update(self.nll_summary(index, member))
        summary["epoch"] = epoch
        member.writer.write_scalars(self.step, workdir_lib.tensorboard_scalars(
            {**summary, "train_learning_rate": learning_rate}))
        summary["step"] = self.step
        member.history.append(summary)
        workdir_lib.write_history(member.workdir, member.history)
        logging.info("%sepoch %g (step %d): train -ELBO %.2f (reconstruction %.2f, KL %.2f); "
                     "test -ELBO %.2f nats%s",
                     f"{member.workdir}: " if self.vectorized else "", epoch, self.step,
                     summary["train_neg_elbo"], summary["train_reconstruction"],
                     summary["train_kl"], summary.get("test_neg_elbo", float("nan")),
                     f"; {train_means['skipped_updates']} updates skipped"
                     if train_means.get("skipped_updates") else "")

  def latent_summary(self, index: int, member: Member) -> dict[str, float]:
    """Active units and the KL's split into I(x; z) + KL(q(z) || p(z)) on the first
    config.eval.diagnostics_examples of the validation split (else test), for the epoch's
    summary: cheap next to the epoch, unlike eval.json's whole test split."""
    num_examples = self.config.eval.diagnostics_examples
    split = next((name for name in ("validation", "test") if name in self.data.eval), None)
    if not num_examples or split is None:
      return {}
    split_data = self.data.eval[split]
    result = self.evaluate_latents(self.params(index), split_data, member.keys["eval"],
                                   min(num_examples, split_data["image"].shape[0]))
    summary = {f"{split}_active_units": result["active_units"],
               f"{split}_mutual_information": result["mutual_information_nats"],
               f"{split}_marginal_kl": result["marginal_kl_nats"]}
    if len(result["latent_layers"]) > 1:
      summary.update({f"{split}_active_units_z{layer['layer']}": layer["active_units"]
                      for layer in result["latent_layers"]})
    return summary

  def nll_summary(self, index: int, member: Member) -> dict[str, float]:
    """The test NLL at the end of an epoch in config.eval.nll_at_epochs (e.g. the
    schedule's stage ends), from eval.nll_samples_during_training samples; not at the
    end of training when the final evaluation computes it anyway."""
    epochs, partial = divmod(self.step, self.cadence.steps_per_epoch)
    final_nll = (self.step == self.cadence.num_steps
                 and self.config.eval.num_importance_samples > 0)
    if (partial or epochs not in self.config.eval.nll_at_epochs or final_nll
        or "test" not in self.data.eval):
      return {}
    result = self.evaluate_nll(self.params(index), self.data.eval["test"], member.keys["eval"])
    logging.info("%sepoch %d: test NLL %.2f ± %.2f nats (k = %d)",
                 f"{member.workdir}: " if self.vectorized else "", epochs, result["nll_nats"],
                 result["nll_stderr"], self.config.eval.nll_samples_during_training)
    return {"test_nll": result["nll_nats"], "test_nll_stderr": result["nll_stderr"],
            "test_nll_num_samples": self.config.eval.nll_samples_during_training}

  def save(self) -> None:
    """A checkpoint of every member at this step, its metrics and parameters checked."""
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
      for index, member in enumerate(self.members):
        state = steps.unstack(self.state, index) if self.vectorized else self.state
        logged = member.history[-1] if member.history else {}
        # At an epoch's end: ranked by its validation -ELBO, the best one is kept.
        validation = (logged.get("validation_neg_elbo") if logged.get("step") == self.step
                      else None)
        member.checkpointer.save(self.step, state, {"epoch_metrics": member.epoch_metrics},
                                 validation_neg_elbo=validation)
    self.checkpoint_step = self.step

  def draw_figures(self, *, final: bool) -> None:
    """The cheap figures (TensorBoard only) during training; every figure at the end.
    Process 0 draws alone, from host parameters, on its own device."""
    if not workdir_lib.is_writer():
      return
    with self.timer.phase("figures"):
      for index, member in enumerate(self.members):
        named = visualize.make_figures(
            self.model, jax.device_get(self.params(index)), member.config,
            self.data.splits["test"], member.keys["figures"],
            history=member.history if final else None, cheap_only=not final)
        paths = workdir_lib.write_figures(member.workdir, member.writer, self.step, named,
                                          save_png=final)
        if final:
          logging.info("Wrote %d figures to %s/figures.", len(paths), member.workdir)

  def evaluate_final(self) -> None:
    """The test split's -ELBO, latent diagnostics and (when
    config.eval.num_importance_samples > 0) NLL: logged, written to eval.json and
    TensorBoard, the NLL and diagnostics added to the run's summary."""
    num_samples = self.config.eval.num_importance_samples
    if "test" not in self.data.eval:
      return
    with self.timer.phase("eval"):
      for index, member in enumerate(self.members):
        result = evaluate.evaluate_params(
            self.model, self.params(index), member.config, self.data.eval["test"],
            self.mesh, member.keys["eval"], num_importance_samples=num_samples)
        result.update(split="test", step=self.step, checkpoint="latest", weights="raw")
        during = [{"epoch": entry["epoch"], "step": entry["step"], "nll_nats": entry["test_nll"],
                   "nll_stderr": entry["test_nll_stderr"],
                   "num_importance_samples": entry["test_nll_num_samples"]}
                  for entry in member.history if "test_nll" in entry]
        if during:  # The NLLs of config.eval.nll_at_epochs, for curves.
          result["nll_during_training"] = during
        logging.info("%s", evaluate.format_result(result))
        # The whole test split's diagnostics replace the epoch's on a subset.
        member.final = {"test_active_units": result["active_units"],
                        "test_mutual_information": result["mutual_information_nats"],
                        "test_marginal_kl": result["marginal_kl_nats"]}
        if num_samples:
          member.writer.write_scalars(self.step, {"test/nll": result["nll_nats"]})
          member.final.update(test_nll_nats=result["nll_nats"],
                              test_nll_stderr=result["nll_stderr"])
        workdir_lib.write_json(member.workdir, workdir_lib.EVAL_FILE, result)
        if workdir_lib.is_writer():
          workdir_lib.write_figures(member.workdir, member.writer, self.step,
                                    evaluate.result_figures(result))

  def summaries(self) -> list[dict]:
    """Each member's last epoch summary (with the NLL when evaluated)."""
    return [{**(member.history[-1] if member.history else {}), **member.final}
            for member in self.members]

  def close(self) -> None:
    for member in self.members:
      member.checkpointer.close()


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

  Raises ValueError before training when the configs cannot share a program.
  """
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
    for member in group.members:
      workdir_lib.write_hparams(member.writer, member.config)
    parameter_overview.log_parameter_overview(group.params(0), msg="Parameters of one run:")
  reporter = progress.Progress(
      total_steps=cadence.num_steps, steps_per_epoch=cadence.steps_per_epoch,
      batch_size=config.train.batch_size * len(configs), start_step=start_step,
      every_seconds=config.train.progress_every_seconds if workdir_lib.is_writer() else 0,
      draw_bar=None if workdir_lib.is_writer() else False)

  try:
    with SigtermFlag() as sigterm, metric_writers.ensure_flushes(
        *[member.writer for member in group.members]):
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
              f"to {group.members[0].checkpointer.step_path(step)}"
              + (f" (and of the group's {len(configs) - 1} other runs)"
                 if group.vectorized else "")
              + ". Run the same command again to resume.")

      group.evaluate_final()
      if config.figures.final:
        group.draw_figures(final=True)
  finally:
    group.close()
  seconds = timer.finish()
  logging.info("%s", progress.PhaseTimer.format(seconds))
  for member in group.members:
    workdir_lib.write_json(member.workdir, workdir_lib.TIMINGS_FILE, seconds)
  return group.summaries()
