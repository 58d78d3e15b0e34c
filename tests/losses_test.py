"""Numerical checks of the loss functions against closed forms and direct computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import MNIST_SHAPE, jit_apply, tiny_config
from vae_jax import config_schema
from vae_jax import losses
from vae_jax import models
from vae_jax import steps


def test_gaussian_kl_matches_monte_carlo_within_4_standard_errors():
  rng = np.random.default_rng(0)
  mean = rng.normal(size=5).astype(np.float64)
  logvar = rng.normal(size=5).astype(np.float64)
  analytic = float(losses.gaussian_kl(jnp.asarray(mean), jnp.asarray(logvar)))
  # KL = E_q[log q(z) - log p(z)], estimated from 200k samples of q in numpy (float64).
  num = 200_000
  z = mean + np.exp(0.5 * logvar) * rng.normal(size=(num, 5))
  log_q = -0.5 * np.sum(np.log(2 * np.pi) + logvar + (z - mean) ** 2 / np.exp(logvar), axis=1)
  log_p = -0.5 * np.sum(np.log(2 * np.pi) + z ** 2, axis=1)
  samples = log_q - log_p
  standard_error = samples.std() / np.sqrt(num)
  assert abs(samples.mean() - analytic) < 4 * standard_error, (samples.mean(), analytic)


def test_gaussian_kl_is_zero_for_the_prior():
  assert float(losses.gaussian_kl(jnp.zeros(7), jnp.zeros(7))) == 0.0


def test_bernoulli_log_likelihood_matches_direct_formula():
  rng = np.random.default_rng(1)
  logits = rng.normal(scale=3.0, size=(3, 28, 28, 1))
  image = rng.uniform(size=(3, 28, 28, 1))  # Grayscale targets, as with binarization=none.
  probs = 1.0 / (1.0 + np.exp(-logits))
  direct = np.sum(image * np.log(probs) + (1 - image) * np.log(1 - probs), axis=(1, 2, 3))
  ours = np.asarray(losses.bernoulli_log_likelihood(
      jnp.asarray(image, jnp.float32), jnp.asarray(logits, jnp.float32)))
  np.testing.assert_allclose(ours, direct, rtol=1e-5)


def test_bernoulli_log_likelihood_is_finite_and_exact_at_saturated_logits():
  logits = jnp.full((1, 28, 28, 1), 100.0).at[0, 0, 0, 0].set(-100.0)
  image = jnp.ones((1, 28, 28, 1))
  value = float(losses.bernoulli_log_likelihood(image, logits)[0])
  assert np.isfinite(value)
  # log sigmoid(100) ~ -3.7e-44 per pixel; log sigmoid(-100) = -100 - log1p(e^-100).
  np.testing.assert_allclose(value, -100.0, rtol=1e-6)
  grads = jax.grad(lambda l: losses.bernoulli_log_likelihood(image, l).sum())(logits)
  assert np.all(np.isfinite(np.asarray(grads)))


def _tiny_model_and_image():
  config_model = config_schema.default_config().model
  config_model.hidden_dims = (16,)
  config_model.latent_dim = 3
  model = models.get_model(config_model, MNIST_SHAPE)
  image = jax.random.uniform(jax.random.key(1), (28, 28, 1))
  return model, jax.jit(model.init)(jax.random.key(0), image, jnp.zeros(3)), image


def _elbo_terms(model, variables, image, rng, **options):
  """losses.elbo_terms with these options, jitted (eagerly, every op compiles on its own)."""
  return jax.jit(lambda v, x, key: losses.elbo_terms(model, v, x, None, key, **options))(
      variables, image, rng)


def test_elbo_terms_equal_their_closed_form_parts():
  """neg_elbo = -log p(x|z) + KL for the z the reparameterization gives from the key."""
  model, variables, image = _tiny_model_and_image()
  rng = jax.random.key(2)
  terms = _elbo_terms(model, variables, image, rng, likelihood="bernoulli", kl_weight=0.5)
  apply = jit_apply(model)
  mean, logvar = apply(variables, image, method="encode")
  eps = jax.random.normal(rng, (1, 3))
  logits = apply(variables, mean + jnp.exp(0.5 * logvar) * eps, method="decode")["logits"]
  reconstruction = -losses.bernoulli_log_likelihood(image, logits)[0]
  kl = losses.gaussian_kl(mean, logvar)
  np.testing.assert_allclose(terms["reconstruction_nats"], reconstruction, rtol=1e-6)
  np.testing.assert_allclose(terms["kl_nats"], kl, rtol=1e-6)
  np.testing.assert_allclose(terms["neg_elbo_nats"], reconstruction + kl, rtol=1e-6)
  np.testing.assert_allclose(terms["loss"], reconstruction + 0.5 * kl, rtol=1e-6)


@pytest.mark.parametrize("free_bits", [0.05, 0.5, 5.0])
def test_free_bits_loss_clamps_each_dimension_of_the_analytic_kl(free_bits):
  """loss = reconstruction + beta * sum_j max(KL_j, lambda), KL_j in numpy (float64);
  the reported KL and -ELBO stay the true ones."""
  model, variables, image = _tiny_model_and_image()
  rng = jax.random.key(2)
  terms = _elbo_terms(model, variables, image, rng, likelihood="bernoulli", kl_weight=2.0,
                      free_bits=free_bits)
  mean, logvar = (np.asarray(v, np.float64)
                  for v in jit_apply(model)(variables, image, method="encode"))
  kl_per_dim = 0.5 * (np.exp(logvar) + mean ** 2 - 1.0 - logvar)
  plain = _elbo_terms(model, variables, image, rng, likelihood="bernoulli")
  np.testing.assert_allclose(terms["kl_nats"], kl_per_dim.sum(), rtol=1e-5)
  np.testing.assert_allclose(terms["neg_elbo_nats"], plain["neg_elbo_nats"], rtol=1e-6)
  expected = float(plain["reconstruction_nats"]) + 2.0 * np.maximum(kl_per_dim, free_bits).sum()
  np.testing.assert_allclose(terms["loss"], expected, rtol=1e-5)
  # Dimensions below the threshold get no gradient from the KL term.
  below = kl_per_dim < free_bits
  grad = jax.grad(lambda v: losses.free_bits_kl(v, free_bits))(jnp.asarray(kl_per_dim))
  np.testing.assert_array_equal(np.asarray(grad), np.where(below, 0.0, 1.0))


def test_the_monte_carlo_kl_is_the_samples_mean_and_unbiased():
  """kl_estimator='monte_carlo': the KL term is mean_j [log q(z_j|x) - log p(z_j)] of the
  samples themselves (1e-5), whose mean over many samples is the closed form (within 4
  standard errors); the reconstruction term is the same as the closed form's."""
  model, variables, image = _tiny_model_and_image()
  rng = jax.random.key(3)
  options = dict(likelihood="bernoulli", num_samples=4000)
  sampled = _elbo_terms(model, variables, image, rng, kl_estimator="monte_carlo", **options)
  closed = _elbo_terms(model, variables, image, rng, **options)
  eps = jax.random.normal(rng, (4000, 3))
  outputs = jit_apply(model)(variables, image, eps)
  per_sample = np.asarray(outputs.log_posterior - outputs.log_prior, np.float64)
  np.testing.assert_allclose(sampled["kl_nats"], per_sample.mean(), rtol=1e-5)
  np.testing.assert_allclose(sampled["reconstruction_nats"], closed["reconstruction_nats"],
                             rtol=1e-6)
  assert abs(per_sample.mean() - float(closed["kl_nats"])) < 4 * per_sample.std() / np.sqrt(4000)


