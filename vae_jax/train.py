"""The trainer: init, jitted data-parallel steps, the loop and its side effects.

Everything random comes from one root key, `jax.random.key(config.seed)`, split here by
purpose. Step s uses fold_in(rng_train, s) and example i of its global batch
fold_in(that, i), so a run gives the same numbers on 1 or N devices and when resumed.
This loop is the only place that logs, writes files or checkpoints (on process 0).
"""

import dataclasses
import json
import os
import signal
import threading
import time
from typing import Any

from absl import logging
from clu import metric_writers
import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from vae_jax import checkpoint
from vae_jax import config_schema
from vae_jax import evaluate
from vae_jax import figures
from vae_jax import input_pipeline
from vae_jax import losses
from vae_jax import models
from vae_jax import progress
from vae_jax import visualize

BATCH_AXIS = "batch"


class NonFiniteLossError(FloatingPointError):
  """Training produced NaN or inf; the message names the step and the bad terms."""


class ConfigMismatchError(ValueError):
  """The workdir holds a run trained with another config; the message lists the keys."""


class PreemptedError(RuntimeError):
  """SIGTERM: a checkpoint was saved (the message says where); the same command resumes."""


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh over all devices, axis "batch": the data-parallel axis."""
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(np.asarray(devices), (BATCH_AXIS,))


def replicate(tree, mesh: jax.sharding.Mesh):
  """Places a pytree on every device of the mesh, sharded as the jitted steps return it."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def run_keys(seed: int) -> dict[str, jax.Array]:
  """The run's keys by purpose, all from jax.random.key(seed)."""
  rng_init, rng_train, rng_shuffle, rng_eval = jax.random.split(jax.random.key(seed), 4)
  return {"init": rng_init, "train": rng_train, "shuffle": rng_shuffle, "eval": rng_eval,
          # Fixed for the whole run, so figures of different epochs and runs compare.
          "figures": jax.random.fold_in(rng_eval, 1)}


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained run read back from its workdir: config, model, latest parameters, keys."""
  config: ml_collections.ConfigDict
  model: nn.Module
  params: Any
  step: int
  keys: dict


def load_run(workdir: str) -> Run:
  """Rebuilds the model from workdir/config.json and restores its latest checkpoint.

  Raises ValueError saying what to do when the workdir has no config or no checkpoint.
  """
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise ValueError(f"{config_path} does not exist: --workdir must be a directory that "
                     "python -m vae_jax.main trained in.")
  config = config_schema.load_json(config_path)
  model = models.get_model(config.model, config.dtype)
  keys = run_keys(config.seed)
  checkpointer = checkpoint.Checkpointer(workdir, config.checkpoints_to_keep)
  # Restored onto one device; callers replicate it if they want data parallelism.
  state, _, step = checkpointer.restore_latest(create_train_state(model, config, keys["init"]))
  checkpointer.close()
  if step is None:
    raise ValueError(f"No checkpoint under {checkpointer.directory}: train first with "
                     f"python -m vae_jax.main --config=... --workdir={workdir}")
  logging.info("Restored step %d from %s.", step, checkpointer.directory)
  return Run(config=config, model=model, params=state.params, step=step, keys=keys)


# Config keys that change only numbers inside the training step, not the program: runs
# that differ in nothing else can train together as one vmapped program
# (vae_jax/vectorized.py), each with its own value.
VECTORIZABLE_KEYS = ("seed", "train.learning_rate", "loss.kl_weight",
                     "loss.kl_warmup_epochs", "loss.free_bits")


def step_hyperparameters(config) -> dict[str, float]:
  """The step's numeric hyperparameters, as the config gives them."""
  return {"learning_rate": config.train.learning_rate,
          "kl_warmup_epochs": config.loss.kl_warmup_epochs,
          **losses.loss_weights(config)}


