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
from vae_jax import visualize
from vae_jax import workdir as workdir_lib


def make_elbo_evaluator(model: nn.Module, config, mesh: jax.sharding.Mesh):
  """Returns evaluate(params, dataset, rng[, weights]) -> mean ELBO terms (nats) over the
  whole split; `weights` (losses.loss_weights of a run, default this config's) set the
  `loss` term, so runs with other KL weights share the compiled program.

  Batches are sharded over the mesh's "batch" axis. The last partial batch is padded and
  masked, so one compiled program serves every batch. Example i's noise comes from
  fold_in(rng, i), so the result does not depend on the batch size or the device count.
  """
  example_terms = losses.make_example_terms_fn(model, config, train=False)

  def batch_sums(params, dataset, indices, mask, rng, weights):
    keys = parallel.example_keys(rng, indices)
    terms = jax.vmap(example_terms, in_axes=(None, 0, 0, 0, None))(
        params, dataset["image"][indices], dataset["label"][indices], keys, weights)
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
  axis; the last partial batch is padded and masked. Example i's binarization and samples
  come from fold_in(rng, i), as in the ELBO evaluator, so both score the same binarized
  images and nothing depends on the device count or the batch and chunk sizes.
  """
  likelihood = config.model.likelihood
  binarization = config.data.binarization
  chunk_size = min(config.eval.importance_chunk_size, num_importance_samples)

  def example_terms(params, image_uint8, label, example_key):
    image = input_pipeline.to_model_input(
        image_uint8, binarization, jax.random.fold_in(example_key, losses.PURPOSE_BINARIZATION))
    return importance_sampling_terms(
        model, params, image, label,
        jax.random.fold_in(example_key, losses.PURPOSE_REPARAMETERIZATION),
        likelihood=likelihood,
        num_samples=num_importance_samples, chunk_size=chunk_size)

  @functools.partial(jax.jit, out_shardings=parallel.replicated(mesh))
  def batch_nll(params, dataset, indices, rng):
    keys = parallel.example_keys(rng, indices)
    return jax.vmap(example_terms, in_axes=(None, 0, 0, 0))(
        params, dataset["image"][indices], dataset["label"][indices], keys)

  def evaluate(params, dataset, rng) -> dict:
    num_examples = dataset["image"].shape[0]
    batches = []
    for indices, _, count in parallel.padded_batches(num_examples, config.eval.nll_batch_size,
                                                     mesh):
      batches.append(jax.tree.map(lambda v, n=count: np.asarray(v)[:n],
                                  batch_nll(params, dataset, indices, rng)))
    terms = {name: np.concatenate([b[name] for b in batches]).astype(np.float64)
             for name in batches[0]}
    per_example = -terms["log_likelihood"]
    return {"nll_nats": float(per_example.mean()),
            "nll_stderr": _stderr(per_example),
            "per_example_nll": per_example,
            **nll_diagnostics(num_importance_samples, -terms["log_likelihood_at"],
                              terms["ess"], terms["max_weight"])}

  evaluate.jitted = batch_nll  # For tests: one compiled program serves every batch.
  return evaluate


@functools.partial(jax.jit, static_argnames=("model", "classify", "likelihood",
                                             "samples_per_class"))
def label_fidelity(model: nn.Module, params, classify, classifier_params, rng: jax.Array, *,
                   likelihood: str, samples_per_class: int) -> jax.Array:
  """Per class y, the fraction of mean images E[x|z, y], z ~ N(0, I), classified as y."""
  num_classes = model.num_classes
  z = jax.random.normal(rng, (num_classes * samples_per_class, model.latent_dim))
  labels = jnp.repeat(jnp.arange(num_classes), samples_per_class)
  images = visualize.decode_mean(model, params, z, labels, likelihood)
  predicted = jnp.argmax(classify(classifier_params, images), axis=-1)
  return jnp.mean((predicted == labels).reshape(num_classes, samples_per_class), axis=1)


def evaluate_params(model: nn.Module, params, config, dataset, mesh, rng, *,
                    num_importance_samples: int) -> dict:
  """Test-set numbers as eval.json holds them: -ELBO and, when k > 0, the NLL; in nats.

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
  return "\n".join(lines)


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
    run = workdir_lib.load_run(workdir)
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
  result.update(split=flags.FLAGS.split, step=run.step)
  if run.model.conditional and flags.FLAGS.label_fidelity_samples:
    classifier_workdir = flags.FLAGS.classifier_workdir or os.path.join(
        os.path.dirname(os.path.abspath(workdir)), f"classifier_{run.config.data.name}")
    classify, classifier_params, accuracy = classifier.load_or_train(
        run.config.data, classifier_workdir, run.model.num_classes)
    per_class = np.asarray(label_fidelity(
        run.model, run.params, classify, classifier_params,
        jax.random.fold_in(run.keys["eval"], 2), likelihood=run.config.model.likelihood,
        samples_per_class=flags.FLAGS.label_fidelity_samples))
    result.update(label_fidelity=float(per_class.mean()),
                  label_fidelity_per_class=per_class.tolist(),
                  label_fidelity_samples_per_class=flags.FLAGS.label_fidelity_samples,
                  classifier_test_accuracy=accuracy)
  print(format_result(result))
  print(f"Wrote {workdir_lib.write_json(workdir, workdir_lib.EVAL_FILE, result)}")
  if "nll_by_num_samples" in result:
    with metric_writers.ensure_flushes(workdir_lib.open_writer(workdir)) as writer:
      paths = workdir_lib.write_figures(workdir, writer, run.step,
                                        {"nll_vs_k": nll_figure(result)})
    print(f"Wrote {' '.join(paths)}")

if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "A run's workdir (holds config.json, checkpoints/).")
  flags.DEFINE_integer("num_importance_samples", 5000,
                       "Samples k of q(z|x) per example (5000 is the literature's standard; "
                       "0 skips the NLL).")
  flags.DEFINE_enum("split", "test", ["test", "validation"], "Split to evaluate.")
  flags.DEFINE_integer("nll_batch_size", 0, "Examples per NLL batch (0: the run's "
                       "config.eval.nll_batch_size); with importance_chunk_size it sets "
                       "speed and memory, not the estimate.")
  flags.DEFINE_integer("importance_chunk_size", 0,
                       "Samples per chunk (0: the run's config.eval.importance_chunk_size).")
  flags.DEFINE_integer("num_examples", 0, "Evaluate the first N examples only (0: all).")
  flags.DEFINE_integer("label_fidelity_samples", 1000,
                       "Conditional models: samples per class scored by the classifier.")
  flags.DEFINE_string("classifier_workdir", "",
                      "Where the label classifier is cached; default: classifier_<dataset> "
                      "beside --workdir.")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