@pytest.mark.parametrize("free_bits", [pytest.param(0.01, marks=pytest.mark.slow), 0.2,
                                       pytest.param(2.0, marks=pytest.mark.slow)])
def test_free_bits_of_a_two_layer_model_clamp_each_layer(free_bits):
  """loss = reconstruction + sum_l max(KL_l, lambda * units_l), KL_l each layer's sampled
  log q - log p (float64, from the model's own densities); the reported KL stays the
  sampled total."""
  config = tiny_config()
  config.model.stochastic_layers = 2
  config.model.top_layer.hidden_dims, config.model.top_layer.latent_dim = (8,), 2
  model = models.get_model(config.model, MNIST_SHAPE)
  image = jax.random.uniform(jax.random.key(1), (28, 28, 1))
  variables = jax.jit(model.init)(jax.random.key(0), image, jnp.zeros(model.noise_dim))
  rng = jax.random.key(2)
  terms = _elbo_terms(model, variables, image, rng, likelihood="bernoulli", num_samples=3,
                      free_bits=free_bits)
  plain = _elbo_terms(model, variables, image, rng, likelihood="bernoulli", num_samples=3)
  outputs = jit_apply(model)(variables, image, jax.random.normal(rng, (3, model.noise_dim)))
  per_layer = np.asarray(outputs.kl_groups, np.float64)
  units = np.asarray([config.model.latent_dim, 2], np.float64)
  np.testing.assert_allclose(per_layer.sum(), plain["kl_nats"], rtol=1e-5)
  np.testing.assert_allclose(terms["kl_nats"], plain["kl_nats"], rtol=1e-6)
  expected = (float(plain["reconstruction_nats"])
              + np.maximum(per_layer, free_bits * units).sum())
  np.testing.assert_allclose(terms["loss"], expected, rtol=1e-5)


