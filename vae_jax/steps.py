"""Keys by purpose, the train state, the optimizer, the pure step, and the ONE builder of
the jitted training program, for one run or for K runs trained together.

Everything random comes from one root key, `jax.random.key(config.seed)`, split by
purpose (`run_keys`). Step s uses fold_in(rng_train, s) and example i of its global batch
fold_in(that, i), so a run gives the same numbers on 1 or N devices and when resumed.

Runs whose configs differ only in `VECTORIZABLE_KEYS` (the seed and numeric
hyperparameters) share every shape, so `make_train_program` can stack them: one vmapped
step updates K parameter sets, each with its own keys, data order and hyperparameters,
exactly as K separate runs would (tests/vectorized_test.py checks it to 1e-5).
"""

from typing import Any

import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import PartitionSpec as P

from vae_jax import config_schema
from vae_jax import losses
from vae_jax import models
from vae_jax import parallel


def run_keys(seed: int) -> dict[str, jax.Array]:
  """The run's keys by purpose, all from jax.random.key(seed)."""
  rng_init, rng_train, rng_shuffle, rng_eval = jax.random.split(jax.random.key(seed), 4)
  return {"init": rng_init, "train": rng_train, "shuffle": rng_shuffle, "eval": rng_eval,
          # Fixed for the whole run, so figures of different epochs and runs compare.
          "figures": jax.random.fold_in(rng_eval, 1)}


# Config keys that change only numbers inside the training step, not the program: runs
# that differ in nothing else can train together as one vmapped program, each with its
# own value.
VECTORIZABLE_KEYS = ("seed", "train.learning_rate", "loss.kl_weight",
                     "loss.kl_warmup_epochs", "loss.free_bits")
# Keys that shape the loop, which a group shares: its runs must agree on them.
CADENCE_KEYS = ("train.log_every_steps", "checkpoint_every_steps",
                "train.steps_per_dispatch", "train.num_epochs", "train.num_steps",
                "train.schedule_stages", "train.progress_every_seconds",
                "figures.every_epochs", "eval.diagnostics_every_epochs", "eval.nll_at_epochs")
# Keys each run of a group reads from its own config (prefixes; CADENCE_KEYS excepted).
PER_RUN_KEYS = VECTORIZABLE_KEYS + ("eval.", "figures.", "checkpoints_to_keep",
                                    "resume_mismatch")


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
  boundaries = {config_schema.schedule_epochs(stage) * steps_per_epoch: 10.0 ** (-1.0 / 7.0)
                for stage in range(1, config.train.schedule_stages)}  # Multiplies the rate.
  return optax.piecewise_constant_schedule(base, boundaries)


def learning_rate_at(config, steps_per_epoch: int, step: int) -> float:
  """The rate the optimizer applies at `step` (on the host, for the logs)."""
  schedule = learning_rate_schedule(config, steps_per_epoch)
  return float(schedule(step)) if callable(schedule) else float(schedule)


def make_optimizer(config, steps_per_epoch: int, learning_rate=None):
  """Adam as the config says; `learning_rate` (possibly traced) replaces the config's."""
  return optax.adam(learning_rate_schedule(config, steps_per_epoch, learning_rate),
                    b1=config.train.adam_b1, b2=config.train.adam_b2,
                    eps=config.train.adam_eps)


class TrainState(train_state.TrainState):
  """flax's TrainState with `ema_params`, the exponential moving average of the
  parameters (config.train.ema_decay > 0), or None (no leaves: saved as before)."""
  ema_params: Any = None


def create_train_state(model: nn.Module, config, rng_init: jax.Array,
                       steps_per_epoch: int = 1) -> TrainState:
  """Initializes parameters (from one example's shapes), Adam, and the average."""
  # Jitted: one compiled program instead of one per initializer op (about 2x faster to
  # start; the same parameters bit for bit).
  variables = jax.jit(model.init)(rng_init, jnp.zeros(model.image_shape, jnp.float32),
                                  jnp.zeros((model.noise_dim,), jnp.float32),
                                  jnp.zeros((), jnp.int32))
  params = variables["params"]
  state = TrainState.create(apply_fn=model.apply, params=params,
                            tx=make_optimizer(config, steps_per_epoch),
                            # Its own buffers: the program donates the whole state.
                            ema_params=(jax.tree.map(jnp.copy, params)
                                        if config.train.ema_decay > 0 else None))
  # A strongly typed step, like the one the train step returns, so step 2 does not retrace.
  return state.replace(step=jnp.zeros((), jnp.int32))