def learning_rate_schedule(config, steps_per_epoch: int, base=None):
  """config.train.learning_rate (or `base`), constant or as Burda et al. 2015's schedule.

  'iwae': stage i = 0, 1, ... lasts 3^i epochs at learning_rate * 10^(-i/7); after the
  last of `train.schedule_stages` stages the rate stays at that stage's value.
  """
  base = config.train.learning_rate if base is None else base
  if config.train.learning_rate_schedule == "constant":
    return base
  stages = config.train.schedule_stages
  boundaries, epochs = {}, 0
  for stage in range(1, stages):
    epochs += 3 ** (stage - 1)
    boundaries[epochs * steps_per_epoch] = 10.0 ** (-1.0 / 7.0)  # Multiplies the rate.
  return optax.piecewise_constant_schedule(base, boundaries)


def make_optimizer(config, steps_per_epoch: int, learning_rate=None):
  """Adam as the config says; `learning_rate` (possibly traced) replaces the config's."""
  return optax.adam(learning_rate_schedule(config, steps_per_epoch, learning_rate),
                    b1=config.train.adam_b1, b2=config.train.adam_b2,
                    eps=config.train.adam_eps)


def create_train_state(model: nn.Module, config, rng_init: jax.Array,
                       steps_per_epoch: int = 1) -> train_state.TrainState:
  """Initializes parameters (from one example's shapes) and Adam."""
  variables = model.init(rng_init, jnp.zeros(models.IMAGE_SHAPE, jnp.float32),
                         jnp.zeros((model.noise_dim,), jnp.float32),
                         jnp.zeros((), jnp.int32))
  state = train_state.TrainState.create(apply_fn=model.apply, params=variables["params"],
                                        tx=make_optimizer(config, steps_per_epoch))
  # A strongly typed step, like the one the train step returns, so step 2 does not retrace.
  return state.replace(step=jnp.zeros((), jnp.int32))


def kl_warmup_factor(step, warmup_epochs, steps_per_epoch: int):
  """The KL weight's multiplier at `step`: min(1, step / warm-up steps), 1 without warm-up."""
  if isinstance(warmup_epochs, (int, float)) and warmup_epochs == 0:
    return 1.0  # Static, so runs without warm-up keep their bits.
  warmup_steps = warmup_epochs * steps_per_epoch
  ramp = step.astype(jnp.float32) / jnp.maximum(warmup_steps, 1e-9)
  return jnp.where(warmup_steps > 0, jnp.minimum(1.0, ramp), 1.0)


def _grads_body(model: nn.Module, config):
  """Per device: (grads, metrics) of the global-batch mean loss, averaged over "batch"."""
  example_terms = losses.make_example_terms_fn(model, config, train=True)

  def loss_fn(params, batch, keys, weights):
    terms = jax.vmap(example_terms, in_axes=(None, 0, 0, 0, None))(
        params, batch["image"], batch["label"], keys, weights)
    means = jax.tree.map(jnp.mean, terms)
    return means["loss"], means

  def grads_and_metrics(params, batch, step_rng, weights):
    local_batch_size = batch["image"].shape[0]
    first_index = jax.lax.axis_index(BATCH_AXIS) * local_batch_size
    global_indices = first_index + jnp.arange(local_batch_size)
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(step_rng, global_indices)
    # Cast the replicated parameters to per-device values so that grad gives each device
    # the gradient of its own shard's loss (without the cast, shard_map's autodiff would
    # already sum them over devices). Equal shards: their mean is the global-batch mean.
    local_params = jax.lax.pcast(params, BATCH_AXIS, to="varying")
    grads, metrics = jax.grad(loss_fn, has_aux=True)(local_params, batch, keys, weights)
    return jax.lax.pmean((grads, metrics), BATCH_AXIS)

  return grads_and_metrics


def make_grads_fn(model: nn.Module, config, mesh: jax.sharding.Mesh):
  """grads_fn(params, batch, step_rng) -> (grads, metrics), jitted and data-parallel."""
  grads_and_metrics = _grads_body(model, config)
  weights = losses.loss_weights(config)
  return jax.jit(jax.shard_map(
      lambda params, batch, step_rng: grads_and_metrics(params, batch, step_rng, weights),
      mesh=mesh, in_specs=(P(), P(BATCH_AXIS), P()), out_specs=(P(), P())))


