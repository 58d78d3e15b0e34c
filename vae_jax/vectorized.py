"""Several runs trained as ONE program: K models per step with jax.vmap.

Runs whose configs differ only in `train.VECTORIZABLE_KEYS` (the seed and numeric
hyperparameters: learning rate, KL weight, KL warm-up, free bits) share every shape, so
their training steps can be stacked: one vmapped step updates K parameter sets, each
with its own keys, data order and hyperparameters, exactly as K separate runs of
`train.train_and_evaluate` would (tests/vectorized_test.py checks it to 1e-5).

Each run keeps its own workdir, left as an ordinary run leaves it (config.json,
checkpoints, epoch_metrics.jsonl, TensorBoard scalars, eval.json, figures), so
`vae_jax.evaluate`, `vae_jax.sample` and a later ordinary resume work on it. The group
checkpoints all runs at the same steps and resumes them together. The sweep runner
(`python -m vae_jax.sweep --mode=vectorized`) groups a sweep's points with it.
"""

import os
import time

from absl import logging
from clu import metric_writers
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import NamedSharding, PartitionSpec as P

from vae_jax import checkpoint
from vae_jax import config_schema
from vae_jax import evaluate
from vae_jax import input_pipeline
from vae_jax import losses
from vae_jax import models
from vae_jax import progress
from vae_jax import train


def program_key(config: ml_collections.ConfigDict) -> tuple:
  """Equal for two configs exactly when their runs can share one vmapped program."""
  return tuple((key, repr(value)) for key, value in sorted(config_schema.flat_items(
      config).items()) if key not in train.VECTORIZABLE_KEYS
               and not key.startswith(config_schema.RESUME_FREE_KEYS))


def check_vectorizable(configs: list) -> None:
  """Raises ValueError naming the keys in which the configs differ beyond the allowed."""
  first = dict(program_key(configs[0]))
  for index, config in enumerate(configs[1:], start=1):
    other = dict(program_key(config))
    differing = sorted(key for key in first.keys() | other.keys()
                       if first.get(key) != other.get(key))
    if differing:
      raise ValueError(
          f"Runs 0 and {index} differ in {', '.join(differing)}; runs trained together may "
          f"differ only in {', '.join(train.VECTORIZABLE_KEYS)} (and in keys that do not "
          "change training, such as eval.* and figures.*). Train them in separate groups.")
  # Cadence keys shape the loop, which the group shares; take them from run 0 only if equal.
  for key in ("train.log_every_steps", "checkpoint_every_steps", "train.steps_per_dispatch",
              "train.num_epochs", "train.num_steps"):
    values = {repr(config_schema.flat_items(config)[key]) for config in configs}
    if len(values) > 1:
      raise ValueError(f"Runs trained together need the same config.{key}; got "
                       f"{', '.join(sorted(values))}.")


def _stack(trees: list):
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def stack_states(states: list):
  """One TrainState whose leaves carry a leading model axis (tx and apply_fn, static,
  are the first state's: the step builds each model's optimizer from its hyperparameters)."""
  return states[0].replace(step=_stack([s.step for s in states]),
                           params=_stack([s.params for s in states]),
                           opt_state=_stack([s.opt_state for s in states]))


def _unstack(tree, index: int):
  return jax.tree.map(lambda leaf: leaf[index], tree)


def stack_hyperparameters(configs: list) -> dict[str, jax.Array]:
  """train.step_hyperparameters of each config, as float32 arrays with a model axis."""
  rows = [train.step_hyperparameters(config) for config in configs]
  return {name: jnp.asarray([row[name] for row in rows], jnp.float32) for name in rows[0]}


