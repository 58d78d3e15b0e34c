"""Every figure a model gets is drawn from a small model and written as a non-empty PNG."""

import jax
import numpy as np
import pytest

from tests.helpers import MNIST_SHAPE, tiny_config
from vae_jax import input_pipeline
from vae_jax import models
from vae_jax import steps
from vae_jax import visualize
from vae_jax import workdir as workdir_lib


def _test_split(num=300, labelled=True):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(num, 28, 28, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, size=num).astype(np.int32) if labelled else None
  return input_pipeline.Split(images, labels)


_HISTORY = [{"epoch": e, "step": 10 * e, "train_neg_elbo_nats": 200.0 - e, "train_kl_nats": 5.0,
             "train_reconstruction_nats": 195.0 - e, "test_neg_elbo_nats": 201.0 - e,
             "test_kl_nats": 5.0, "test_reconstruction_nats": 196.0 - e} for e in (1, 2)]


@pytest.mark.slow  # Draws and saves every figure of four models with matplotlib.
@pytest.mark.parametrize("name, conditional, latent_dim, layers, expected", [
    ("mlp", False, 2, 1, {"reconstructions", "prior_samples", "latent_manifold",
                          "latent_scatter", "interpolations", "denoising", "denoising_error",
                          "training_curves"}),
    ("mlp", True, 2, 1, {"reconstructions", "class_grid", "latent_manifold", "latent_scatter",
                         "interpolations", "denoising", "denoising_error", "training_curves"}),
    # Two stochastic layers: figures live in z2's space (here 2-D).
    ("mlp", True, 2, 2, {"reconstructions", "class_grid", "latent_manifold", "latent_scatter",
                         "interpolations", "denoising", "denoising_error", "training_curves"}),
    ("conv", True, 3, 1, {"reconstructions", "class_grid", "interpolations", "denoising",
                          "denoising_error", "training_curves"}),
])
def test_every_figure_is_written_as_a_non_empty_png(tmp_path, name, conditional, latent_dim,
                                                     layers, expected):
  config = tiny_config()
  config.model.name = name
  config.model.conditional = conditional
  config.model.latent_dim = latent_dim
  if layers == 2:
    config.model.stochastic_layers = 2
    config.model.latent_dim = 5  # z1
    config.model.top_layer.hidden_dims = (8,)
    config.model.top_layer.latent_dim = latent_dim
  config.model.conv.encoder_features = (4, 4, 4)
  config.model.conv.decoder_features = (4, 4, 4)
  model = models.get_model(config.model, MNIST_SHAPE)
  state = steps.create_train_state(model, config, jax.random.key(0))
  named = visualize.make_figures(model, state.params, config, _test_split(),
                                 jax.random.key(1), history=_HISTORY)
  assert set(named) == expected

  class _Writer:
    def __init__(self):
      self.images = {}

    def write_images(self, step, images):
      self.images.update(images)

  writer = _Writer()
  paths = workdir_lib.write_figures(str(tmp_path), writer, 7, named)
  assert sorted(p.rsplit("/", 1)[1][:-4] for p in paths) == sorted(expected)
  for path in paths:
    with open(path, "rb") as f:
      png = f.read()
    assert png.startswith(b"\x89PNG") and len(png) > 2000, path
  for image in writer.images.values():  # TensorBoard gets (1, H, W, 3) uint8 pixels.
    assert image.dtype == np.uint8 and image.ndim == 4 and image.std() > 1


def test_cheap_figures_are_the_ones_redrawn_during_training():
  config = tiny_config()
  config.model.conditional = True
  model = models.get_model(config.model, MNIST_SHAPE)
  state = steps.create_train_state(model, config, jax.random.key(0))
  named = visualize.make_figures(model, state.params, config, _test_split(),
                                 jax.random.key(1), cheap_only=True)
  assert set(named) == {"reconstructions", "class_grid"}


def test_figures_of_an_unlabelled_dataset():
  config = tiny_config()
  config.model.latent_dim = 2
  model = models.get_model(config.model, MNIST_SHAPE)
  state = steps.create_train_state(model, config, jax.random.key(0))
  named = visualize.make_figures(model, state.params, config, _test_split(labelled=False),
                                 jax.random.key(1))
  assert "latent_scatter" in named and "training_curves" not in named


def test_figure_data_is_deterministic_given_the_key():
  config = tiny_config()
  model = models.get_model(config.model, MNIST_SHAPE)
  params = steps.create_train_state(model, config, jax.random.key(0)).params
  split = _test_split(num=20)
  first, second = (jax.device_get(visualize.denoise(
      model, params, split.images, split.labels, np.asarray([0.1, 0.5], np.float32),
      jax.random.key(3), likelihood="bernoulli", binarization="none")) for _ in range(2))
  for key in first:
    np.testing.assert_array_equal(first[key], second[key])
  # More noise, further from the clean image.
  assert first["input_error"][1] > first["input_error"][0]