def train_step_body(model: nn.Module, config, steps_per_epoch: int):
  """The per-device step(state, batch, rng, hyper): the step's key is fold_in(rng,
  state.step); `hyper` is step_hyperparameters(config) or, vmapped, traced values."""
  grads_and_metrics = _grads_body(model, config)
  skip_nonfinite = config.train.skip_nonfinite_updates

  def train_step(state: train_state.TrainState, batch, rng: jax.Array, hyper: dict):
    step_rng = jax.random.fold_in(rng, state.step)
    warmup = kl_warmup_factor(state.step, hyper["kl_warmup_epochs"], steps_per_epoch)
    weights = {"kl_weight": hyper["kl_weight"] * warmup, "free_bits": hyper["free_bits"]}
    grads, metrics = grads_and_metrics(state.params, batch, step_rng, weights)
    metrics["grad_norm"] = optax.tree.norm(grads)
    # The optimizer is built here so that a vmapped sweep can give each model its rate.
    optimizer = make_optimizer(config, steps_per_epoch, hyper["learning_rate"])
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, opt_state=opt_state,
                              params=optax.apply_updates(state.params, updates))
    if skip_nonfinite:
      # A non-finite gradient makes grad_norm non-finite. A skipped update keeps the
      # parameters and Adam's moments but advances the step (and with it the data).
      finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
      kept = state.replace(step=new_state.step)
      new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, kept)
      metrics["skipped"] = 1.0 - finite.astype(jnp.float32)
    return new_state, metrics

  return train_step


def make_train_step(model: nn.Module, config, mesh: jax.sharding.Mesh,
                    steps_per_epoch: int = 1):
  """train_step(state, batch, rng) -> (state, metrics), jitted, data-parallel, state donated.

  `batch` is a global batch {"image": uint8 (B, 28, 28, 1), "label": (B,)}, split over the
  mesh; `rng` is the run's training key: the step's key is fold_in(rng, state.step).
  """
  return jax.jit(_sharded_step(model, config, mesh, steps_per_epoch), donate_argnums=0)


def _sharded_step(model: nn.Module, config, mesh: jax.sharding.Mesh, steps_per_epoch: int):
  """step(state, global batch, rng): the config's hyperparameters, data-parallel."""
  body = train_step_body(model, config, steps_per_epoch)
  hyper = step_hyperparameters(config)
  return jax.shard_map(lambda state, batch, rng: body(state, batch, rng, hyper),
                       mesh=mesh, in_specs=(P(), P(BATCH_AXIS), P()), out_specs=(P(), P()))


def scan_steps(one_step, state, num_steps: int, *args):
  """num_steps calls of one_step(state, *args) -> (state, metrics), in one lax.scan when
  num_steps > 1; the metrics come back stacked, (num_steps, ...) each."""
  if num_steps == 1:
    state, metrics = one_step(state, *args)
    return state, jax.tree.map(lambda value: value[None], metrics)
  return jax.lax.scan(lambda carry, _: one_step(carry, *args), state, length=num_steps)


