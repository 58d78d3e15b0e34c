"""Evaluators: take parameters and device-resident data, return numbers; write nothing.

Also the command line `python -m vae_jax.evaluate --workdir=DIR [--num_importance_samples=
5000]`, which prints a finished run's test NLL and -ELBO and writes them to DIR/eval.json.
"""

import functools
import os
import sys
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import checkpoint
from vae_jax import classifier
from vae_jax import config_schema
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


def importance_sampled_log_likelihood(model: nn.Module, params, image: jax.Array, label,
                                      rng: jax.Array, *, likelihood: str,
                                      num_samples: int, chunk_size: int) -> jax.Array:
  """log p(x) ~ logmeanexp_j log w_j over `num_samples` samples of q(z|x), for ONE example.

  The samples are processed `chunk_size` at a time (memory stays bounded for k = 5000);
  sample j's noise comes from fold_in(rng, j), so the estimate does not depend on the
  chunk size. Each chunk's logsumexp is kept and combined at the end, which is exact.
  """
  num_chunks = -(-num_samples // chunk_size)

  def chunk_logsumexp(chunk):
    indices = chunk * chunk_size + jnp.arange(chunk_size)
    keys = parallel.example_keys(rng, indices)
    eps = jax.vmap(lambda key: jax.random.normal(key, (model.noise_dim,)))(keys)
    log_weights = losses.log_importance_weights(model, {"params": params}, image, label,
                                                eps, likelihood=likelihood)
    # Samples past num_samples (the last chunk's padding) get weight 0.
    return jax.nn.logsumexp(jnp.where(indices < num_samples, log_weights, -jnp.inf))

  chunk_values = jax.lax.map(chunk_logsumexp, jnp.arange(num_chunks))
  return jax.nn.logsumexp(chunk_values) - jnp.log(num_samples)


def make_nll_evaluator(model: nn.Module, config, mesh: jax.sharding.Mesh, *,
                       num_importance_samples: int):
  """Returns evaluate(params, dataset, rng) -> importance-sampled NLL over a split.

  The result is a dict: `nll_nats` (mean of -log p(x) over the split's examples, nats),
  `nll_stderr` (its standard error over examples) and `per_example_nll` (numpy). Batches
  of `config.eval.nll_batch_size` examples are sharded over the mesh's "batch" axis; the
  last partial batch is padded and masked. Example i's binarization and samples come
  from fold_in(rng, i), as in the ELBO evaluator, so both score the same binarized images
  and nothing depends on the device count or the batch and chunk sizes.
  """
  likelihood = config.model.likelihood
  binarization = config.data.binarization
  chunk_size = min(config.eval.importance_chunk_size, num_importance_samples)

  def example_nll(params, image_uint8, label, example_key):
    image = input_pipeline.to_model_input(
        image_uint8, binarization, jax.random.fold_in(example_key, losses.PURPOSE_BINARIZATION))
    return -importance_sampled_log_likelihood(
        model, params, image, label,
        jax.random.fold_in(example_key, losses.PURPOSE_REPARAMETERIZATION),
        likelihood=likelihood,
        num_samples=num_importance_samples, chunk_size=chunk_size)

  @functools.partial(jax.jit, out_shardings=parallel.replicated(mesh))
  def batch_nll(params, dataset, indices, rng):
    keys = parallel.example_keys(rng, indices)
    return jax.vmap(example_nll, in_axes=(None, 0, 0, 0))(
        params, dataset["image"][indices], dataset["label"][indices], keys)

  def evaluate(params, dataset, rng) -> dict:
    num_examples = dataset["image"].shape[0]
    values = []
    for indices, _, count in parallel.padded_batches(num_examples, config.eval.nll_batch_size,
                                                     mesh):
      values.append(np.asarray(batch_nll(params, dataset, indices, rng))[:count])
    per_example = np.concatenate(values).astype(np.float64)
    return {"nll_nats": float(per_example.mean()),
            "nll_stderr": float(per_example.std(ddof=1) / np.sqrt(num_examples))
                          if num_examples > 1 else float("nan"),
            "per_example_nll": per_example}

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
    result.update(nll_nats=nll["nll_nats"], nll_stderr=nll["nll_stderr"],
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
  return "; ".join(parts)


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
