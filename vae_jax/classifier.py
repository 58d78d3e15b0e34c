"""A small CNN classifier, trained once per dataset, to score conditional samples.

Label fidelity of a conditional VAE: the fraction of samples generated for class y that
this classifier assigns to y. Its penultimate layer (`features`) is also the space in
which vae_jax/sample_quality.py compares samples with test images. The classifier is
trained once per dataset (its images' shape and classes) on its training split (pixels in
[0, 1]) and cached
in the user's cache directory (`default_directory`), where every workdir finds it; its
test accuracy is reported with every fidelity so the reader can
judge the judge.
"""

import hashlib
import json
import os
import shutil

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from vae_jax import input_pipeline

_NUM_EPOCHS = 3
_BATCH_SIZE = 128
_LEARNING_RATE = 1e-3
_RESULT_FILE = "classifier.json"
FEATURE_DIM = 128  # Width of the penultimate layer, the space `features` maps into.


class Classifier(nn.Module):
  """conv 32 - pool - conv 64 - pool - dense 128 - logits; about 99% on MNIST test."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, images: jax.Array, return_features: bool = False) -> jax.Array:
    """Logits (N, num_classes); with return_features, the penultimate activations instead."""
    hidden = images
    for features in (32, 64):
      hidden = nn.relu(nn.Conv(features, (3, 3))(hidden))
      hidden = nn.max_pool(hidden, (2, 2), strides=(2, 2))
    hidden = hidden.reshape(hidden.shape[:-3] + (-1,))
    hidden = nn.relu(nn.Dense(FEATURE_DIM)(hidden))
    if return_features:
      return hidden
    return nn.Dense(self.num_classes)(hidden)


def features(params, images: jax.Array) -> jax.Array:
  """The penultimate layer (N, FEATURE_DIM) of images in [0, 1], (N, H, W, C).

  The logits layer is not run, so num_classes does not matter here; a module-level function
  (not a fresh lambda) so that jitted callers taking it as a static argument compile once.
  """
  return Classifier().apply({"params": params}, images, return_features=True)


def _accuracy(model, params, images_uint8: np.ndarray, labels: np.ndarray) -> float:
  predict = jax.jit(lambda p, x: jnp.argmax(model.apply({"params": p}, x / 255.0), -1))
  predictions = np.concatenate([
      np.asarray(predict(params, jnp.asarray(images_uint8[i:i + 1000], jnp.float32)))
      for i in range(0, len(images_uint8), 1000)])
  return float(np.mean(predictions == labels))


def _train(model, splits, seed: int):
  train_split = splits["train"]
  params = model.init(jax.random.key(seed),
                      jnp.zeros((1,) + train_split.images.shape[1:]))["params"]
  optimizer = optax.adam(_LEARNING_RATE)
  opt_state = optimizer.init(params)
  images = jnp.asarray(train_split.images)
  labels = jnp.asarray(train_split.labels)

  @jax.jit
  def step(params, opt_state, indices):
    def loss_fn(p):
      logits = model.apply({"params": p}, images[indices].astype(jnp.float32) / 255.0)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels[indices]).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = jax.random.key(seed + 1)
  for epoch in range(_NUM_EPOCHS):
    batches = input_pipeline.epoch_batch_indices(rng, epoch, train_split.num_examples,
                                                 _BATCH_SIZE)
    for indices in batches:
      params, opt_state, loss = step(params, opt_state, indices)
    logging.info("classifier epoch %d: last batch loss %.4f", epoch + 1, float(loss))
  return params


def default_directory(data_config, num_classes: int = 10) -> str:
  """Where the classifier of a dataset is cached for every workdir: under the user's
  cache directory ($XDG_CACHE_HOME, else ~/.cache), vae_jax/classifiers/<dataset>_<classes>
  (a folder's or an .npz's dataset is named by a hash of its path; a resized one by its
  size too)."""
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  name = data_config.name
  if data_config.path:
    digest = hashlib.sha256(os.path.abspath(data_config.path).encode()).hexdigest()[:12]
    name = f"{name}-{digest}"
  if data_config.image_size:
    name += "_{}x{}_{}".format(*data_config.image_size, data_config.resize_method)
  return os.path.join(cache, "vae_jax", "classifiers", f"{name}_{num_classes}")


def _restore(model, directory: str, seed: int, image_shape):
  with ocp.CheckpointManager(directory) as checkpoints:
    abstract = jax.eval_shape(lambda: model.init(
        jax.random.key(seed), jnp.zeros((1,) + tuple(image_shape)))["params"])
    params = checkpoints.restore(checkpoints.latest_step(),
                                 args=ocp.args.StandardRestore(abstract))
  with open(os.path.join(directory, _RESULT_FILE)) as f:
    return params, json.load(f)["test_accuracy"]


def load_or_train(data_config, image_shape, directory: str | None = None,
                  num_classes: int = 10, seed: int = 0):
  """(apply_fn, params, test_accuracy) of the classifier of images of `image_shape` into
  `num_classes` classes: from `directory` (default_directory when None), else trained and
  cached there.

  The cache is written whole or not at all: into a temporary folder beside it, renamed
  into place when complete, so a kill mid-save leaves no half-written classifier and
  concurrent runs (a sweep's shards) never read one.
  """
  model = Classifier(num_classes)
  directory = os.path.abspath(directory or default_directory(data_config, num_classes))
  if os.path.exists(os.path.join(directory, _RESULT_FILE)):
    params, accuracy = _restore(model, directory, seed, image_shape)
    logging.info("Loaded the label classifier from %s (test accuracy %.4f).", directory,
                 accuracy)
  else:
    logging.info("Training the label classifier on %s; cached in %s.", data_config.name,
                 directory)
    splits = input_pipeline.load_splits(data_config)
    if splits["train"].labels is None:
      raise ValueError(f"{data_config.name} has no labels to train a classifier on.")
    params = _train(model, splits, seed)
    accuracy = _accuracy(model, params, splits["test"].images, splits["test"].labels)
    staging = f"{directory}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    with ocp.CheckpointManager(staging, options=ocp.CheckpointManagerOptions(
        create=True, enable_async_checkpointing=False)) as checkpoints:
      checkpoints.save(0, args=ocp.args.StandardSave(params), force=True)
      checkpoints.wait_until_finished()
    with open(os.path.join(staging, _RESULT_FILE), "w") as f:
      json.dump({"dataset": data_config.name, "test_accuracy": accuracy}, f)
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    try:
      os.rename(staging, directory)
    except OSError:  # Another process cached one first (or a stale folder is in the way).
      shutil.rmtree(staging, ignore_errors=True)
      if not os.path.exists(os.path.join(directory, _RESULT_FILE)):
        raise
    logging.info("Label classifier test accuracy: %.4f.", accuracy)
  return (lambda p, images: model.apply({"params": p}, images)), params, accuracy