def make_dataset_train_steps(model: nn.Module, config, mesh: jax.sharding.Mesh,
                             steps_per_epoch: int):
  """As make_train_step, but gathers each batch on the device from the resident dataset,
  and runs several steps per dispatch.

  steps(state, dataset, epoch_indices, rng, num_steps) -> (state, metrics): `epoch_indices`
  is the epoch's (steps_per_epoch, B) index matrix, and each step takes row
  state.step % steps_per_epoch. num_steps > 1 (static) runs them in one `lax.scan`, with no
  host work in between; metrics come back stacked, (num_steps,) each. Every step's batch
  and key come from its own step number, so the results do not depend on num_steps.
  """
  sharded_body = _sharded_step(model, config, mesh, steps_per_epoch)

  def one_step(state, dataset, epoch_indices, rng):
    # Gathered outside shard_map (shard_map's in_specs then split it over the mesh):
    # passing the whole dataset into shard_map, or constraining the batch's sharding
    # here, measured ~1.6x slower per step on CPU.
    indices = jax.lax.dynamic_index_in_dim(epoch_indices, state.step % steps_per_epoch,
                                           keepdims=False)
    batch = {name: jnp.take(array, indices, axis=0) for name, array in dataset.items()}
    return sharded_body(state, batch, rng)

  def steps(state, dataset, epoch_indices, rng, num_steps):
    return scan_steps(one_step, state, num_steps, dataset, epoch_indices, rng)

  return jax.jit(steps, static_argnums=4, donate_argnums=0)


