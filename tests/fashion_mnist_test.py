"""Every shipped model trains on Fashion-MNIST (`--config.data.name=fashion_mnist`)."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from tests.helpers import MNIST_SHAPE, fixed_batch_step, shipped_config
from vae_jax import config_schema
from vae_jax import evaluators
from vae_jax import input_pipeline
from vae_jax import models
from vae_jax import parallel
from vae_jax import steps

pytestmark = pytest.mark.slow  # The real TFDS preparation of Fashion-MNIST.

_NUM_STEPS, _NUM_TEST = 15, 200


@pytest.fixture(scope="module")
def fashion(mnist_manual_dir, prepared_datasets):
  config = config_schema.default_config()
  config.data.name = "fashion_mnist"
  config.data.manual_dir = mnist_manual_dir
  config.data.tfds_data_dir = prepared_datasets
  return input_pipeline.load_splits(config.data)


@pytest.mark.parametrize("name, arg", [
    ("mlp", None), ("conv", None), ("cvae", None), ("mlp2d", None),
    ("iwae", "objective=iwae,k=5"), ("iwae", "layers=2,objective=iwae,k=5")])
def test_shipped_model_learns_fashion_mnist(fashion, name, arg):
  config = shipped_config(name, arg)
  config.data.name = "fashion_mnist"
  config.train.batch_size = 20
  config.eval.batch_size = 100
  config_schema.validate(config)
  model = models.get_model(config.model, MNIST_SHAPE)
  mesh = parallel.make_mesh(jax.devices()[:1])
  state = parallel.replicate(steps.create_train_state(model, config, jax.random.key(0)), mesh)
  step = fixed_batch_step(model, config, mesh)
  test = input_pipeline.to_device(
      input_pipeline.Split(fashion["test"].images[:_NUM_TEST],
                           fashion["test"].labels[:_NUM_TEST]),
      NamedSharding(mesh, P()))
  evaluator = evaluators.Evaluators(model, config, mesh)
  before = evaluator.neg_elbo(state.params, test, jax.random.key(2), config)["loss"]
  images, labels = fashion["train"].images, fashion["train"].labels
  for i in range(_NUM_STEPS):
    batch = slice(20 * i, 20 * (i + 1))
    state, metrics = step(state, {"image": images[batch], "label": labels[batch]},
                          jax.random.key(1))
    assert np.isfinite(float(metrics["loss"])), (i, metrics)
  after = evaluator.neg_elbo(state.params, test, jax.random.key(2), config)["loss"]
  # A few Adam steps on the training images lower the held-out objective (the -ELBO, or
  # its KL-weighted or IWAE form): the model, its likelihood and (for the CVAE) the
  # labels all work on this dataset.
  assert 0 < after < before, (before, after)
