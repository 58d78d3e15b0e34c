"""Shapes, conditioning and dropout of every model variant."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import MNIST_SHAPE, jit_apply, shipped_config, synthetic_splits, tiny_config
from vae_jax import config_schema
from vae_jax import input_pipeline
from vae_jax import losses
from vae_jax import models
from vae_jax import train
from vae_jax import visualize
from vae_jax import workdir as workdir_lib


def _model_config(name, conditional=False, likelihood="bernoulli", dropout_rate=0.0):
  config = config_schema.default_config().model
  config.name = name
  config.conditional = conditional
  config.likelihood = likelihood
  config.dropout_rate = dropout_rate
  config.latent_dim = 3
  config.hidden_dims = (16,)
  config.conv.encoder_features = (4, 4, 4)
  config.conv.decoder_features = (4, 4, 4)
  return config


def _init(model, latent_dim=3):
  return jax.jit(model.init)(jax.random.key(0), jnp.zeros((28, 28, 1)), jnp.zeros(latent_dim),
                    jnp.zeros((), jnp.int32))


VARIANTS = [(name, conditional, likelihood)
            for name in ("mlp", "conv") for conditional in (False, True)
            for likelihood in ("bernoulli", "gaussian")]


@pytest.mark.parametrize("name, conditional, likelihood", VARIANTS)
# A batch of 1 in the full suite only (-m "not slow" keeps the batch of 7, and the
# conformance suite checks batches of 1 and 7 for every family).
@pytest.mark.parametrize("batch_size", [pytest.param(1, marks=pytest.mark.slow), 7])
def test_output_shapes_and_batched_equals_per_example(name, conditional, likelihood,
                                                      batch_size):
  model = models.get_model(_model_config(name, conditional, likelihood), MNIST_SHAPE)
  variables = _init(model)
  apply = jit_apply(model)
  images = jax.random.uniform(jax.random.key(1), (batch_size, 28, 28, 1))
  labels = jnp.arange(batch_size, dtype=jnp.int32) % 10
  mean, logvar = apply(variables, images, labels, method="encode")
  assert mean.shape == logvar.shape == (batch_size, 3)
  decoded = apply(variables, mean, labels, method="decode")
  expected_keys = {"logits"} if likelihood == "bernoulli" else {"mean", "logvar"}
  assert set(decoded) == expected_keys
  for key in expected_keys - {"logvar"}:
    assert decoded[key].shape == (batch_size, 28, 28, 1)
  # A sample axis in front of z (num_samples > 1 in the ELBO) also decodes.
  eps = jax.random.normal(jax.random.key(2), (5, 3))
  one = apply(variables, images[0], eps, labels[0])
  assert one.log_prior.shape == one.log_posterior.shape == (5,)
  assert one.kl.shape == ()
  assert one.decoded["logits" if likelihood == "bernoulli" else "mean"].shape[0] == 5
  # A prior sample of one stochastic layer is z itself: decode_prior_sample is decode.
  mean_key = "logits" if likelihood == "bernoulli" else "mean"
  np.testing.assert_array_equal(
      apply(variables, mean, labels, method="decode_prior_sample")[mean_key], decoded[mean_key])
  # The batch is independent examples: batched == vmapped per example, to 1e-5.
  per_example = jax.jit(jax.vmap(
      lambda x, y: model.apply(variables, x, y, method=model.encode)[0]))(images, labels)
  np.testing.assert_allclose(per_example, mean, rtol=1e-5, atol=1e-5)


def test_conv_layers_have_the_seeds_shapes():
  """28 -> 14 -> 7 -> 7 in the encoder; 7 -> 14 -> 14 -> 14 in the decoder."""
  model = models.get_model(shipped_config("conv").model, MNIST_SHAPE)
  params = jax.eval_shape(lambda: _init(model, latent_dim=8))["params"]  # Shapes only.
  assert params["encoder"]["mean"]["kernel"].shape == (7 * 7 * 64, 8)
  assert params["encoder"]["logvar"]["kernel"].shape == (7 * 7 * 64, 8)
  assert params["decoder"]["Dense_0"]["kernel"].shape == (8, 24)
  assert params["decoder"]["Dense_1"]["kernel"].shape == (24, 49)
  assert params["decoder"]["output"]["kernel"].shape == (14 * 14 * 64, 784)
  assert params["encoder"]["Conv_0"]["kernel"].shape == (4, 4, 1, 64)


@pytest.mark.parametrize("name", ["mlp", "conv"])
def test_conditional_decoder_output_changes_with_the_label(name):
  model = models.get_model(_model_config(name, conditional=True), MNIST_SHAPE)
  variables = _init(model)
  apply = jit_apply(model)
  z = jax.random.normal(jax.random.key(3), (3,))
  outputs = [apply(variables, z, jnp.int32(label), method="decode")["logits"]
             for label in range(10)]
  for label in range(1, 10):
    assert float(jnp.max(jnp.abs(outputs[label] - outputs[0]))) > 1e-4, label
  # The same label twice gives the same output: the change is the label's doing.
  again = apply(variables, z, jnp.int32(0), method="decode")["logits"]
  np.testing.assert_array_equal(again, outputs[0])
  # A one-hot float vector is the same condition as the integer label.
  soft = apply(variables, z, jax.nn.one_hot(4, 10), method="decode")["logits"]
  np.testing.assert_allclose(soft, outputs[4], rtol=1e-6, atol=1e-6)


def test_conditional_model_without_a_label_says_so():
  model = models.get_model(_model_config("mlp", conditional=True), MNIST_SHAPE)
  variables = _init(model)
  with pytest.raises(ValueError, match="conditional: pass the label"):
    model.apply(variables, jnp.zeros(3), method=model.decode)


@pytest.mark.parametrize("name", ["mlp", pytest.param("conv", marks=pytest.mark.slow)])
def test_dropout_is_active_in_training_and_off_in_evaluation_and_sampling(name):
  model = models.get_model(_model_config(name, dropout_rate=0.5), MNIST_SHAPE)
  variables = _init(model)
  apply = jit_apply(model)
  image = jax.random.uniform(jax.random.key(4), (28, 28, 1))

  def encode(train, dropout_key):
    return apply(variables, image, None, train=train, method="encode",
                 rngs={"dropout": dropout_key})[0]

  first, second = encode(True, jax.random.key(5)), encode(True, jax.random.key(6))
  assert float(jnp.max(jnp.abs(first - second))) > 1e-4  # Masks differ by key.
  np.testing.assert_array_equal(encode(True, jax.random.key(5)), first)  # Same key, same.
  evaluated = encode(False, jax.random.key(5))
  np.testing.assert_array_equal(evaluated, encode(False, jax.random.key(6)))
  # Evaluation needs no dropout key at all and matches the train=False pass.
  np.testing.assert_array_equal(apply(variables, image, method="encode")[0],
                                evaluated)

  config = tiny_config()
  config.model = _model_config(name, dropout_rate=0.5)
  example_terms = losses.make_example_terms_fn(model, config, train=False)
  image_uint8 = (image * 255).astype(jnp.uint8)
  key, weights = jax.random.key(7), losses.loss_weights(config)
  np.testing.assert_array_equal(
      example_terms(variables["params"], image_uint8, 0, key, weights)["neg_elbo_nats"],
      example_terms(variables["params"], image_uint8, 0, key, weights)["neg_elbo_nats"])
  train_terms = losses.make_example_terms_fn(model, config, train=True)
  train_values = {float(train_terms(variables["params"], image_uint8, 0, jax.random.key(k),
                                    weights)["reconstruction_nats"]) for k in range(4)}
  assert len(train_values) == 4

  samples = [visualize.sample_prior(model, variables["params"], jax.random.key(8),
                                   likelihood="bernoulli", num_samples=4) for _ in range(2)]
  np.testing.assert_array_equal(samples[0], samples[1])


def test_the_config_schema_names_every_activation_initializer_and_family_the_models_know():
  assert set(config_schema.ACTIVATIONS) == set(models.ACTIVATIONS)
  assert set(config_schema.KERNEL_INITS) == set(models.KERNEL_INITS)
  assert config_schema.ALLOWED_VALUES["model.family"] == tuple(models.FAMILIES)


def test_unknown_model_name_is_refused():
  with pytest.raises(ValueError, match="Unknown config.model.name"):
    models.get_model(_model_config("transformer"), MNIST_SHAPE)


@pytest.mark.parametrize("name", ["mlp", pytest.param("conv", marks=pytest.mark.slow)])
def test_bfloat16_computes_in_bfloat16_with_float32_parameters_and_outputs(name):
  config = config_schema.default_config()
  config.model.name = name
  config.model.hidden_dims, config.model.latent_dim = (32,), 4
  model = models.get_model(config.model, MNIST_SHAPE, "bfloat16")
  image, eps = jnp.zeros((28, 28, 1)), jnp.zeros((2, 4))
  variables = jax.jit(model.init)(jax.random.key(0), image, eps)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  jaxpr = str(jax.make_jaxpr(lambda v: model.apply(v, image, eps))(variables))
  matmuls = [line for line in jaxpr.splitlines() if "dot_general" in line
             or "conv_general_dilated" in line]
  assert matmuls and all("bf16" in line for line in matmuls), matmuls
  outputs = jax.jit(model.apply)(variables, image, eps)
  assert outputs.decoded["logits"].dtype == jnp.float32
  assert outputs.kl.dtype == jnp.float32


@pytest.mark.slow
def test_bfloat16_trains_a_tiny_model_without_nan(tmp_path, monkeypatch):
  """bfloat16 training stays finite and follows float32's loss curve to 0.5 nats."""
  monkeypatch.setattr(input_pipeline, "load_splits", lambda data_config: synthetic_splits())
  curves = {}
  for dtype in ("float32", "bfloat16"):
    config = tiny_config()
    config.dtype = dtype
    config.train.num_steps = 100  # 4 epochs of 25 steps.
    config.train.learning_rate = 3e-3
    config.figures.final = False
    summary = train.train_and_evaluate(config, str(tmp_path / dtype))
    assert np.isfinite(summary["test_neg_elbo_nats"])
    curves[dtype] = [entry["train_loss"] for entry in workdir_lib.read_history(str(tmp_path / dtype))]
  assert all(np.isfinite(curves["bfloat16"]))
  assert curves["bfloat16"][-1] < curves["bfloat16"][0]  # It learns (noise images: a little).
  np.testing.assert_allclose(curves["bfloat16"], curves["float32"], atol=0.5)