def _next_multiple(step: int, every: int) -> int:
  """The first multiple of `every` after `step`."""
  return (step // every + 1) * every


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
          f"Non-finite training metrics at step {first_step + offset + 1}: {bad} "
          "(grad_norm covers every gradient). Lower config.train.learning_rate or check "
          "the data, or set config.train.skip_nonfinite_updates=True to skip such updates; "
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


def write_atomically(path: str, text: str) -> None:
  """A kill mid-write leaves the old file or the new one, never half of one."""
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


HISTORY_FILE = "epoch_metrics.jsonl"


def read_history(workdir: str, up_to_step: int | None = None) -> list[dict]:
  """The per-epoch summaries a run logged (one JSON object per line), oldest first."""
  path = os.path.join(workdir, HISTORY_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    history = [json.loads(line) for line in f if line.strip()]
  return [h for h in history if up_to_step is None or h["step"] <= up_to_step]


def write_history(workdir: str, history: list[dict]) -> None:
  write_atomically(os.path.join(workdir, HISTORY_FILE),
                    "".join(json.dumps(entry) + "\n" for entry in history))


def write_figures(workdir: str, writer, step: int, named_figures: dict, *,
                  save_png: bool = True) -> list[str]:
  """Figures as workdir/figures/<name>.png and as TensorBoard images; returns the paths."""
  figure_dir = os.path.join(workdir, "figures")
  os.makedirs(figure_dir, exist_ok=True)
  images, paths = {}, []
  for name, figure in named_figures.items():
    if save_png:
      paths.append(os.path.join(figure_dir, f"{name}.png"))
      images[f"figures/{name}"] = figures.save_png(figure, paths[-1])
    else:
      images[f"figures/{name}"] = figures.to_rgb_array(figure)
      figures.close(figure)
  writer.write_images(step, {name: pixels[None] for name, pixels in images.items()})
  return paths


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
  num_devices = mesh.shape[BATCH_AXIS]
  if config.train.batch_size % num_devices:
    raise ValueError(f"config.train.batch_size={config.train.batch_size} must be divisible "
                     f"by the number of devices ({num_devices}).")
  splits = input_pipeline.load_splits(config.data)
  replicated = NamedSharding(mesh, P())
  steps_per_epoch = splits["train"].num_examples // config.train.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"config.train.batch_size={config.train.batch_size} exceeds the "
                     f"{splits['train'].num_examples} training examples.")
  return DeviceData(
      splits=splits, train=input_pipeline.to_device(splits["train"], replicated),
      eval={name: input_pipeline.to_device(splits[name], replicated)
            for name in ("validation", "test") if splits[name].num_examples},
      steps_per_epoch=steps_per_epoch,
      num_steps=config.train.num_steps or config.train.num_epochs * steps_per_epoch)


def dispatch_size(finished: int, steps_per_epoch: int, num_steps: int, config) -> int:
  """Steps in the next dispatch: train.steps_per_dispatch up to the next step where the
  host acts (log, checkpoint, epoch end, the end), then single steps: two programs."""
  every_steps = config.checkpoint_every_steps
  next_stop = min((finished // steps_per_epoch + 1) * steps_per_epoch, num_steps,
                  _next_multiple(finished, config.train.log_every_steps),
                  _next_multiple(finished, every_steps) if every_steps else num_steps)
  count = config.train.steps_per_dispatch
  return count if finished + count <= next_stop else 1


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       imports_seconds: float | None = None) -> dict[str, float]:
  """Trains and evaluates a VAE as `config` says, writing everything under `workdir`.

  Resumes from the workdir's latest good checkpoint, continuing with the same data order
  and random numbers, so a resumed run ends with the parameters and metrics of an
  uninterrupted one. Returns the final epoch's metrics (train and test -ELBO parts, in
  nats per example), and the test NLL when config.eval.num_importance_samples > 0 (also
  written to eval.json). Raises PreemptedError after saving a checkpoint on SIGTERM.
  The time by phase (with `imports_seconds`, the caller's start-up) is logged at the end
  and written to timings.json.
  """
  timer = progress.PhaseTimer(imports_seconds)
  config_schema.validate(config)
  is_writer = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  checkpointer = checkpoint.Checkpointer(workdir, config.checkpoints_to_keep)
  check_same_config(config, workdir, checkpointer.latest_step())
  if is_writer:
    write_atomically(os.path.join(workdir, "config.json"),
                      config.to_json_best_effort(indent=2, sort_keys=True))

  mesh = make_mesh()
  keys = run_keys(config.seed)
  rng_init, rng_train, rng_shuffle, rng_eval = (
      keys["init"], keys["train"], keys["shuffle"], keys["eval"])
  rng_figures = keys["figures"]
  with timer.phase("data"):
    data = load_device_data(config, mesh)
  splits, train_data, eval_data = data.splits, data.train, data.eval
  steps_per_epoch, num_steps = data.steps_per_epoch, data.num_steps

  model = models.get_model(config.model, config.dtype)
  state = replicate(create_train_state(model, config, rng_init, steps_per_epoch), mesh)
  with timer.phase("checkpoints"):
    state, saved_progress, checkpoint_step = checkpointer.restore_latest(state)
  start_step = int(state.step)
  if start_step >= num_steps:
    logging.info("The checkpoint in %s is at step %d of %d: nothing left to train.",
                 workdir, start_step, num_steps)
  elif start_step:
    logging.info("Resuming at step %d of %d (epoch %.2f).", start_step, num_steps,
                 start_step / steps_per_epoch)
  # Epochs logged after the restored checkpoint (by a run killed before its next save)
  # are dropped: the resumed run logs them again.
  history = read_history(workdir, up_to_step=start_step)
  if is_writer:
    write_history(workdir, history)

  train_steps = make_dataset_train_steps(model, config, mesh, steps_per_epoch)
  batch_indices = jax.jit(input_pipeline.epoch_batch_indices, static_argnums=(2, 3))
  evaluate_elbo = evaluate.make_elbo_evaluator(model, config, mesh)
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_writer)
  if start_step == 0:
    writer.write_hparams({key: value if isinstance(value, (int, float, str, bool)) else str(value)
                          for key, value in config_schema.flat_items(config).items()})
  reporter = progress.Progress(
      total_steps=num_steps, steps_per_epoch=steps_per_epoch,
      batch_size=config.train.batch_size, start_step=start_step,
      every_seconds=config.train.progress_every_seconds if is_writer else 0,
      draw_bar=None if is_writer else False)

  def log_epoch(epoch, step, train_means):
    summary = {f"train_{name}": value for name, value in train_means.items()}
    with timer.phase("eval"):
      for split, split_data in eval_data.items():
        for name, value in evaluate_elbo(state.params, split_data, rng_eval).items():
          summary[f"{split}_{name}"] = value
    summary["epoch"] = epoch
    writer.write_scalars(step, dict(summary))  # A copy: the writer is asynchronous.
    summary["step"] = step
    history.append(summary)
    if is_writer:
      write_history(workdir, history)
    logging.info("epoch %g (step %d): train -ELBO %.2f (reconstruction %.2f, KL %.2f); "
                 "test -ELBO %.2f nats%s", epoch, step, summary["train_neg_elbo"],
                 summary["train_reconstruction"], summary["train_kl"],
                 summary.get("test_neg_elbo", float("nan")),
                 f"; {train_means['skipped_updates']} updates skipped"
                 if train_means.get("skipped_updates") else "")

  # The current epoch's per-step metrics (host floats). A checkpoint saved mid-epoch
  # keeps them, so the epoch's means come out the same after a resume.
  epoch_metrics = list(saved_progress.get("epoch_metrics", []))
  pending = []
  interval_start_time, interval_start_step = time.time(), start_step

  def fetch_pending():
    """Brings the pending steps' metrics to the host, checks them and logs the interval."""
    nonlocal pending, interval_start_time, interval_start_step
    if not pending:
      return
    fetched = [{name: float(values[i]) for name, values in stacked.items()}
               for stacked in jax.device_get(pending)
               for i in range(len(stacked["loss"]))]
    finished = interval_start_step + len(fetched)
    check_finite(fetched, interval_start_step, checkpoint_step)
    elapsed = time.time() - interval_start_time
    kept = [m for m in fetched if not m.get("skipped")] or fetched
    interval = {name: float(np.mean([m[name] for m in kept])) for name in fetched[0]}
    if "skipped" in interval:
      interval["skipped"] = float(sum(m["skipped"] for m in fetched))
    interval["steps_per_sec"] = len(fetched) / max(elapsed, 1e-9)
    writer.write_scalars(finished, {f"train_interval/{k}": v for k, v in interval.items()})
    logging.info("step %d/%d: loss %.2f, %.1f steps/s", finished, num_steps,
                 interval["loss"], interval["steps_per_sec"])
    epoch_metrics.extend(fetched)
    pending, interval_start_time, interval_start_step = [], time.time(), finished

  def save(step):
    nonlocal checkpoint_step
    fetch_pending()  # Never saves a state whose metrics were not checked.
    with timer.phase("checkpoints"):
      checkpointer.save(step, state, {"epoch_metrics": epoch_metrics})
    checkpoint_step = step

  every_steps = config.checkpoint_every_steps
  log_every = config.train.log_every_steps
  epoch_indices, indices_epoch = None, None
  finished = start_step
  compiled_sizes = set()
  with SigtermFlag() as sigterm:
    while finished < num_steps:
      epoch = finished // steps_per_epoch
      if indices_epoch != epoch:
        epoch_indices = batch_indices(rng_shuffle, epoch, splits["train"].num_examples,
                                      config.train.batch_size)
        indices_epoch = epoch
      count = dispatch_size(finished, steps_per_epoch, num_steps, config)
      if count in compiled_sizes:
        state, metrics = train_steps(state, train_data, epoch_indices, rng_train, count)
      else:  # The first call of each program compiles it.
        with timer.phase("compile"):
          state, metrics = train_steps(state, train_data, epoch_indices, rng_train, count)
          jax.block_until_ready(metrics)
        compiled_sizes.add(count)
      pending.append(metrics)
      finished += count
      reporter.update(finished)

      end_of_epoch = finished % steps_per_epoch == 0 or finished == num_steps
      if finished % log_every == 0 or end_of_epoch:
        fetch_pending()
      if end_of_epoch:
        evaluation_start = time.time()
        log_epoch(round(finished / steps_per_epoch, 3), finished, epoch_means(epoch_metrics))
        epoch_metrics = []
        save(finished)
        epochs_done, partial = divmod(finished, steps_per_epoch)
        every = config.figures.every_epochs
        if (is_writer and every and not partial and epochs_done % every == 0
            and finished < num_steps):
          with timer.phase("figures"):
            cheap_figures = visualize.make_figures(
                model, jax.device_get(state.params), config, splits["test"], rng_figures,
                cheap_only=True)
            write_figures(workdir, writer, finished, cheap_figures, save_png=False)
        interval_start_time = time.time()  # Steps/s should not count evaluation time.
        reporter.exclude(interval_start_time - evaluation_start)
      elif every_steps and finished % every_steps == 0:
        save(finished)
      if sigterm.should_stop(finished) and finished < num_steps:
        save(finished)
        writer.flush()
        checkpointer.close()
        raise PreemptedError(
            f"Received SIGTERM: saved a checkpoint of step {finished} of {num_steps} to "
            f"{checkpointer.step_path(finished)}. Run the same command again to resume.")

  summary = finish_run(model, state.params, config, workdir, writer, history, eval_data,
                       splits["test"], mesh, keys, num_steps, timer)
  checkpointer.close()
  seconds = timer.finish()
  logging.info("%s", progress.PhaseTimer.format(seconds))
  if is_writer:
    write_atomically(os.path.join(workdir, "timings.json"), json.dumps(seconds, indent=2))
  return summary


