"""Evaluators: take parameters and device-resident data, return numbers; write nothing.

Also the command line `python -m vae_jax.evaluate --workdir=DIR [--num_importance_samples=
5000]`, which prints a finished run's test NLL and -ELBO, with how far to trust the NLL (its
estimate against k, the effective sample sizes), and writes them to DIR/eval.json and
DIR/figures/nll_vs_k.png.
"""

import functools
import os
import sys
import time

from absl import app
from absl import flags
from clu import metric_writers
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import checkpoint
from vae_jax import classifier
from vae_jax import config_schema
from vae_jax import figures
from vae_jax import input_pipeline
from vae_jax import losses
from vae_jax import parallel
from vae_jax import sample_quality
from vae_jax import visualize
from vae_jax import workdir as workdir_lib


def eval_binarization_keys(config, indices: jax.Array) -> jax.Array:
  """Example i's binarization key for evaluation: fold_in(key(eval.binarization_seed), i).

  Independent of the run's seed, so runs with different seeds or configs score the same
  binarized validation and test images (the literature's protocol, as in Burda et al.'s
  released code); their reparameterization noise stays the run's own.
  """
  return parallel.example_keys(jax.random.key(config.eval.binarization_seed), indices)


def make_elbo_evaluator(model: nn.Module, config, mesh: jax.sharding.Mesh):
  """Returns evaluate(params, dataset, rng[, weights]) -> mean ELBO terms (nats) over the
  whole split; `weights` (losses.loss_weights of a run, default this config's) set the
  `loss` term, so runs with other KL weights share the compiled program.

  Batches are sharded over the mesh's "batch" axis. The last partial batch is padded and
  masked, so one compiled program serves every batch. Example i's noise comes from
  fold_in(rng, i) and its binarization from eval_binarization_keys, so the result does not
  depend on the batch size or the device count.
  """
  example_terms = losses.make_example_terms_fn(model, config, train=False)

  def batch_sums(params, dataset, indices, mask, rng, weights):
    keys = parallel.example_keys(rng, indices)
    terms = jax.vmap(example_terms, in_axes=(None, 0, 0, 0, None, 0))(
        params, dataset["image"][indices], dataset["label"][indices], keys, weights,
        eval_binarization_keys(config, indices))
    return {name: jnp.sum(jnp.where(mask, value, 0.0)) for name, value in terms.items()}

  # Replicated results: every process can read them (multi-host) without a gather.
  batch_sums = jax.jit(batch_sums, out_shardings=parallel.replicated(mesh))

  def evaluate(params, dataset, rng, weights=None) -> dict[str, float]:
    weights = losses.loss_weights(config) if weights is None else weights
    num_examples = dataset["image"].shape[0]
    totals = None
    for indices, mask, _ in parallel.padded_batches(num_examples, config.eval.batch_size,
                                                    mesh):
      sums = batch_sums(params, dataset, indices, mask, rng, weights)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    return {name: float(value) / num_examples for name, value in jax.device_get(totals).items()}

  evaluate.jitted = batch_sums  # For tests: one compiled program serves every batch.
  return evaluate


def per_example_outputs(batch_fn, num_examples: int, batch_size: int,
                        mesh: jax.sharding.Mesh):
  """batch_fn(indices) -> a tree of per-example arrays, over the first `num_examples` in
  padded batches (parallel.padded_batches), brought to the host without the padding and
  concatenated."""
  batches = [jax.tree.map(lambda value, n=count: np.asarray(value)[:n], batch_fn(indices))
             for indices, _, count in parallel.padded_batches(num_examples, batch_size, mesh)]
  return jax.tree.map(lambda *parts: np.concatenate(parts), *batches)