def test_kl_warmup_factor_is_linear_then_one():
  steps_per_epoch = 50
  for step, expected in [(0, 0.0), (25, 0.125), (100, 0.5), (199, 0.995), (200, 1.0),
                         (5000, 1.0)]:
    factor = steps.kl_warmup_factor(jnp.asarray(step, jnp.int32), jnp.asarray(4.0),
                                    steps_per_epoch)
    np.testing.assert_allclose(float(factor), expected, rtol=1e-6, err_msg=str(step))
  # Without warm-up, traced or not, the factor is 1 from the first step.
  assert steps.kl_warmup_factor(jnp.asarray(0, jnp.int32), 0.0, steps_per_epoch) == 1.0
  assert float(steps.kl_warmup_factor(jnp.asarray(0, jnp.int32), jnp.asarray(0.0),
                                      steps_per_epoch)) == 1.0


@pytest.mark.parametrize("num_samples", [1, 4])
def test_elbo_terms_average_over_samples(num_samples):
  model, variables, image = _tiny_model_and_image()
  rng = jax.random.key(5)
  terms = _elbo_terms(model, variables, image, rng, likelihood="bernoulli",
                      num_samples=num_samples)
  apply = jit_apply(model)
  mean, logvar = apply(variables, image, method="encode")
  eps = jax.random.normal(rng, (num_samples, 3))
  per_sample = [-losses.bernoulli_log_likelihood(
      image, apply(variables, mean + jnp.exp(0.5 * logvar) * e, method="decode")["logits"])
                for e in eps]
  np.testing.assert_allclose(terms["reconstruction_nats"], np.mean(per_sample), rtol=1e-5)


def test_gaussian_log_likelihood_matches_direct_formula():
  rng = np.random.default_rng(3)
  image = rng.uniform(size=(2, 28, 28, 1))
  mean = rng.uniform(size=(2, 28, 28, 1))
  logvar = rng.normal(scale=0.5, size=(2, 28, 28, 1))
  variance = np.exp(logvar)
  direct = np.sum(-0.5 * np.log(2 * np.pi * variance) - (image - mean) ** 2 / (2 * variance),
                  axis=(1, 2, 3))
  ours = losses.gaussian_log_likelihood(*(jnp.asarray(a, jnp.float32)
                                          for a in (image, mean, logvar)))
  np.testing.assert_allclose(np.asarray(ours), direct, rtol=1e-5)


@pytest.mark.parametrize("variance, scale, constant", [
    (1.0, 0.5, 392 * np.log(2 * np.pi)),  # Seed 003: 0.5 * squared error.
    (0.5, 1.0, 392 * np.log(np.pi)),  # Seeds 001/002: the squared error.
])
def test_fixed_variance_gaussian_nll_is_the_seeds_squared_error_plus_a_constant(
    variance, scale, constant):
  rng = np.random.default_rng(4)
  image, mean = rng.uniform(size=(2, 28, 28, 1)), rng.uniform(size=(2, 28, 28, 1))
  squared_error = np.sum((image - mean) ** 2, axis=(1, 2, 3))
  nll = -losses.gaussian_log_likelihood(jnp.asarray(image, jnp.float32),
                                        jnp.asarray(mean, jnp.float32),
                                        jnp.full((28, 28, 1), np.log(variance), jnp.float32))
  np.testing.assert_allclose(np.asarray(nll), scale * squared_error + constant, rtol=1e-5)


@pytest.mark.parametrize("variance, param_shape", [
    ("fixed", None), ("learned_global", ()), ("learned_per_pixel", (28, 28, 1))])
def test_gaussian_head_variance_options(variance, param_shape):
  head = models.GaussianHead(mean_activation="sigmoid", variance=variance,
                             fixed_variance=0.5, min_variance=1e-3)
  output = jax.random.normal(jax.random.key(0), (3, 28, 28, 1))
  variables = head.init(jax.random.key(1), output)
  decoded = head.apply(variables, output)
  np.testing.assert_allclose(decoded["mean"], jax.nn.sigmoid(output), rtol=1e-6)
  assert decoded["logvar"].shape == (28, 28, 1)
  if param_shape is None:
    assert not variables
    np.testing.assert_allclose(decoded["logvar"], np.log(0.5), rtol=1e-6)
    return
  assert variables["params"]["raw_logvar"].shape == param_shape
  # Starts at variance 1 + min_variance; never falls below min_variance.
  np.testing.assert_allclose(np.exp(decoded["logvar"]), 1.001, rtol=1e-6)
  very_negative = jax.tree.map(lambda p: p - 1e3, variables)
  floor = np.exp(head.apply(very_negative, output)["logvar"])
  np.testing.assert_allclose(floor, 1e-3, rtol=1e-5)


def test_bernoulli_log_likelihood_gradient_is_x_minus_sigmoid_including_at_zero():
  logits = jnp.asarray([[-30.0, -2.0, 0.0, 0.0, 1.5, 30.0]] * 1, jnp.float32).reshape(
      1, 1, 6, 1)
  image = jnp.asarray([0.0, 1.0, 0.0, 1.0, 0.3, 1.0]).reshape(1, 1, 6, 1)
  grads = jax.grad(lambda l: losses.bernoulli_log_likelihood(image, l).sum())(logits)
  np.testing.assert_allclose(grads, image - jax.nn.sigmoid(logits), rtol=1e-6, atol=1e-7)
