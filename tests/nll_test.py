"""The importance-sampled log-likelihood and the IWAE bound, against closed forms."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import MNIST_SHAPE, tiny_config
from tests.linear_models import gaussian_log_density, linear_gaussian_vae
from vae_jax import evaluators
from vae_jax import losses
from vae_jax import models
from vae_jax import parallel
from vae_jax import steps

_DATA_DIM, _NOISE_VARIANCE = 6, 0.3


def _linear_gaussian_model():
  return linear_gaussian_vae((2.0, 1.0, 0.5), _DATA_DIM, _NOISE_VARIANCE)


@functools.partial(jax.jit, static_argnums=(0, 1, 4, 5))
def _per_example(estimator, model, params, xs, num_samples, chunk_size):
  """estimator (one of evaluators') for each row of xs, example i with key(i)."""
  keys = jax.vmap(jax.random.key)(jnp.arange(xs.shape[0]))
  return jax.vmap(lambda x, key: estimator(
      model, params, x.reshape(_DATA_DIM, 1, 1), None, key, likelihood="gaussian",
      num_samples=num_samples, chunk_size=chunk_size))(jnp.asarray(xs, jnp.float32), keys)


def _estimates(*args):
  return _per_example(evaluators.importance_sampled_log_likelihood, *args)


def _terms(*args):
  return _per_example(evaluators.importance_sampling_terms, *args)


def _samples_from_the_model(b, cov, count):
  return np.random.default_rng(1).multivariate_normal(b, cov, size=count)


@pytest.mark.parametrize("num_samples", [1, 7, 100])
def test_exact_posterior_gives_the_exact_log_likelihood_for_any_k(num_samples):
  model, params, b, cov = _linear_gaussian_model()
  xs = _samples_from_the_model(b, cov, 5)
  estimates = _estimates(model, params, xs, num_samples, num_samples)
  # Every importance weight equals p(x); float32 round-off only.
  np.testing.assert_allclose(estimates, [gaussian_log_density(x, b, cov) for x in xs], rtol=0,
                             atol=2e-4)


def test_poorer_posterior_approaches_the_log_likelihood_from_below_as_k_grows():
  model, params, b, cov = _linear_gaussian_model()
  # A worse q: a shifted mean and twice the variance.
  params["encoder"]["c"] = params["encoder"]["c"] + 0.3
  params["encoder"]["logvar"] = params["encoder"]["logvar"] + np.log(2.0)
  xs = _samples_from_the_model(b, cov, 200)
  exact = np.mean([gaussian_log_density(x, b, cov) for x in xs])
  gaps = {k: exact - float(jnp.mean(_estimates(model, params, xs, k, min(k, 100))))
          for k in (1, 10, 100, 1000)}
  # Jensen: E[log mean w] <= log p(x), and the gap shrinks with k (Burda et al. Thm 1).
  assert gaps[1] > gaps[10] > gaps[100] > gaps[1000] > 0, gaps
  assert gaps[1] > 0.3 and gaps[1000] < 0.02, gaps


def test_logmeanexp_is_exact_and_finite_near_minus_1e4_and_for_one_value():
  values = jnp.asarray([-10000.0, -10001.0, -10002.5], jnp.float32)
  expected = -10000.0 + np.log(np.mean(np.exp([0.0, -1.0, -2.5])))
  np.testing.assert_allclose(float(losses.logmeanexp(values)), expected, rtol=0, atol=1e-3)
  assert np.isfinite(float(losses.logmeanexp(jnp.full((5000,), -1e4))))
  np.testing.assert_allclose(float(losses.logmeanexp(jnp.full((5000,), -1e4))), -1e4,
                             rtol=1e-6)
  assert float(losses.logmeanexp(jnp.asarray([-1234.5]))) == -1234.5


def test_chunked_estimate_equals_the_unchunked_one():
  config = tiny_config()
  model = models.get_model(config.model, MNIST_SHAPE)
  params = steps.create_train_state(model, config, jax.random.key(0)).params
  image = jax.random.uniform(jax.random.key(1), (28, 28, 1))
  values = [float(jax.jit(functools.partial(
      evaluators.importance_sampled_log_likelihood, model, likelihood="bernoulli",
      num_samples=300, chunk_size=chunk))(params, image, None, jax.random.key(2)))
            for chunk in (300, 64, 7, 1)]
  np.testing.assert_allclose(values, values[0], rtol=1e-6)


@pytest.mark.slow  # Trains 300 steps.
def test_elbo_below_iwae_k_below_iwae_k_prime_for_a_trained_model(tmp_path):
  """On average over a batch: ELBO <= IWAE_5 <= IWAE_50 (Burda et al. 2015, Theorem 1)."""
  config = tiny_config()
  config.train.num_steps = 300
  config.train.batch_size = 50
  model = models.get_model(config.model, MNIST_SHAPE)
  mesh = parallel.make_mesh(jax.devices()[:1])
  state = parallel.replicate(steps.create_train_state(model, config, jax.random.key(0)), mesh)
  rng = np.random.default_rng(0)
  # A small synthetic dataset: 3 blurred prototypes with noise, in uint8.
  prototypes = rng.uniform(size=(3, 28, 28, 1)) > 0.7
  images = np.clip(prototypes[rng.integers(0, 3, 500)] * 200
                   + rng.normal(scale=30, size=(500, 28, 28, 1)), 0, 255).astype(np.uint8)
  # Every step a random batch of 50: one "epoch" of 300 steps, in one dispatch.
  num_steps = config.train.num_steps
  program = steps.make_train_program(model, [config], mesh, steps_per_epoch=num_steps)
  batches = jnp.asarray(rng.integers(0, 500, (num_steps, config.train.batch_size)), jnp.int32)
  dataset = {"image": jnp.asarray(images), "label": jnp.zeros(500, jnp.int32)}
  state, _ = program(state, dataset, batches, jax.random.key(1), num_steps)
  test_images = jnp.asarray(images[:100], jnp.float32) / 255.0

  def bound(k):
    def one(image, key):
      log_w = losses.log_importance_weights(
          model, {"params": state.params}, image, None,
          jax.random.normal(key, (k, model.noise_dim)), likelihood="bernoulli")
      return losses.logmeanexp(log_w)
    keys = jax.random.split(jax.random.key(3), 100)
    return float(jnp.mean(jax.vmap(one)(test_images, keys)))

  elbo = float(jnp.mean(jax.vmap(lambda image, key: -losses.elbo_terms(
      model, {"params": state.params}, image, None, key, likelihood="bernoulli",
      num_samples=50)["neg_elbo_nats"])(test_images, jax.random.split(jax.random.key(4), 100))))
  iwae_5, iwae_50 = bound(5), bound(50)
  assert elbo < iwae_5 < iwae_50, (elbo, iwae_5, iwae_50)


# How far to trust an NLL: prefix estimates, effective sample size, warnings.


def _widened_posterior(model_params, log_variance_increase):
  params = jax.tree.map(lambda v: v, model_params)
  params["encoder"]["logvar"] = params["encoder"]["logvar"] + log_variance_increase
  return params


def test_prefix_sizes_are_the_decades_the_last_decade_and_k():
  assert evaluators.prefix_sizes(5000) == (1, 10, 100, 500, 1000, 5000)
  assert evaluators.prefix_sizes(1000) == (1, 10, 100, 1000)
  assert evaluators.prefix_sizes(7) == (1, 7)
  assert evaluators.prefix_sizes(1) == (1,)


def test_exact_posterior_gives_equal_weights_ess_k_and_every_prefix_log_p_x():
  model, params, b, cov = _linear_gaussian_model()
  xs = _samples_from_the_model(b, cov, 5)
  terms = _terms(model, params, xs, 200, 64)
  exact = np.array([gaussian_log_density(x, b, cov) for x in xs])
  assert terms["log_likelihood_at"].shape == (5, len(evaluators.prefix_sizes(200)))
  # Every weight equals p(x): each prefix is log p(x), float32 round-off only.
  np.testing.assert_allclose(terms["log_likelihood_at"],
                             np.broadcast_to(exact[:, None], terms["log_likelihood_at"].shape),
                             rtol=0, atol=2e-4)
  np.testing.assert_allclose(terms["ess"], 200.0, rtol=1e-3)
  np.testing.assert_allclose(terms["max_weight"], 1 / 200, rtol=1e-3)


def test_one_dominant_weight_gives_ess_1():
  model, params, b, cov = _linear_gaussian_model()
  xs = _samples_from_the_model(b, cov, 5)
  # q 1e16 times wider than the posterior: the sample nearest the mode outweighs the
  # next by a factor of many orders of magnitude.
  terms = _terms(model, _widened_posterior(params, np.log(1e16)), xs, 100, 7)
  np.testing.assert_allclose(terms["ess"], 1.0, rtol=0, atol=1e-4)
  np.testing.assert_allclose(terms["max_weight"], 1.0, rtol=0, atol=1e-4)


def test_prefixes_equal_the_estimator_run_with_that_k_and_ess_matches_numpy():
  model, params, b, cov = _linear_gaussian_model()
  poorer = _widened_posterior(params, np.log(3.0))
  xs = _samples_from_the_model(b, cov, 4)
  num_samples = 1000
  terms = _terms(model, poorer, xs, num_samples, 64)  # 64 divides no prefix past 1.
  for column, k in enumerate(evaluators.prefix_sizes(num_samples)):
    np.testing.assert_allclose(terms["log_likelihood_at"][:, column],
                               _estimates(model, poorer, xs, k, min(k, 64)), rtol=1e-6,
                               err_msg=f"k = {k}")
  # ESS and the largest weight from the log weights of the same samples, in float64 numpy.
  @jax.jit
  def log_weights(x, i):
    keys = parallel.example_keys(jax.random.key(i), jnp.arange(num_samples))
    eps = jax.vmap(lambda key: jax.random.normal(key, (model.noise_dim,)))(keys)
    return losses.log_importance_weights(model, {"params": poorer}, x.reshape(_DATA_DIM, 1, 1),
                                         None, eps, likelihood="gaussian")

  for i, x in enumerate(xs):
    log_w = np.asarray(log_weights(jnp.asarray(x, jnp.float32), i), np.float64)
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    np.testing.assert_allclose(terms["ess"][i], 1 / np.sum(w ** 2), rtol=1e-4)
    np.testing.assert_allclose(terms["max_weight"][i], w.max(), rtol=1e-4)
  assert np.all(terms["ess"] > 1) and np.all(terms["ess"] < num_samples)


def test_diagnostics_summary_and_warnings():
  ess = np.array([1.0, 2.0, 50.0, 100.0])
  nll_at = np.array([[100.0, 99.0, 98.0, 97.9], [100.0, 99.0, 98.0, 97.9],
                     [90.0, 89.5, 89.4, 89.38], [90.0, 89.5, 89.4, 89.38]])
  summary = evaluators.nll_diagnostics(1000, nll_at, ess, np.array([0.9, 0.5, 0.1, 0.05]))
  assert [e["k"] for e in summary["nll_by_num_samples"]] == [1, 10, 100, 1000]
  np.testing.assert_allclose([e["nll_nats"] for e in summary["nll_by_num_samples"]],
                             [95.0, 94.25, 93.7, 93.64], rtol=1e-12)
  np.testing.assert_allclose(summary["nll_by_num_samples"][0]["nll_stderr"],
                             np.std([100, 100, 90, 90], ddof=1) / 2, rtol=1e-12)
  assert summary["ess_fraction_below_10"] == 0.5
  np.testing.assert_allclose(summary["ess_p5"], np.percentile(ess, 5), rtol=1e-12)
  assert summary["max_normalized_weight_max"] == 0.9
  # 0.06 nats over the last decade and half the examples below ESS 10: no warning.
  assert evaluators.nll_warnings(dict(summary, num_importance_samples=1000)) == []
  moving = evaluators.nll_diagnostics(1000, nll_at - np.array([0, 0, 0, 0.5]), ess * 0 + 2,
                                    np.ones(4))
  warnings = evaluators.nll_warnings(dict(moving, num_importance_samples=1000))
  assert len(warnings) == 2 and "0.56 nats from k = 100 to k = 1000" in warnings[0], warnings
  assert "100% of the examples" in warnings[1], warnings