def finish_run(model: nn.Module, params, config, workdir: str, writer, history: list[dict],
               eval_data: dict, test_split, mesh, keys: dict, step: int,
               timer: progress.PhaseTimer | None = None) -> dict:
  """After the last step: the test NLL (when configured, also to eval.json) and every
  figure. Returns the last epoch's summary, with the NLL added."""
  timer = timer or progress.PhaseTimer()
  is_writer = jax.process_index() == 0
  summary = dict(history[-1]) if history else {}
  with timer.phase("eval"):
    _final_nll(model, params, config, workdir, writer, eval_data, mesh, keys, step, summary)
  with timer.phase("figures"):
    if is_writer and config.figures.final:
      # Host parameters: process 0 alone draws, on its own device.
      paths = write_figures(workdir, writer, step, visualize.make_figures(
          model, jax.device_get(params), config, test_split, keys["figures"],
          history=history))
      logging.info("Wrote %d figures to %s.", len(paths), os.path.dirname(paths[0]))
  writer.flush()
  return summary


def _final_nll(model, params, config, workdir, writer, eval_data, mesh, keys, step,
               summary):
  """The test NLL when config.eval.num_importance_samples > 0: logged, added to
  `summary`, written to eval.json."""
  is_writer = jax.process_index() == 0
  if config.eval.num_importance_samples and "test" in eval_data:
    result = evaluate.evaluate_params(
        model, params, config, eval_data["test"], mesh, keys["eval"],
        num_importance_samples=config.eval.num_importance_samples)
    result.update(split="test", step=step)
    logging.info("%s", evaluate.format_result(result))
    writer.write_scalars(step, {"test_nll": result["nll_nats"]})
    summary.update(test_nll_nats=result["nll_nats"], test_nll_stderr=result["nll_stderr"])
    if is_writer:
      write_atomically(os.path.join(workdir, "eval.json"), json.dumps(result, indent=2))


def check_same_config(config, workdir: str, checkpoint_step: int | None) -> None:
  """Refuses to resume a run that was trained with a different config, naming the keys."""
  path = os.path.join(workdir, "config.json")
  if checkpoint_step is None or not os.path.exists(path):
    return
  differences = config_schema.resume_differences(config_schema.load_json(path), config)
  if not differences:
    return
  listing = "\n  ".join(f"{key}: {saved!r} -> {now!r}" for key, saved, now in differences)
  if config.resume_mismatch == "allow":
    logging.warning("Resuming %s (checkpoint of step %d) with a changed config, as "
                    "config.resume_mismatch='allow' says:\n  %s", workdir, checkpoint_step,
                    listing)
    return
  raise ConfigMismatchError(
      f"{workdir} holds a run with a checkpoint of step {checkpoint_step} that was trained "
      f"with a different config. Differing keys (saved -> now):\n  {listing}\n"
      "Use a new --workdir, or add --config.resume_mismatch=allow to continue this run "
      "with the new values.")
