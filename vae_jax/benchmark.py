"""Speed of each shipped config against this machine's matmul roofline and a minimal step.

    python -m vae_jax.benchmark [--configs=mlp,cvae] [--seconds=5] [--json=PATH]
                                [--steps_per_dispatch=N] [--profile_dir=DIR]
    python -m vae_jax.benchmark --vectorized_models=8 [--configs=...]

For each config it prints compile time, steady-state train steps/s and examples/s, test
-ELBO throughput (images/s) and importance-sampled NLL throughput (samples/s), the peak
memory, and the roofline measured in the same run: the best float32 matmul GFLOP/s of
this machine, the train step's FLOPs (XLA's cost analysis of the compiled step), the
step rate they allow, and the fraction of it reached. For the MLP configs it also times,
interleaved with the codebase's program, a *minimal step*: the same model and loss and
the same Adam, the batch gathered on the device, one key per step, `lax.scan` over the
steps, nothing else (no metrics, no per-example keys, no gradient norm, no sharding).
The codebase's steps/s as a fraction of it is what the features cost. Data are random
uint8 images of MNIST's shape held on the device, so nothing is downloaded and only
compute is timed. --profile_dir writes a trace of each config's timed steps for
TensorBoard's profile plugin.

With --vectorized_models=K it measures instead, per config, K models trained as one
vmapped program (a --mode=vectorized sweep) against the same K trained one at a time.
"""

import json
import os
import resource
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import optax

from vae_jax import config_schema
from vae_jax import evaluators
from vae_jax import input_pipeline
from vae_jax import losses
from vae_jax import models
from vae_jax import parallel
from vae_jax import steps

# name -> (configs/ file, its arg), the shipped setups.
CONFIGS = {
    "mlp": ("mlp", None),
    "conv": ("conv", None),
    "mlp2d": ("mlp2d", None),
    "cvae": ("cvae", None),
    "iwae": ("iwae", "objective=vae,k=1"),
    "iwae_k50": ("iwae", "objective=iwae,k=50"),
    "iwae2_k50": ("iwae", "layers=2,objective=iwae,k=50"),
}
_NUM_TRAIN, _NUM_TEST = 60000, 10000


def load_config(name: str):
  """The config behind benchmark `name`: configs/<file>.py's get_config(arg)."""
  return config_schema.load_shipped(*CONFIGS[name])


def _timed(fn, seconds: float, min_calls: int = 3) -> tuple[int, float]:
  """Calls fn() (which blocks) until `seconds` have passed: (calls, elapsed)."""
  calls, start = 0, time.perf_counter()
  while calls < min_calls or time.perf_counter() - start < seconds:
    fn()
    calls += 1
  return calls, time.perf_counter() - start


def matmul_roofline(rng: jax.Array, repeats: int = 5, seconds: float = 0.2,
                    max_size: int = 4096) -> dict:
  """The best float32 matmul rate in GFLOP/s: square sizes 256, 512, ... up to `max_size`,
  the best of `repeats` timings of `seconds` each (the machine's peak, not a typical rate)."""
  best = {"gflops": 0.0, "size": 0, "max_size": max_size}
  matmul = jax.jit(jnp.matmul)
  a_key, b_key = jax.random.split(rng)
  for size in (s for s in (256, 512, 1024, 2048, 4096) if s <= max_size):
    a = jax.random.normal(a_key, (size, size), jnp.float32)
    b = jax.random.normal(b_key, (size, size), jnp.float32)
    matmul(a, b).block_until_ready()
    for _ in range(repeats):
      calls, elapsed = _timed(lambda: matmul(a, b).block_until_ready(), seconds)
      gflops = 2 * size ** 3 * calls / elapsed / 1e9
      if gflops > best["gflops"]:
        best = dict(best, gflops=gflops, size=size)
  return best


