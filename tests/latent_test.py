"""Latent diagnostics (active units, KL per dimension, I(x; z) + KL(q(z) || p(z))) and the
fixed binarization of evaluated images, against closed forms."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import MNIST_SHAPE, tiny_config
from tests.linear_models import linear_gaussian_vae
from vae_jax import config_schema
from vae_jax import evaluators
from vae_jax import models
from vae_jax import parallel
from vae_jax import steps

_DATA_DIM, _NOISE_VARIANCE = 6, 0.3


@functools.partial(jax.jit, static_argnums=(0, 3))
def _layers(model, params, xs, samples_per_example=1):
  """model.latent_layers for each row of xs (float data), example i with key(i)."""
  def one(x, index):
    eps = jax.random.normal(jax.random.key(index), (samples_per_example, model.noise_dim))
    return model.apply({"params": params}, x.reshape(_DATA_DIM, 1, 1), eps,
                       method=model.latent_layers)
  return jax.vmap(one)(jnp.asarray(xs, jnp.float32), jnp.arange(xs.shape[0]))


def _model_and_data(scales, count):
  model, params, b, cov = linear_gaussian_vae(scales, _DATA_DIM, _NOISE_VARIANCE)
  xs = np.random.default_rng(1).multivariate_normal(b, cov, size=count)
  return model, params, xs


def test_exactly_the_dimensions_the_decoder_uses_are_active():
  # Dimensions 1 and 3 are ignored by the decoder (zero rows of W): their exact posterior
  # is the prior for every x, so its mean does not vary (A_u = 0) and its KL is 0.
  model, params, xs = _model_and_data((2.0, 0.0, 0.5, 0.0), 2000)
  result = evaluators.latent_diagnostics(_layers(model, params, xs))
  layer, = result["latent_layers"]
  assert result["active_units"] == layer["active_units"] == 2
  activity = np.asarray(layer["activity"])
  assert np.all(activity[[0, 2]] > evaluators.ACTIVITY_THRESHOLD)
  np.testing.assert_allclose(activity[[1, 3]], 0.0, atol=1e-10)
  np.testing.assert_allclose(np.asarray(layer["kl_per_dim"])[[1, 3]], 0.0, atol=1e-6)
  # A used unit's activity is Var_x(E[z_u|x]) = s_u^2 / (s_u^2 + s2) in closed form (x from
  # the model's marginal); 2000 examples: a sampling error of a few percent (rtol 0.1).
  expected = np.asarray([4.0, 0.25]) / (np.asarray([4.0, 0.25]) + _NOISE_VARIANCE)
  np.testing.assert_allclose(activity[[0, 2]], expected, rtol=0.1)


def test_kl_per_dimension_sums_to_the_total_kl():
  config = tiny_config()
  model = models.get_model(config.model, MNIST_SHAPE)
  params = steps.create_train_state(model, config, jax.random.key(0)).params
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape),
                        params)
  images = jax.random.uniform(jax.random.key(2), (50, 28, 28, 1))
  eps = jnp.zeros((50, 1, model.noise_dim))

  @jax.jit  # One program, not one per op: the test runs in a fraction of the time.
  def layers_and_total_kl(params):
    apply = lambda x, e, **kwargs: model.apply({"params": params}, x, e, **kwargs)
    return (jax.vmap(lambda x, e: apply(x, e, method=model.latent_layers))(images, eps),
            jax.vmap(lambda x, e: apply(x, e).kl)(images, eps))

  layers, total = layers_and_total_kl(params)
  result = evaluators.latent_diagnostics(layers)
  np.testing.assert_allclose(result["latent_kl_nats"], float(jnp.mean(total)), rtol=1e-5)
  np.testing.assert_allclose(sum(result["latent_layers"][0]["kl_per_dim"]),
                             result["latent_kl_nats"], rtol=1e-6)


@pytest.mark.slow  # Compile-heavy: the full suite only.
def test_two_layer_shares_sum_to_the_sampled_kl_in_expectation():
  config = config_schema.load_shipped("iwae", "layers=2")
  model = models.get_model(config.model, MNIST_SHAPE)
  params = steps.create_train_state(model, config, jax.random.key(0)).params
  image = jax.random.bernoulli(jax.random.key(1), 0.3, (28, 28, 1)).astype(jnp.float32)
  num_samples = 4000
  eps = jax.random.normal(jax.random.key(2), (num_samples, model.noise_dim))
  layers, outputs = jax.jit(lambda params: (
      model.apply({"params": params}, image, eps, method=model.latent_layers),
      model.apply({"params": params}, image, eps)))(params)
  sampled_kl = np.asarray(outputs.log_posterior - outputs.log_prior, np.float64)
  shares = float(jnp.sum(layers[0]["kl_per_dim"]) + jnp.sum(layers[1]["kl_per_dim"]))
  # Same samples: the shares replace log q(z2|z1) - log p(z2) by its mean given z1, which
  # has the same expectation. Within 4 standard errors of the sampled KL's mean.
  tolerance = 4 * sampled_kl.std() / np.sqrt(num_samples)
  assert abs(shares - sampled_kl.mean()) < tolerance, (shares, sampled_kl.mean(), tolerance)
  assert len(layers[0]["kl_per_dim"]) == 100 and len(layers[1]["kl_per_dim"]) == 50


def test_mutual_information_matches_its_closed_form():
  # With the exact posterior and x from the model, q(z|x) q(x) = p(z, x): I(x; z) =
  # 0.5 * sum_u log(1 + s_u^2 / s2) in closed form, the aggregate posterior is the prior
  # (marginal KL 0), and the mean KL equals I(x; z).
  scales = np.asarray([2.0, 1.0, 0.5])
  closed_form = 0.5 * np.sum(np.log1p(scales ** 2 / _NOISE_VARIANCE))  # 2.37 nats.
  model, params, xs = _model_and_data(tuple(scales), 4000)
  result = evaluators.latent_diagnostics(_layers(model, params, xs))
  # The estimate's Monte-Carlo standard error over 4000 examples is 0.023 nats (the
  # per-example terms have std 1.47), and the N-component mixture standing in for q(z)
  # biases it by a few hundredths (measured: 2.33 against 2.37); atol 0.1 is ~4 standard
  # errors.
  np.testing.assert_allclose(result["mutual_information_nats"], closed_form, atol=0.1)
  np.testing.assert_allclose(result["latent_kl_nats"], closed_form, atol=0.1)
  np.testing.assert_allclose(result["marginal_kl_nats"], 0.0, atol=0.1)
  assert result["mutual_information_nats"] <= np.log(len(xs))


def test_aggregate_posterior_against_a_direct_computation():
  rng = np.random.default_rng(0)
  mean, logvar, z = (rng.normal(size=(37, 5)), rng.normal(size=(37, 5)),
                     rng.normal(size=(11, 5)))
  direct = [np.log(np.mean([np.exp(np.sum(-0.5 * ((zi - m) ** 2 / np.exp(lv) + lv
                                                   + np.log(2 * np.pi))))
                            for m, lv in zip(mean, logvar)])) for zi in z]
  for block_size in (1, 4, 32):
    np.testing.assert_allclose(evaluators.log_aggregate_posterior(
        jnp.asarray(mean, jnp.float32), jnp.asarray(logvar, jnp.float32),
        jnp.asarray(z, jnp.float32), block_size=block_size), direct, rtol=1e-5)


def _dataset(num_examples=60):
  rng = np.random.default_rng(0)
  return {"image": jnp.asarray(rng.integers(0, 256, (num_examples, 28, 28, 1)), jnp.uint8),
          "label": jnp.zeros(num_examples, jnp.int32)}


def test_latent_evaluator_does_not_depend_on_the_batch_size():
  config = tiny_config()
  config.data.binarization = "dynamic"
  model = models.get_model(config.model, MNIST_SHAPE)
  params = steps.create_train_state(model, config, jax.random.key(0)).params
  mesh = parallel.make_mesh(jax.devices()[:1])
  results = []
  for batch_size in (60, 7):
    config.eval.batch_size = batch_size
    results.append(evaluators.Evaluators(model, config, mesh).latents(
        params, _dataset(), jax.random.key(3), config))
  for key in ("latent_kl_nats", "mutual_information_nats", "active_units"):
    np.testing.assert_allclose(results[1][key], results[0][key], rtol=1e-5)
  assert results[0]["latent_diagnostics_examples"] == 60
  subset = evaluators.Evaluators(model, config, mesh).latents(
      params, _dataset(), jax.random.key(3), config, 20)
  assert subset["latent_diagnostics_examples"] == 20


def test_evaluation_binarizes_the_same_images_whatever_the_run_seed():
  """The -ELBO's reconstruction through a decoder that ignores z depends on the binarized
  image alone: equal for two run keys, different for another binarization seed."""
  config = tiny_config()
  config.data.binarization = "dynamic"
  model = models.get_model(config.model, MNIST_SHAPE)
  params = jax.tree.map(jnp.zeros_like,
                        steps.create_train_state(model, config, jax.random.key(0)).params)
  output_bias = params["decoder"]["output"]["bias"]
  params["decoder"]["output"]["bias"] = jax.random.normal(jax.random.key(1), output_bias.shape)
  mesh = parallel.make_mesh(jax.devices()[:1])

  def reconstruction(binarization_seed, run_seed):
    config.eval.binarization_seed = binarization_seed
    evaluator = evaluators.Evaluators(model, config, mesh)
    return evaluator.neg_elbo(params, _dataset(), steps.run_keys(run_seed)["eval"],
                              config)["reconstruction_nats"]

  assert reconstruction(0, run_seed=0) == reconstruction(0, run_seed=1)
  assert reconstruction(0, run_seed=0) != reconstruction(5, run_seed=0)
