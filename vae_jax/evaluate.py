"""python -m vae_jax.evaluate --workdir=DIR [--num_importance_samples=5000]: a trained
run's evaluation, on top of the evaluators the training loop uses (vae_jax/evaluators.py).

Prints the split's −ELBO, its NLL with how far to trust it (the estimate against k, the
effective sample sizes), the latent diagnostics and, with the label classifier
(vae_jax/classifier.py, trained once per dataset and cached), the sample quality and a
conditional model's label fidelity. Writes them into DIR/eval.json (eval_<split>.json for
another split), merged with what is there for the same parameters, and the figures
nll_vs_k.png and kl_per_dimension.png.
"""

import functools
import sys

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
from vae_jax import evaluators
from vae_jax import input_pipeline
from vae_jax import parallel
from vae_jax import sample_quality
from vae_jax import visualize
from vae_jax import workdir as workdir_lib


@functools.partial(jax.jit, static_argnames=("model", "classify", "likelihood",
                                             "samples_per_class"))
def label_fidelity(model: nn.Module, params, classify, classifier_params, rng: jax.Array, *,
                   likelihood: str, samples_per_class: int) -> jax.Array:
  """Per class y, the fraction of mean images E[x|z, y] of prior samples z
  (visualize.decode_prior_samples) classified as y."""
  num_classes = model.num_classes
  noise = model.prior_noise(rng, num_classes * samples_per_class)
  labels = jnp.repeat(jnp.arange(num_classes), samples_per_class)
  images = visualize.decode_prior_samples(model, params, noise, labels, likelihood)
  predicted = jnp.argmax(classify(classifier_params, images), axis=-1)
  return jnp.mean((predicted == labels).reshape(num_classes, samples_per_class), axis=1)


def format_result(result: dict) -> str:
  """evaluators.format_result, with the label fidelity (on its first line) and the
  sample quality (last) when present."""
  first, *rest = evaluators.format_result(result).split("\n")
  if "label_fidelity" in result:
    first += (f"; label fidelity {100 * result['label_fidelity']:.1f}% (classifier test "
              f"accuracy {100 * result['classifier_test_accuracy']:.2f}%)")
  if "sample_quality" in result:
    rest.append(sample_quality.format_sample_quality(result["sample_quality"]))
  if "sample_quality_omitted" in result:
    rest.append(f"no sample quality: {result['sample_quality_omitted']}")
  return "\n".join([first, *rest])


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
                                   else split.labels[:flags.FLAGS.num_examples],
                                   split.num_classes)
    if split.num_examples == 0:
      raise ValueError(f"The {flags.FLAGS.split} split of {run.config.data.name} is empty.")
  except (ValueError, input_pipeline.DataError) as error:
    sys.exit(str(error))
  mesh = parallel.make_mesh()
  result = evaluators.final_result(
      evaluators.Evaluators(run.model, config, mesh), parallel.replicate(run.params, mesh),
      input_pipeline.to_device(split, parallel.replicated(mesh)), run.keys["eval"], config,
      num_importance_samples=flags.FLAGS.num_importance_samples,
      history=workdir_lib.read_history(workdir), split=flags.FLAGS.split, step=run.step,
      checkpoint=flags.FLAGS.checkpoint, weights=flags.FLAGS.weights)
  wants_fidelity = run.model.conditional and flags.FLAGS.label_fidelity_samples
  wants_quality = split.labels is not None and flags.FLAGS.sample_quality_samples
  if split.labels is None and flags.FLAGS.sample_quality_samples:
    result["sample_quality_omitted"] = (
        f"{run.config.data.name} has no labels to train the classifier in whose features "
        "samples are compared with images")
  if wants_fidelity or wants_quality:
    # The dataset's classes, whether or not the model is conditional on them.
    classify, classifier_params, accuracy = classifier.load_or_train(
        run.config.data, split.images.shape[1:], flags.FLAGS.classifier_dir or None,
        split.num_classes)
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
  try:
    print(f"Wrote {workdir_lib.write_eval(workdir, result)}")
    with metric_writers.ensure_flushes(workdir_lib.open_writer(workdir)) as writer:
      paths = workdir_lib.write_figures(workdir, writer, run.step,
                                        visualize.result_figures(result))
  except checkpoint.WriteError as error:
    sys.exit(f"{error} The numbers above were computed; run the same command again once "
             "the cause is fixed to write them.")
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
  flags.DEFINE_string("classifier_dir", "",
                      "Where the label classifier is cached; default: the user's cache "
                      "directory, ~/.cache/vae_jax/classifiers/<dataset>_<classes>, shared "
                      "by every workdir.")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