def kl_warmup_factor(step, warmup_epochs, steps_per_epoch: int):
  """The KL weight's multiplier at `step`: min(1, step / warm-up steps), 1 without warm-up."""
  if isinstance(warmup_epochs, (int, float)) and warmup_epochs == 0:
    return 1.0  # Static, so runs without warm-up keep their bits.
  warmup_steps = warmup_epochs * steps_per_epoch
  ramp = step.astype(jnp.float32) / jnp.maximum(warmup_steps, 1e-9)
  return jnp.where(warmup_steps > 0, jnp.minimum(1.0, ramp), 1.0)


def make_grads_fn(model: nn.Module, config):
  """grads_fn(params, batch, step_rng, weights) -> (grads, mean terms) of the global batch.

  Runs per device inside shard_map, on the device's shard of the batch: example i of the
  global batch draws from fold_in(step_rng, i). `weights` are the loss's
  {"kl_weight", "free_bits"} (possibly traced).
  """
  example_terms = losses.make_example_terms_fn(model, config, train=True)

  def loss_fn(params, batch, keys, weights):
    terms = jax.vmap(example_terms, in_axes=(None, 0, 0, 0, None))(
        params, batch["image"], batch["label"], keys, weights)
    means = jax.tree.map(jnp.mean, terms)
    return means["loss"], means

  def grads_fn(params, batch, step_rng, weights):
    local_batch_size = batch["image"].shape[0]
    first_index = jax.lax.axis_index(parallel.BATCH_AXIS) * local_batch_size
    keys = parallel.example_keys(step_rng, first_index + jnp.arange(local_batch_size))
    # Cast the replicated parameters to per-device values so that grad gives each device
    # the gradient of its own shard's loss (without the cast, shard_map's autodiff would
    # already sum them over devices). Equal shards: their mean is the global-batch mean.
    local_params = jax.lax.pcast(params, parallel.BATCH_AXIS, to="varying")
    grads, metrics = jax.grad(loss_fn, has_aux=True)(local_params, batch, keys, weights)
    return jax.lax.pmean((grads, metrics), parallel.BATCH_AXIS)

  return grads_fn


def make_train_step(model: nn.Module, config, steps_per_epoch: int):
  """The pure step(state, batch, rng, hyper) -> (state, metrics) of one run, per device
  (inside shard_map, the batch its shard).

  The step's key is fold_in(rng, state.step); `hyper` is step_hyperparameters(config)
  (Python floats) or, for a vmapped group, traced values.
  """
  grads_fn = make_grads_fn(model, config)
  skip_nonfinite = config.train.skip_nonfinite_updates
  ema_decay = config.train.ema_decay

  def train_step(state: TrainState, batch, rng: jax.Array, hyper: dict):
    step_rng = jax.random.fold_in(rng, state.step)
    warmup = kl_warmup_factor(state.step, hyper["kl_warmup_epochs"], steps_per_epoch)
    weights = {"kl_weight": hyper["kl_weight"] * warmup, "free_bits": hyper["free_bits"]}
    grads, metrics = grads_fn(state.params, batch, step_rng, weights)
    # Built here so that a vmapped group can give each model its own rate.
    optimizer = make_optimizer(config, steps_per_epoch, hyper["learning_rate"])
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, opt_state=opt_state,
                              params=optax.apply_updates(state.params, updates))
    if state.ema_params is not None:  # Static: runs without the average keep their bits.
      new_state = new_state.replace(ema_params=optax.incremental_update(
          new_state.params, state.ema_params, step_size=1.0 - ema_decay))
    if skip_nonfinite:
      # A non-finite gradient makes grad_norm non-finite. A skipped update keeps the
      # parameters and Adam's moments but advances the step (and with it the data).
      # Only here: the norm's passes over the gradients were the largest cost beside a
      # small MLP's step on CPU (python -m vae_jax.benchmark, "of minimal"). Without it, a NaN
      # gradient shows in the next step's loss, and the loop checks the parameters
      # before every checkpoint.
      metrics["grad_norm"] = optax.tree.norm(grads)
      finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
      kept = state.replace(step=new_state.step)
      new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, kept)
      metrics["skipped"] = 1.0 - finite.astype(jnp.float32)
    return new_state, metrics

  return train_step