def make_vectorized_train_steps(model, config, mesh: jax.sharding.Mesh,
                                steps_per_epoch: int):
  """steps(states, dataset, epoch_indices, rngs, hypers, num_steps) -> (states, metrics).

  As train.make_dataset_train_steps, with a leading model axis on `states` (a stacked
  TrainState), `epoch_indices` (K, steps_per_epoch, B), `rngs` (K,) and each of `hypers`
  (train.step_hyperparameters, values (K,)); metrics come back (num_steps, K).
  """
  body = jax.vmap(train.train_step_body(model, config, steps_per_epoch))
  sharded_body = jax.shard_map(body, mesh=mesh,
                               in_specs=(P(), P(None, train.BATCH_AXIS), P(), P()),
                               out_specs=(P(), P()))

  def one_step(states, dataset, epoch_indices, rngs, hypers):
    rows = states.step % steps_per_epoch
    indices = jax.vmap(lambda matrix, row: jax.lax.dynamic_index_in_dim(
        matrix, row, keepdims=False))(epoch_indices, rows)
    batch = {name: jnp.take(array, indices, axis=0) for name, array in dataset.items()}
    return sharded_body(states, batch, rngs, hypers)

  def steps(states, dataset, epoch_indices, rngs, hypers, num_steps):
    return train.scan_steps(one_step, states, num_steps, dataset, epoch_indices, rngs,
                            hypers)

  return jax.jit(steps, static_argnums=5, donate_argnums=0)


def _restore_group(checkpointers, initial_states):
  """Each run's state, progress and step, restored at the latest step all runs have."""
  latest = [c.latest_step() for c in checkpointers]
  if any(step is None for step in latest):
    if any(step is not None for step in latest):
      saved = [c.workdir for c in checkpointers if c.latest_step() is not None]
      raise ValueError(
          f"Some runs of this group have checkpoints ({', '.join(saved)}) and others none: "
          "they were not trained together. Move those workdirs away, or train the runs "
          "one by one with python -m vae_jax.main.")
    return initial_states, [{} for _ in checkpointers], None
  common = min(latest)
  restored = [c.restore_latest(state, max_step=common)
              for c, state in zip(checkpointers, initial_states)]
  steps = {step for _, _, step in restored}
  if len(steps) != 1:
    raise ValueError(
        f"The group's checkpoints do not share a step (found {sorted(map(str, steps))}); "
        "train these runs one by one with python -m vae_jax.main, which resumes each.")
  return ([state for state, _, _ in restored], [p for _, p, _ in restored], steps.pop())