def prefix_sizes(num_samples: int) -> tuple[int, ...]:
  """The k of the prefix estimates: 1, 10, 100, ... below num_samples, num_samples // 10
  (the last decade, for the convergence warning) and num_samples."""
  sizes, size = {num_samples}, 1
  while size < num_samples:
    sizes.add(size)
    size *= 10
  if num_samples >= 10:
    sizes.add(num_samples // 10)
  return tuple(sorted(sizes))


def importance_sampling_terms(model: nn.Module, params, image: jax.Array, label,
                              rng: jax.Array, *, likelihood: str, num_samples: int,
                              chunk_size: int) -> dict[str, jax.Array]:
  """For ONE example, from `num_samples` samples of q(z|x):

  - `log_likelihood`: log p(x) ~ logmeanexp_j log w_j;
  - `log_likelihood_at`: the same over the first k samples, for each k of
    prefix_sizes(num_samples) (the last is `log_likelihood`): IWAE-k bounds at no extra cost;
  - `ess`: the effective sample size of the normalized weights, 1 / sum_j w~_j^2;
  - `max_weight`: the largest normalized weight max_j w~_j.

  The samples are processed `chunk_size` at a time (memory stays bounded for k = 5000);
  sample j's noise comes from fold_in(rng, j), so nothing depends on the chunk size. Each
  chunk keeps its logsumexps and maximum, combined exactly at the end.
  """
  num_chunks = -(-num_samples // chunk_size)
  prefixes = prefix_sizes(num_samples)

  def chunk_statistics(chunk):
    indices = chunk * chunk_size + jnp.arange(chunk_size)
    keys = parallel.example_keys(rng, indices)
    eps = jax.vmap(lambda key: jax.random.normal(key, (model.noise_dim,)))(keys)
    log_weights = losses.log_importance_weights(model, {"params": params}, image, label,
                                                eps, likelihood=likelihood)
    # Samples past num_samples (the last chunk's padding) get weight 0.
    log_weights = jnp.where(indices < num_samples, log_weights, -jnp.inf)
    prefix_logsumexp = [jax.nn.logsumexp(jnp.where(indices < size, log_weights, -jnp.inf))
                        for size in prefixes[:-1]]
    return {"logsumexp": jax.nn.logsumexp(log_weights),
            "prefix_logsumexp": (jnp.stack(prefix_logsumexp) if prefix_logsumexp
                                 else jnp.zeros((0,))),
            "logsumexp_of_squares": jax.nn.logsumexp(2 * log_weights),
            "max": jnp.max(log_weights)}

  chunks = jax.lax.map(chunk_statistics, jnp.arange(num_chunks))
  total = jax.nn.logsumexp(chunks["logsumexp"])
  log_likelihood = total - jnp.log(num_samples)
  at_prefixes = (jax.nn.logsumexp(chunks["prefix_logsumexp"], axis=0)
                 - jnp.log(jnp.asarray(prefixes[:-1], jnp.float32)))
  return {"log_likelihood": log_likelihood,
          "log_likelihood_at": jnp.concatenate([at_prefixes, log_likelihood[None]]),
          # (sum w)^2 / sum w^2, in logs: the normalization cancels.
          "ess": jnp.exp(2 * total - jax.nn.logsumexp(chunks["logsumexp_of_squares"])),
          "max_weight": jnp.exp(jnp.max(chunks["max"]) - total)}


def importance_sampled_log_likelihood(model: nn.Module, params, image: jax.Array, label,
                                      rng: jax.Array, *, likelihood: str,
                                      num_samples: int, chunk_size: int) -> jax.Array:
  """log p(x) ~ logmeanexp_j log w_j over `num_samples` samples of q(z|x), for ONE
  example (importance_sampling_terms' `log_likelihood`)."""
  return importance_sampling_terms(model, params, image, label, rng, likelihood=likelihood,
                                   num_samples=num_samples,
                                   chunk_size=chunk_size)["log_likelihood"]


def _stderr(values: np.ndarray) -> float:
  return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def nll_diagnostics(num_samples: int, nll_at: np.ndarray, ess: np.ndarray,
                    max_weight: np.ndarray) -> dict:
  """eval.json's summary of per-example prefix NLLs (N, P), ESS (N,) and largest weights."""
  return {
      "nll_by_num_samples": [
          {"k": k, "nll_nats": float(column.mean()), "nll_stderr": _stderr(column)}
          for k, column in zip(prefix_sizes(num_samples), nll_at.T)],
      "ess_mean": float(ess.mean()),
      "ess_p5": float(np.percentile(ess, 5)),
      "ess_fraction_below_10": float(np.mean(ess < 10)),
      "max_normalized_weight_mean": float(max_weight.mean()),
      "max_normalized_weight_max": float(max_weight.max()),
  }


def nll_figure(result: dict):
  """nll_vs_k.png's figure from a result with the prefix estimates."""
  by_k = result["nll_by_num_samples"]
  return figures.nll_vs_k([e["k"] for e in by_k], [e["nll_nats"] for e in by_k],
                          [e["nll_stderr"] for e in by_k],
                          title=f"{result.get('split', 'test')} NLL against k")


def nll_warnings(result: dict) -> list[str]:
  """What says the NLL is not to be trusted yet: the last decade of k still moving it by
  more than 0.1 nats, or most examples with an effective sample size below 10."""
  warnings = []
  by_k = {entry["k"]: entry["nll_nats"] for entry in result.get("nll_by_num_samples", [])}
  k = result.get("num_importance_samples", 0)
  if k >= 10 and k // 10 in by_k and k in by_k:
    change = by_k[k // 10] - by_k[k]
    if abs(change) > 0.1:
      warnings.append(f"the NLL fell by {change:.2f} nats from k = {k // 10} to k = {k}: "
                      "it has not converged, more samples would likely lower it further")
  if result.get("ess_fraction_below_10", 0.0) > 0.5:
    warnings.append(f"{100 * result['ess_fraction_below_10']:.0f}% of the examples have an "
                    "effective sample size below 10: a few samples dominate their estimate")
  return warnings


def make_nll_evaluator(model: nn.Module, config, mesh: jax.sharding.Mesh, *,
                       num_importance_samples: int):
  """Returns evaluate(params, dataset, rng) -> importance-sampled NLL over a split.

  The result is a dict: `nll_nats` (mean of -log p(x) over the split's examples, nats),
  `nll_stderr` (its standard error over examples), `per_example_nll` (numpy), and how far
  to trust it (nll_diagnostics): the estimate from the first k samples for each k of
  prefix_sizes, and the effective sample size and largest normalized weight per example.
  Batches of `config.eval.nll_batch_size` examples are sharded over the mesh's "batch"
  axis; the last partial batch is padded and masked. Example i's samples come from
  fold_in(rng, i) and its binarization from eval_binarization_keys, as in the ELBO
  evaluator, so both score the same binarized images and nothing depends on the device
  count or the batch and chunk sizes.
  """
  likelihood = config.model.likelihood
  binarization = config.data.binarization
  chunk_size = min(config.eval.importance_chunk_size, num_importance_samples)

  def example_terms(params, image_uint8, label, example_key, binarization_key):
    image = input_pipeline.to_model_input(image_uint8, binarization, binarization_key)
    return importance_sampling_terms(
        model, params, image, label,
        jax.random.fold_in(example_key, losses.PURPOSE_REPARAMETERIZATION),
        likelihood=likelihood,
        num_samples=num_importance_samples, chunk_size=chunk_size)

  @functools.partial(jax.jit, out_shardings=parallel.replicated(mesh))
  def batch_nll(params, dataset, indices, rng):
    keys = parallel.example_keys(rng, indices)
    return jax.vmap(example_terms, in_axes=(None, 0, 0, 0, 0))(
        params, dataset["image"][indices], dataset["label"][indices], keys,
        eval_binarization_keys(config, indices))

  def evaluate(params, dataset, rng) -> dict:
    terms = jax.tree.map(lambda v: v.astype(np.float64), per_example_outputs(
        lambda indices: batch_nll(params, dataset, indices, rng),
        dataset["image"].shape[0], config.eval.nll_batch_size, mesh))
    per_example = -terms["log_likelihood"]
    return {"nll_nats": float(per_example.mean()),
            "nll_stderr": _stderr(per_example),
            "per_example_nll": per_example,
            **nll_diagnostics(num_importance_samples, -terms["log_likelihood_at"],
                              terms["ess"], terms["max_weight"])}

  evaluate.jitted = batch_nll  # For tests: one compiled program serves every batch.
  return evaluate


# Burda et al. 2015's threshold: a unit whose posterior mean varies less than this over
# the data is inactive (the decoder cannot read anything from it).
ACTIVITY_THRESHOLD = 0.01


@functools.partial(jax.jit, static_argnames="block_size")
def log_aggregate_posterior(mean: jax.Array, logvar: jax.Array, z: jax.Array, *,
                            block_size: int = 32) -> jax.Array:
  """log q(z_i) = log (1/N) sum_n q(z_i | x_n) for each row z_i of z (M, d), where q(z|x_n)
  = N(mean_n, exp(logvar_n)) over the N examples: the aggregate posterior of the split.

  Rows are done `block_size` at a time against all N examples, so memory stays at
  block_size x N x d floats. Written out, not expanded into matmuls: for the narrow
  posteriors of active units (variance 1e-4) the expansion's cancellation in float32 cost
  more than the time it saves.
  """
  num_examples, dim = mean.shape
  inv_var = jnp.exp(-logvar)
  log_normalizer = -0.5 * (jnp.sum(logvar, axis=-1) + dim * jnp.log(2.0 * jnp.pi))
  num_rows = z.shape[0]
  padded = jnp.pad(z, ((0, (-num_rows) % block_size), (0, 0))).reshape(-1, block_size, dim)

  def rows(z_block):
    squares = jnp.sum(jnp.square(z_block[:, None, :] - mean[None]) * inv_var[None], axis=-1)
    return jax.nn.logsumexp(log_normalizer[None] - 0.5 * squares, axis=1)

  return jax.lax.map(rows, padded).reshape(-1)[:num_rows] - jnp.log(num_examples)


def latent_diagnostics(layers: list[dict]) -> dict:
  """What the latents do, from per-example arrays (N, ...) of model.latent_layers.

  Per layer: the mean KL per dimension over the split, the activity A_u = Var_x(E_q[z_u|x])
  (Burda et al. 2015, Sec. 5.2) and the active units (A_u > ACTIVITY_THRESHOLD). For the
  whole latent: the mean KL split as E_x KL(q(z|x) || p(z)) = I(x; z) + KL(q(z) || p(z))
  (Hoffman & Johnson 2016), with x uniform over the split's N examples: the mutual
  information is estimated as mean_i [log q(z_i|x_i) - log q(z_i)], z_i ~ q(z|x_i), with the
  aggregate posterior q(z) the mixture of the N posteriors (so it is at most log N), and
  the marginal KL is the rest.
  """
  per_layer = []
  for index, layer in enumerate(layers, start=1):
    kl_per_dim = np.asarray(layer["kl_per_dim"], np.float64).mean(axis=0)
    activity = np.asarray(layer["posterior_mean"], np.float64).var(axis=0)
    per_layer.append({"layer": index, "kl_nats": float(kl_per_dim.sum()),
                      "kl_per_dim": kl_per_dim.tolist(), "activity": activity.tolist(),
                      "active_units": int(np.sum(activity > ACTIVITY_THRESHOLD)),
                      "num_units": int(len(activity))})
  bottom = layers[0]
  log_posterior = np.asarray(losses.diagonal_gaussian_log_density(
      bottom["z"], bottom["mean"], bottom["logvar"]), np.float64)
  log_aggregate = np.asarray(log_aggregate_posterior(
      jnp.asarray(bottom["mean"]), jnp.asarray(bottom["logvar"]), jnp.asarray(bottom["z"])),
      np.float64)
  kl = sum(layer["kl_nats"] for layer in per_layer)
  mutual_information = float(np.mean(log_posterior - log_aggregate))
  return {"latent_layers": per_layer,
          "active_units": sum(layer["active_units"] for layer in per_layer),
          "num_units": sum(layer["num_units"] for layer in per_layer),
          "latent_kl_nats": kl,
          "mutual_information_nats": mutual_information,
          "marginal_kl_nats": kl - mutual_information,
          "latent_diagnostics_examples": int(log_posterior.shape[0])}


def make_latent_evaluator(model: nn.Module, config, mesh: jax.sharding.Mesh, *,
                          samples_per_example: int = 16):
  """Returns evaluate(params, dataset, rng, num_examples=None) -> latent_diagnostics of the
  split's first `num_examples` examples (all by default).

  Example i's binarization is eval_binarization_keys' and its noise comes from
  fold_in(rng, i) (`samples_per_example` samples, for what a two-layer model estimates
  by sampling), so nothing depends on the batch size or the device count.
  """
  binarization = config.data.binarization

  def example_layers(params, image_uint8, label, example_key, binarization_key):
    image = input_pipeline.to_model_input(image_uint8, binarization, binarization_key)
    eps = jax.random.normal(jax.random.fold_in(example_key, losses.PURPOSE_REPARAMETERIZATION),
                            (samples_per_example, model.noise_dim))
    return model.apply({"params": params}, image, eps, label, method=model.latent_layers)

  @functools.partial(jax.jit, out_shardings=parallel.replicated(mesh))
  def batch_layers(params, dataset, indices, rng):
    return jax.vmap(example_layers, in_axes=(None, 0, 0, 0, 0))(
        params, dataset["image"][indices], dataset["label"][indices],
        parallel.example_keys(rng, indices), eval_binarization_keys(config, indices))

  def evaluate(params, dataset, rng, num_examples: int | None = None) -> dict:
    return latent_diagnostics(per_example_outputs(
        lambda indices: batch_layers(params, dataset, indices, rng),
        num_examples or dataset["image"].shape[0], config.eval.batch_size, mesh))

  return evaluate


def latent_figure(result: dict):
  """kl_per_dimension.png's figure from a result with latent_diagnostics."""
  return figures.kl_per_dimension(
      [layer["kl_per_dim"] for layer in result["latent_layers"]],
      [layer["activity"] for layer in result["latent_layers"]],
      threshold=ACTIVITY_THRESHOLD,
      title=f"{result.get('split', 'test')} KL per latent dimension")


def format_latent_diagnostics(result: dict) -> str:
  layers = result["latent_layers"]
  units = ", ".join(f"z{layer['layer']} {layer['active_units']} of {layer['num_units']}"
                    for layer in layers) if len(layers) > 1 else (
                        f"{result['active_units']} of {result['num_units']}")
  return (f"active units (A_u > {ACTIVITY_THRESHOLD}): {units}; KL "
          f"{result['latent_kl_nats']:.2f} nats = mutual information I(x; z) "
          f"{result['mutual_information_nats']:.2f} + marginal KL(q(z) || p(z)) "
          f"{result['marginal_kl_nats']:.2f} ({result['latent_diagnostics_examples']} "
          "examples)")


@functools.partial(jax.jit, static_argnames=("model", "classify", "likelihood",
                                             "samples_per_class"))
def label_fidelity(model: nn.Module, params, classify, classifier_params, rng: jax.Array, *,
                   likelihood: str, samples_per_class: int) -> jax.Array:
  """Per class y, the fraction of mean images E[x|z, y] of prior samples z
  (visualize.decode_prior_samples) classified as y."""
  num_classes = model.num_classes
  noise = jax.random.normal(rng, (num_classes * samples_per_class, model.noise_dim))
  labels = jnp.repeat(jnp.arange(num_classes), samples_per_class)
  images = visualize.decode_prior_samples(model, params, noise, labels, likelihood)
  predicted = jnp.argmax(classify(classifier_params, images), axis=-1)
  return jnp.mean((predicted == labels).reshape(num_classes, samples_per_class), axis=1)


def evaluate_params(model: nn.Module, params, config, dataset, mesh, rng, *,
                    num_importance_samples: int) -> dict:
  """Test-set numbers as eval.json holds them: -ELBO, the latent diagnostics and, when
  k > 0, the NLL; in nats.

  `params` and `dataset` should be replicated over the mesh; `rng` is the run's eval key,
  so the -ELBO equals the one logged in training for the same parameters.
  """
  elbo = make_elbo_evaluator(model, config, mesh)(params, dataset, rng)
  result = {
      "neg_elbo_nats": elbo["neg_elbo"],
      "reconstruction_nats": elbo["reconstruction"],
      "kl_nats": elbo["kl"],
      "num_examples": int(dataset["image"].shape[0]),
      "num_importance_samples": num_importance_samples,
      **make_latent_evaluator(model, config, mesh)(params, dataset, rng),
  }
  if num_importance_samples:
    start = time.time()
    nll = make_nll_evaluator(model, config, mesh,
                             num_importance_samples=num_importance_samples)(params, dataset,
                                                                            rng)
    result.update({key: value for key, value in nll.items() if key != "per_example_nll"},
                  seconds=time.time() - start)  # Of the NLL, compilation included.
  return result


def format_result(result: dict) -> str:
  parts = [f"{result.get('split', 'test')} -ELBO {result['neg_elbo_nats']:.2f} nats"]
  if "nll_nats" in result:
    parts.append(f"NLL {result['nll_nats']:.2f} ± {result['nll_stderr']:.2f} nats "
                 f"(k = {result['num_importance_samples']}, {result['num_examples']} "
                 f"examples, {result['seconds']:.0f} s)")
  if "label_fidelity" in result:
    parts.append(f"label fidelity {100 * result['label_fidelity']:.1f}% (classifier test "
                 f"accuracy {100 * result['classifier_test_accuracy']:.2f}%)")
  lines = ["; ".join(parts)]
  if "nll_by_num_samples" in result:
    lines.append("NLL from the first k samples: " + ", ".join(
        f"k = {entry['k']}: {entry['nll_nats']:.2f}" for entry in result["nll_by_num_samples"]))
    lines.append(f"effective sample size: mean {result['ess_mean']:.1f}, 5th percentile "
                 f"{result['ess_p5']:.1f}, {100 * result['ess_fraction_below_10']:.1f}% of "
                 f"examples below 10; largest normalized weight: mean "
                 f"{result['max_normalized_weight_mean']:.3f}, max "
                 f"{result['max_normalized_weight_max']:.3f}")
    lines += [f"WARNING: {warning}" for warning in nll_warnings(result)]
  if "latent_layers" in result:
    lines.append(format_latent_diagnostics(result))
  if "sample_quality" in result:
    lines.append(sample_quality.format_sample_quality(result["sample_quality"]))
  return "\n".join(lines)


def result_figures(result: dict) -> dict:
  """The figures of an evaluation result, by name: nll_vs_k and kl_per_dimension."""
  named = {}
  if "nll_by_num_samples" in result:
    named["nll_vs_k"] = nll_figure(result)
  if "latent_layers" in result:
    named["kl_per_dimension"] = latent_figure(result)
  return named


def main(argv):
  """python -m vae_jax.evaluate --workdir=DIR: the NLL and -ELBO of a run -> DIR/eval.json."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  workdir = flags.FLAGS.workdir
  checkpoint.quiet_orbax_logging()
  try:
    if flags.FLAGS.num_importance_samples < 0:
      raise ValueError(f"--num_importance_samples={flags.FLAGS.num_importance_samples} "
                       "must be >= 0 (0: skip the NLL).")
    run = workdir_lib.load_run(workdir, flags.FLAGS.checkpoint, flags.FLAGS.weights)
    config = run.config.copy_and_resolve_references()  # Unlocked: the sizes may change.
    for key in ("nll_batch_size", "importance_chunk_size"):
      if flags.FLAGS[key].value:  # Speed and memory only: the estimate stays the same.
        config.eval[key] = flags.FLAGS[key].value
    config_schema.validate(config)
    split = input_pipeline.load_splits(run.config.data)[flags.FLAGS.split]
    if flags.FLAGS.num_examples:
      split = input_pipeline.Split(split.images[:flags.FLAGS.num_examples],
                                   None if split.labels is None
                                   else split.labels[:flags.FLAGS.num_examples])
    if split.num_examples == 0:
      raise ValueError(f"The {flags.FLAGS.split} split of {run.config.data.name} is empty.")
  except (ValueError, input_pipeline.DataError) as error:
    sys.exit(str(error))
  mesh = parallel.make_mesh()
  result = evaluate_params(
      run.model, parallel.replicate(run.params, mesh), config,
      input_pipeline.to_device(split, parallel.replicated(mesh)), mesh, run.keys["eval"],
      num_importance_samples=flags.FLAGS.num_importance_samples)
  result.update(split=flags.FLAGS.split, step=run.step, checkpoint=flags.FLAGS.checkpoint,
                weights=flags.FLAGS.weights)
  wants_fidelity = run.model.conditional and flags.FLAGS.label_fidelity_samples
  wants_quality = split.labels is not None and flags.FLAGS.sample_quality_samples
  if wants_fidelity or wants_quality:
    classifier_workdir = flags.FLAGS.classifier_workdir or os.path.join(
        os.path.dirname(os.path.abspath(workdir)), f"classifier_{run.config.data.name}")
    # The dataset's classes, whether or not the model is conditional on them.
    classify, classifier_params, accuracy = classifier.load_or_train(
        run.config.data, classifier_workdir, run.config.model.num_classes)
    result.update(classifier_test_accuracy=accuracy)
  if wants_quality:
    result["sample_quality"] = sample_quality.evaluate_sample_quality(
        run.model, run.params, run.config.model.likelihood, classifier.features,
        classifier_params, split.images, split.labels, jax.random.fold_in(run.keys["eval"], 3),
        num_samples=flags.FLAGS.sample_quality_samples)
  if wants_fidelity:
    per_class = np.asarray(label_fidelity(
        run.model, run.params, classify, classifier_params,
        jax.random.fold_in(run.keys["eval"], 2), likelihood=run.config.model.likelihood,
        samples_per_class=flags.FLAGS.label_fidelity_samples))
    result.update(label_fidelity=float(per_class.mean()),
                  label_fidelity_per_class=per_class.tolist(),
                  label_fidelity_samples_per_class=flags.FLAGS.label_fidelity_samples)
  print(format_result(result))
  print(f"Wrote {workdir_lib.write_json(workdir, workdir_lib.EVAL_FILE, result)}")
  with metric_writers.ensure_flushes(workdir_lib.open_writer(workdir)) as writer:
    paths = workdir_lib.write_figures(workdir, writer, run.step, result_figures(result))
  print(f"Wrote {' '.join(paths)}")

if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "A run's workdir (holds config.json, checkpoints/).")
  flags.DEFINE_integer("num_importance_samples", 5000,
                       "Samples k of q(z|x) per example (5000 is the literature's standard; "
                       "0 skips the NLL).")
  flags.DEFINE_enum("split", "test", ["test", "validation"], "Split to evaluate.")
  flags.DEFINE_string("checkpoint", "latest",
                      "Which checkpoint: latest, best (the lowest validation -ELBO among "
                      "those kept) or a step number.")
  flags.DEFINE_enum("weights", "raw", list(workdir_lib.WEIGHT_CHOICES),
                    "raw: the trained parameters; ema: their moving average "
                    "(runs trained with config.train.ema_decay > 0).")
  flags.DEFINE_integer("nll_batch_size", 0, "Examples per NLL batch (0: the run's "
                       "config.eval.nll_batch_size); with importance_chunk_size it sets "
                       "speed and memory, not the estimate.")
  flags.DEFINE_integer("importance_chunk_size", 0,
                       "Samples per chunk (0: the run's config.eval.importance_chunk_size).")
  flags.DEFINE_integer("num_examples", 0, "Evaluate the first N examples only (0: all).")
  flags.DEFINE_integer("label_fidelity_samples", 1000,
                       "Conditional models: samples per class scored by the classifier.")
  flags.DEFINE_integer("sample_quality_samples", 10000,
                       "Models on a labelled dataset: prior samples scored against the "
                       "split's images in the classifier's features (FD, precision, "
                       "recall; 0 skips).")
  flags.DEFINE_string("classifier_workdir", "",
                      "Where the label classifier is cached; default: classifier_<dataset> "
                      "beside --workdir.")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