def make_train_program(model: nn.Module, configs: list, mesh: jax.sharding.Mesh,
                       steps_per_epoch: int):
  """The jitted training program of a group: one run (`configs` of length 1) or K.

  program(state, dataset, epoch_indices, rng, num_steps) -> (state, metrics) runs
  `num_steps` (static) steps in one `lax.scan`, with no host work in between, and
  donates `state`. Each step gathers its batch on the device from the resident
  `dataset`: row state.step % steps_per_epoch of the epoch's (steps_per_epoch, B)
  `epoch_indices`; its key is fold_in(rng, state.step). So every step's batch and noise
  come from its own step number, and the results do not depend on num_steps.

  For K > 1 runs (which may differ only in VECTORIZABLE_KEYS), `state` is a stacked
  TrainState (stack_states), `epoch_indices` is (K, steps_per_epoch, B) and `rng` (K,);
  each run's hyperparameters come from its config. Metrics come back (num_steps,) per
  name for one run and (num_steps, K) for K.

  The step runs per device with shard_map: the batch split over the mesh's "batch"
  axis, the parameters replicated, the gradients averaged with pmean.
  """
  num_models = len(configs)
  step = make_train_step(model, configs[0], steps_per_epoch)
  if num_models == 1:
    # Python floats: the program is specialized to them, as an ordinary run's is.
    hyper = step_hyperparameters(configs[0])
    batch_spec = P(parallel.BATCH_AXIS)
  else:
    hyper = stack_hyperparameters(configs)
    step = jax.vmap(step)
    batch_spec = P(None, parallel.BATCH_AXIS)
  sharded_step = jax.shard_map(lambda state, batch, rng: step(state, batch, rng, hyper),
                               mesh=mesh, in_specs=(P(), batch_spec, P()),
                               out_specs=(P(), P()))

  def pick_row(matrix, row):
    return jax.lax.dynamic_index_in_dim(matrix, row, keepdims=False)

  def one_step(state, dataset, epoch_indices, rng):
    rows = state.step % steps_per_epoch
    indices = (pick_row(epoch_indices, rows) if num_models == 1
               else jax.vmap(pick_row)(epoch_indices, rows))
    # Gathered outside shard_map (its in_specs then split the batch over the mesh):
    # passing the whole dataset into shard_map, or constraining the batch's sharding
    # here, measured ~1.6x slower per step on CPU.
    batch = {name: jnp.take(array, indices, axis=0) for name, array in dataset.items()}
    return sharded_step(state, batch, rng)

  def train_program(state, dataset, epoch_indices, rng, num_steps):
    if num_steps == 1:
      state, metrics = one_step(state, dataset, epoch_indices, rng)
      return state, jax.tree.map(lambda value: value[None], metrics)
    return jax.lax.scan(lambda carry, _: one_step(carry, dataset, epoch_indices, rng),
                        state, length=num_steps)

  return jax.jit(train_program, static_argnums=4, donate_argnums=0)


@jax.jit
def all_finite(tree) -> jax.Array:
  """True when no leaf of `tree` holds a NaN or inf."""
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


# Groups of runs trained as one program.


def program_key(config: ml_collections.ConfigDict) -> tuple:
  """Equal for two configs exactly when their runs can share one vmapped program."""
  return tuple((key, repr(value)) for key, value in sorted(config_schema.flat_items(
      config).items()) if key not in VECTORIZABLE_KEYS
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
          f"differ only in {', '.join(VECTORIZABLE_KEYS)} (and in keys that do not "
          "change training, such as eval.* and figures.*). Train them in separate groups.")
  for key in CADENCE_KEYS:
    values = {repr(config_schema.flat_items(config)[key]) for config in configs}
    if len(values) > 1:
      raise ValueError(f"Runs trained together need the same config.{key}; got "
                       f"{', '.join(sorted(values))}.")


def shared_config(configs: list) -> ml_collections.ConfigDict:
  """What a group may read from its first config: every key but PER_RUN_KEYS, which are
  removed, so that reading one of them from the group's config (instead of the run's
  own) fails at once rather than giving every run the first run's value."""
  config = configs[0].copy_and_resolve_references()
  config.unlock()
  def per_run(key):  # Exact keys, and the sections named with a trailing dot.
    return key not in CADENCE_KEYS and any(
        key.startswith(entry) if entry.endswith(".") else key == entry
        for entry in PER_RUN_KEYS)

  for key in config_schema.flat_items(config):
    if per_run(key):
      *parents, leaf = key.split(".")
      node = config
      for parent in parents:
        node = node[parent]
      del node[leaf]
  config.lock()
  return config


def stack(trees: list):
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack(tree, index: int):
  return jax.tree.map(lambda leaf: leaf[index], tree)


def stack_states(states: list) -> TrainState:
  """One TrainState whose leaves carry a leading model axis (tx and apply_fn, static,
  are the first state's: the step builds each model's optimizer from its hyperparameters)."""
  return states[0].replace(
      step=stack([s.step for s in states]), params=stack([s.params for s in states]),
      opt_state=stack([s.opt_state for s in states]),
      ema_params=(None if states[0].ema_params is None
                  else stack([s.ema_params for s in states])))


def stack_hyperparameters(configs: list) -> dict[str, jax.Array]:
  """step_hyperparameters of each config, as float32 arrays with a model axis."""
  rows = [step_hyperparameters(config) for config in configs]
  return {name: jnp.asarray([row[name] for row in rows], jnp.float32) for name in rows[0]}