def train_and_evaluate_together(configs: list, workdirs: list[str]) -> list[dict]:
  """Trains len(configs) runs as one vmapped program; returns each run's summary, as
  train.train_and_evaluate would. Raises ValueError when they cannot share a program."""
  if len(configs) != len(workdirs) or not configs:
    raise ValueError("Pass one workdir per config, and at least one config.")
  for config in configs:
    config_schema.validate(config)
  check_vectorizable(configs)
  base = configs[0]
  count = len(configs)
  is_writer = jax.process_index() == 0
  checkpointers = []
  for config, workdir in zip(configs, workdirs):
    os.makedirs(workdir, exist_ok=True)
    checkpointers.append(checkpoint.Checkpointer(workdir, config.checkpoints_to_keep))
    train.check_same_config(config, workdir, checkpointers[-1].latest_step())
    if is_writer:
      train.write_atomically(os.path.join(workdir, "config.json"),
                             config.to_json_best_effort(indent=2, sort_keys=True))

  mesh = train.make_mesh()
  replicated = NamedSharding(mesh, P())
  data = train.load_device_data(base, mesh)
  steps_per_epoch, num_steps = data.steps_per_epoch, data.num_steps
  model = models.get_model(base.model, base.dtype)
  keys = [train.run_keys(config.seed) for config in configs]
  initial = [train.replicate(train.create_train_state(model, base, k["init"], steps_per_epoch),
                             mesh) for k in keys]
  states, saved_progress, start_step = _restore_group(checkpointers, initial)
  start_step = start_step or 0
  stacked = jax.device_put(stack_states(states), replicated)
  hypers = jax.device_put(stack_hyperparameters(configs), replicated)
  rngs = jax.device_put(_stack([k["train"] for k in keys]), replicated)
  shuffle_rngs = _stack([k["shuffle"] for k in keys])
  histories = [train.read_history(w, up_to_step=start_step) for w in workdirs]
  if is_writer:
    for workdir, history in zip(workdirs, histories):
      train.write_history(workdir, history)
  if start_step:
    logging.info("Resuming %d runs at step %d of %d.", count, start_step, num_steps)

  train_steps = make_vectorized_train_steps(model, base, mesh, steps_per_epoch)
  num_examples = data.splits["train"].num_examples
  batch_indices = jax.jit(jax.vmap(
      lambda rng, epoch: input_pipeline.epoch_batch_indices(rng, epoch, num_examples,
                                                            base.train.batch_size),
      in_axes=(0, None)))
  evaluate_elbo = evaluate.make_elbo_evaluator(model, base, mesh)
  writers = [metric_writers.create_default_writer(w, just_logging=not is_writer)
             for w in workdirs]
  reporter = progress.Progress(
      total_steps=num_steps, steps_per_epoch=steps_per_epoch,
      batch_size=base.train.batch_size * count, start_step=start_step,
      every_seconds=base.train.progress_every_seconds if is_writer else 0,
      draw_bar=None if is_writer else False)

  epoch_metrics = [list(p.get("epoch_metrics", [])) for p in saved_progress]
  pending, pending_start = [], start_step
  checkpoint_step = start_step or None

  def fetch_pending():
    """The pending steps' metrics, per run, checked for NaN and appended to the epoch's."""
    nonlocal pending, pending_start
    host_metrics = jax.device_get(pending)  # One transfer for all runs.
    for run in range(count):
      fetched = [{name: float(values[i, run]) for name, values in stacked_metrics.items()}
                 for stacked_metrics in host_metrics
                 for i in range(len(stacked_metrics["loss"]))]
      try:
        train.check_finite(fetched, pending_start, checkpoint_step)
      except train.NonFiniteLossError as error:
        raise train.NonFiniteLossError(f"Run {workdirs[run]}: {error}") from None
      epoch_metrics[run].extend(fetched)
    pending_start += sum(len(m["loss"]) for m in host_metrics)
    pending = []

  def save(step):
    nonlocal checkpoint_step
    fetch_pending()
    for run, checkpointer in enumerate(checkpointers):
      checkpointer.save(step, _unstack(stacked, run), {"epoch_metrics": epoch_metrics[run]})
    checkpoint_step = step

  finished, indices_epoch, epoch_indices = start_step, None, None
  with train.SigtermFlag() as sigterm:
    while finished < num_steps:
      epoch = finished // steps_per_epoch
      if indices_epoch != epoch:
        epoch_indices = batch_indices(shuffle_rngs, epoch)
        indices_epoch = epoch
      dispatch = train.dispatch_size(finished, steps_per_epoch, num_steps, base)
      stacked, metrics = train_steps(stacked, data.train, epoch_indices, rngs, hypers,
                                     dispatch)
      pending.append(metrics)
      finished += dispatch
      reporter.update(finished)
      end_of_epoch = finished % steps_per_epoch == 0 or finished == num_steps
      if finished % base.train.log_every_steps == 0 or end_of_epoch:
        fetch_pending()
      if end_of_epoch:
        evaluation_start = time.time()
        for run in range(count):
          summary = {f"train_{name}": value
                     for name, value in train.epoch_means(epoch_metrics[run]).items()}
          params = _unstack(stacked.params, run)
          for split, split_data in data.eval.items():
            for name, value in evaluate_elbo(params, split_data, keys[run]["eval"],
                                             losses.loss_weights(configs[run])).items():
              summary[f"{split}_{name}"] = value
          summary["epoch"] = round(finished / steps_per_epoch, 3)
          writers[run].write_scalars(finished, dict(summary))  # The writer is asynchronous.
          summary["step"] = finished
          histories[run].append(summary)
          if is_writer:
            train.write_history(workdirs[run], histories[run])
          epoch_metrics[run] = []
        logging.info("epoch %g (step %d): test -ELBO of the %d runs: %s nats",
                     finished / steps_per_epoch, finished, count,
                     ", ".join(f"{h[-1].get('test_neg_elbo', float('nan')):.2f}"
                               for h in histories))
        save(finished)
        reporter.exclude(time.time() - evaluation_start)
      elif base.checkpoint_every_steps and finished % base.checkpoint_every_steps == 0:
        save(finished)
      if sigterm.should_stop(finished) and finished < num_steps:
        save(finished)
        for writer, checkpointer in zip(writers, checkpointers):
          writer.flush()
          checkpointer.close()
        raise train.PreemptedError(
            f"Received SIGTERM: saved checkpoints of step {finished} of {num_steps} for "
            f"the {count} runs. Run the same command again to resume.")

  summaries = []
  for run, (config, workdir) in enumerate(zip(configs, workdirs)):
    summaries.append(train.finish_run(
        model, _unstack(stacked.params, run), config, workdir, writers[run], histories[run],
        data.eval, data.splits["test"], mesh, keys[run], num_steps))
    checkpointers[run].close()
  return summaries