def _peak_memory_mb() -> float:
  """Peak device memory when the backend reports it (GPU/TPU), else the process's peak RSS."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2 ** 20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB.


def _random_dataset(rng: jax.Array, sharding, image_shape,
                    num_classes: int) -> dict[str, jax.Array]:
  """uint8 images of `image_shape` and labels, on the devices."""
  image_key, label_key = jax.random.split(rng)
  return jax.device_put({
      "image": jax.random.randint(image_key, (_NUM_TRAIN,) + image_shape, 0, 256).astype(
          jnp.uint8),
      "label": jax.random.randint(label_key, (_NUM_TRAIN,), 0, num_classes)},
      sharding)


def _epoch_indices(batch_size: int, replicated) -> jax.Array:
  steps_per_epoch = _NUM_TRAIN // batch_size
  return jax.device_put(jnp.arange(steps_per_epoch * batch_size, dtype=jnp.int32).reshape(
      steps_per_epoch, batch_size), replicated)


def make_minimal_program(model, config, steps_per_epoch: int):
  """The same model, loss and Adam as the codebase's step, with nothing else.

  program(params, opt_state, step, dataset, epoch_indices, rng, num_steps) -> (params,
  opt_state, step, losses): each step gathers its batch from the resident dataset, takes
  one key fold_in(rng, step) and draws the whole batch's binarization and noise from it,
  and applies Adam; no metrics, per-example keys, gradient norm or sharding.
  """
  optimizer = steps.make_optimizer(config, steps_per_epoch)
  binarization, likelihood = config.data.binarization, config.model.likelihood
  objective, num_bounds = config.loss.objective, config.loss.num_bounds
  num_samples = losses.samples_per_example(config.loss.num_samples, objective, num_bounds)
  weights = losses.loss_weights(config)

  def loss_fn(params, images_uint8, labels, key):
    binarize_key, noise_key = jax.random.split(key)
    images = input_pipeline.to_model_input(images_uint8, binarization, binarize_key)
    eps = jax.random.normal(noise_key, (images.shape[0], num_samples, model.noise_dim))
    terms = jax.vmap(lambda image, label, e: losses.elbo_terms_from_noise(
        model, {"params": params}, image, label, e, likelihood=likelihood,
        objective=objective, num_bounds=num_bounds, ciwae_beta=config.loss.ciwae_beta,
        train=True, **weights))(images, labels, eps)
    return jnp.mean(terms["loss"])

  def one_step(carry, _, dataset, epoch_indices, rng):
    params, opt_state, step = carry
    indices = jax.lax.dynamic_index_in_dim(epoch_indices, step % steps_per_epoch,
                                           keepdims=False)
    loss, grads = jax.value_and_grad(loss_fn)(
        params, jnp.take(dataset["image"], indices, axis=0),
        jnp.take(dataset["label"], indices, axis=0), jax.random.fold_in(rng, step))
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, step + 1), loss

  def program(params, opt_state, step, dataset, epoch_indices, rng, num_steps):
    (params, opt_state, step), step_losses = jax.lax.scan(
        lambda carry, x: one_step(carry, x, dataset, epoch_indices, rng),
        (params, opt_state, step), length=num_steps)
    return params, opt_state, step, step_losses

  return jax.jit(program, static_argnums=6, donate_argnums=(0, 1))


def _interleaved_rates(dispatches: dict, steps_per_call: int, seconds: float,
                       rounds: int = 5) -> dict[str, float]:
  """steps/s of each blocking dispatch, timed in turn for `rounds` rounds of
  seconds/rounds each; the best round of each, so a noisy neighbour hurts neither."""
  rates = {name: 0.0 for name in dispatches}
  for _ in range(rounds):
    for name, dispatch in dispatches.items():
      calls, elapsed = _timed(dispatch, seconds / rounds)
      rates[name] = max(rates[name], calls * steps_per_call / elapsed)
  return rates


def benchmark_config(name: str, rng: jax.Array, roofline_gflops: float, seconds: float,
                     steps_per_dispatch: int = 0, profile_dir: str = "") -> dict:
  """One record of the table; `rng` makes the data, the parameters and every key."""
  data_key, init_key, train_key, elbo_key, nll_key = jax.random.split(rng, 5)
  config = load_config(name)
  if steps_per_dispatch:
    config.train.steps_per_dispatch = steps_per_dispatch
  config_schema.validate(config)
  image_shape = input_pipeline.configured_image_shape(config)
  model = models.get_model(config.model, image_shape, config.dtype)
  mesh = parallel.make_mesh()
  replicated = parallel.replicated(mesh)
  dataset = _random_dataset(data_key, replicated, image_shape, config.model.num_classes)
  test = jax.device_put({"image": dataset["image"][:_NUM_TEST],
                         "label": dataset["label"][:_NUM_TEST]}, replicated)
  batch_size = config.train.batch_size
  steps_per_epoch = _NUM_TRAIN // batch_size
  state = parallel.replicate(steps.create_train_state(model, config, init_key,
                                                      steps_per_epoch), mesh)
  epoch_indices = _epoch_indices(batch_size, replicated)
  train_steps = steps.make_train_program(model, [config], mesh, steps_per_epoch)
  per_dispatch = config.train.steps_per_dispatch

  start = time.perf_counter()
  train_steps.lower(state, dataset, epoch_indices, train_key, per_dispatch).compile()
  compile_seconds = time.perf_counter() - start
  # From the one-step program: XLA's cost analysis counts a scan's body once.
  compiled_step = train_steps.lower(state, dataset, epoch_indices, train_key, 1).compile()
  cost = compiled_step.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops_per_step = float(cost["flops"])

  holder = {"state": state}

  def dispatch():
    holder["state"], metrics = train_steps(holder["state"], dataset, epoch_indices,
                                           train_key, per_dispatch)
    metrics["loss"].block_until_ready()

  dispatch()  # Warm-up: first call's overheads.
  dispatches = {"codebase": dispatch}
  if config.model.name == "mlp":
    minimal = make_minimal_program(model, config, steps_per_epoch)
    fresh = steps.create_train_state(model, config, init_key, steps_per_epoch)
    holder["minimal"] = (fresh.params, fresh.opt_state, jnp.zeros((), jnp.int32))

    def minimal_dispatch():
      *holder["minimal"], step_losses = minimal(*holder["minimal"], dataset, epoch_indices,
                                                train_key, per_dispatch)
      step_losses.block_until_ready()

    minimal_dispatch()  # Compiles.
    dispatches["minimal"] = minimal_dispatch
  rates = _interleaved_rates(dispatches, per_dispatch, seconds)
  steps_per_sec = rates["codebase"]
  if profile_dir:
    with jax.profiler.trace(os.path.join(profile_dir, name)):
      for _ in range(5):
        dispatch()

  evaluator = evaluators.Evaluators(model, config, mesh)
  params = holder["state"].params
  evaluator.neg_elbo(params, test, elbo_key, config)
  calls, elapsed = _timed(lambda: evaluator.neg_elbo(params, test, elbo_key, config), seconds, 1)
  elbo_images_per_sec = calls * _NUM_TEST / elapsed

  # One NLL batch of the config's size, one chunk of samples per example: the unit of
  # work that config.eval.nll_batch_size and importance_chunk_size size to fit memory.
  nll_examples, nll_samples = config.eval.nll_batch_size, config.eval.importance_chunk_size
  nll_data = jax.device_put({k: v[:nll_examples] for k, v in test.items()}, replicated)
  evaluator.nll(params, nll_data, nll_key, config, nll_samples)
  calls, elapsed = _timed(lambda: evaluator.nll(params, nll_data, nll_key, config, nll_samples),
                          seconds, 1)
  nll_samples_per_sec = calls * nll_examples * nll_samples / elapsed

  roofline_steps_per_sec = roofline_gflops * 1e9 / flops_per_step
  record = {
      "config": name,
      "batch_size": batch_size,
      "steps_per_dispatch": per_dispatch,
      "compile_seconds": compile_seconds,
      "steps_per_sec": steps_per_sec,
      "examples_per_sec": steps_per_sec * batch_size,
      "gflops_per_step": flops_per_step / 1e9,
      "hlo_lines_per_step": len(compiled_step.as_text().splitlines()),
      "roofline_steps_per_sec": roofline_steps_per_sec,
      "roofline_fraction": steps_per_sec / roofline_steps_per_sec,
      "minimal_steps_per_sec": rates.get("minimal", float("nan")),
      "of_minimal": steps_per_sec / rates["minimal"] if "minimal" in rates else float("nan"),
      "eval_elbo_images_per_sec": elbo_images_per_sec,
      "nll_samples_per_sec": nll_samples_per_sec,
      "peak_rss_mb": _peak_memory_mb(),
  }
  return record


def benchmark_vectorized(name: str, num_models: int, rng: jax.Array, seconds: float) -> dict:
  """Steady-state training throughput of `num_models` models of config `name` trained as
  one vmapped program (train.train_group, as --mode=vectorized sweeps do) against the
  same models trained one after the other (one model's program, as sequential sweeps
  do): model-steps/s of each, and their ratio."""
  data_key, init_key, train_key = jax.random.split(rng, 3)
  config = load_config(name)
  image_shape = input_pipeline.configured_image_shape(config)
  model = models.get_model(config.model, image_shape, config.dtype)
  mesh = parallel.make_mesh()
  replicated = parallel.replicated(mesh)
  dataset = _random_dataset(data_key, replicated, image_shape, config.model.num_classes)
  batch_size, per_dispatch = config.train.batch_size, config.train.steps_per_dispatch
  steps_per_epoch = _NUM_TRAIN // batch_size
  epoch_indices = _epoch_indices(batch_size, replicated)
  init_keys = jax.random.split(init_key, num_models)
  states = [steps.create_train_state(model, config, key, steps_per_epoch) for key in init_keys]
  train_keys = jax.random.split(train_key, num_models)

  single_steps = steps.make_train_program(model, [config], mesh, steps_per_epoch)
  holder = {"state": parallel.replicate(states[0], mesh)}

  def single_dispatch():
    holder["state"], metrics = single_steps(holder["state"], dataset, epoch_indices,
                                            train_keys[0], per_dispatch)
    metrics["loss"].block_until_ready()

  vectorized_steps = steps.make_train_program(model, [config] * num_models, mesh,
                                              steps_per_epoch)
  holder["stacked"] = parallel.replicate(steps.stack_states(states), mesh)
  all_indices = jax.device_put(jnp.stack([epoch_indices] * num_models), replicated)

  def vectorized_dispatch():
    holder["stacked"], metrics = vectorized_steps(holder["stacked"], dataset, all_indices,
                                                  train_keys, per_dispatch)
    metrics["loss"].block_until_ready()

  record = {"config": name, "models": num_models, "batch_size": batch_size,
            "steps_per_dispatch": per_dispatch}
  for label, dispatch, models_per_step in (("sequential", single_dispatch, 1),
                                           ("vectorized", vectorized_dispatch, num_models)):
    start = time.perf_counter()
    dispatch()  # Compiles.
    record[f"{label}_first_call_seconds"] = time.perf_counter() - start
    calls, elapsed = _timed(dispatch, seconds)
    record[f"{label}_model_steps_per_sec"] = calls * per_dispatch * models_per_step / elapsed
  record["speedup"] = (record["vectorized_model_steps_per_sec"]
                       / record["sequential_model_steps_per_sec"])
  return record


_COLUMNS = [("config", "config", "{}"), ("batch", "batch_size", "{}"),
            ("per dispatch", "steps_per_dispatch", "{}"),
            ("compile s", "compile_seconds", "{:.1f}"), ("steps/s", "steps_per_sec", "{:.1f}"),
            ("examples/s", "examples_per_sec", "{:.0f}"),
            ("GFLOP/step", "gflops_per_step", "{:.3f}"),
            ("roofline steps/s", "roofline_steps_per_sec", "{:.1f}"),
            ("of roofline", "roofline_fraction", "{:.0%}"),
            ("minimal steps/s", "minimal_steps_per_sec", "{:.1f}"),
            ("of minimal", "of_minimal", "{:.2f}"),
            ("-ELBO images/s", "eval_elbo_images_per_sec", "{:.0f}"),
            ("NLL samples/s", "nll_samples_per_sec", "{:.0f}"),
            ("peak MB", "peak_rss_mb", "{:.0f}")]


def format_report(roofline: dict, records: list[dict]) -> str:
  """The roofline line, then one table row per record."""
  lines = [f"float32 matmul roofline: {roofline['gflops']:.1f} GFLOP/s "
           f"(best of square sizes 256-{roofline['max_size']}, at {roofline['size']})",
           "| " + " | ".join(title for title, _, _ in _COLUMNS) + " |",
           "| " + " | ".join("---" for _ in _COLUMNS) + " |"]
  for record in records:
    lines.append("| " + " | ".join(fmt.format(record[key]) for _, key, fmt in _COLUMNS) + " |")
  return "\n".join(lines)


_VECTORIZED_COLUMNS = [
    ("config", "config", "{}"), ("models", "models", "{}"), ("batch", "batch_size", "{}"),
    ("per dispatch", "steps_per_dispatch", "{}"),
    ("one at a time: model-steps/s", "sequential_model_steps_per_sec", "{:.1f}"),
    ("vectorized: model-steps/s", "vectorized_model_steps_per_sec", "{:.1f}"),
    ("speed-up", "speedup", "{:.2f}x"),
    ("compile s (one, vectorized)", None, None)]


def format_vectorized_report(records: list[dict]) -> str:
  lines = ["| " + " | ".join(title for title, _, _ in _VECTORIZED_COLUMNS) + " |",
           "| " + " | ".join("---" for _ in _VECTORIZED_COLUMNS) + " |"]
  for record in records:
    cells = [fmt.format(record[key]) for _, key, fmt in _VECTORIZED_COLUMNS if key]
    cells.append(f"{record['sequential_first_call_seconds']:.1f}, "
                 f"{record['vectorized_first_call_seconds']:.1f}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  """Logs progress; prints the report (the command's output) at the end."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  names = [n for n in flags.FLAGS.configs.split(",") if n]
  unknown = [n for n in names if n not in CONFIGS]
  if unknown:
    sys.exit(f"--configs: unknown {', '.join(unknown)}; known: {', '.join(CONFIGS)}.")
  device = jax.devices()[0]
  logging.info("devices: %d x %s (%s); JAX %s", jax.device_count(), device.device_kind,
               jax.default_backend(), jax.__version__)
  roofline_key, configs_key = jax.random.split(jax.random.key(0))
  if flags.FLAGS.vectorized_models:
    records = []
    for index, name in enumerate(names):
      records.append(benchmark_vectorized(name, flags.FLAGS.vectorized_models,
                                          jax.random.fold_in(configs_key, index),
                                          flags.FLAGS.seconds))
      records[-1].update(device=device.device_kind, backend=jax.default_backend())
      logging.info("%s: %.2fx", name, records[-1]["speedup"])
    _write_json(records)
    print(format_vectorized_report(records))
    return
  if flags.FLAGS.roofline_max_size not in (256, 512, 1024, 2048, 4096):
    sys.exit(f"--roofline_max_size={flags.FLAGS.roofline_max_size} must be one of 256, 512, "
             "1024, 2048, 4096.")
  roofline = matmul_roofline(roofline_key, max_size=flags.FLAGS.roofline_max_size)
  logging.info("float32 matmul roofline: %.1f GFLOP/s", roofline["gflops"])
  records = []
  for index, name in enumerate(names):
    record = benchmark_config(name, jax.random.fold_in(configs_key, index),
                              roofline["gflops"], flags.FLAGS.seconds,
                              flags.FLAGS.steps_per_dispatch, flags.FLAGS.profile_dir)
    record.update(matmul_gflops=roofline["gflops"], device=device.device_kind,
                  backend=jax.default_backend(), device_count=jax.device_count())
    records.append(record)
    logging.info("%s: %.1f steps/s, %.0f%% of the roofline, %.2f of the minimal step",
                 name, record["steps_per_sec"], 100 * record["roofline_fraction"],
                 record["of_minimal"])
  _write_json(records)
  print(format_report(roofline, records))


def _write_json(records: list[dict]) -> None:
  if flags.FLAGS.json:
    with open(flags.FLAGS.json, "w") as f:
      json.dump(records, f, indent=2)
    logging.info("Wrote %s", flags.FLAGS.json)


if __name__ == "__main__":
  flags.DEFINE_string("configs", ",".join(CONFIGS), "Comma-separated names of: "
                      + ", ".join(CONFIGS) + ".")
  flags.DEFINE_float("seconds", 5.0, "Timed seconds per measurement.")
  flags.DEFINE_string("json", "", "Also write the records to this JSON file.")
  flags.DEFINE_integer("roofline_max_size", 4096, "Largest square matmul timed for the "
                       "roofline (from 256 up, doubling); a smaller one makes a quick run.")
  flags.DEFINE_integer("steps_per_dispatch", 0,
                       "Train steps per dispatch (0: each config's train.steps_per_dispatch).")
  flags.DEFINE_string("profile_dir", "", "Write a jax.profiler trace of each config's "
                      "train steps under DIR/<config> (TensorBoard's profile plugin).")
  flags.DEFINE_integer("vectorized_models", 0,
                       "K > 0: instead of the table, K models trained as one vmapped program "
                       "against one at a time (model-steps/s and the speed-up).")
  app.run(main)
