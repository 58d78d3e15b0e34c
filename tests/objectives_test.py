"""The bound objectives of Rainforth et al. 2018 (MIWAE, CIWAE, PIWAE) beside the ELBO and
IWAE (vae_jax/losses.py), against direct computations from the same samples."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import MNIST_SHAPE, assert_refused, perturbed, tiny_config
from vae_jax import config_schema
from vae_jax import losses
from vae_jax import models
from vae_jax import steps


def _setup(stochastic_layers=1):
  config = tiny_config()
  config.model.latent_dim = 3
  config.model.stochastic_layers = stochastic_layers
  config.model.top_layer.hidden_dims, config.model.top_layer.latent_dim = (8,), 2
  model = models.get_model(config.model, MNIST_SHAPE)
  params = steps.create_train_state(model, config, jax.random.key(0)).params
  params = perturbed(params)
  image = (jax.random.uniform(jax.random.key(2), (28, 28, 1)) > 0.5).astype(jnp.float32)
  return model, params, image


def _terms(model, params, image, eps, objective, **options):
  return jax.jit(lambda p, e: losses.elbo_terms_from_noise(
      model, {"params": p}, image, None, e, likelihood="bernoulli", objective=objective,
      kl_estimator="monte_carlo", **options))(params, eps)


def _log_weights(model, params, image, eps):
  return np.asarray(jax.jit(lambda p, e: losses.log_importance_weights(
      model, {"params": p}, image, None, e, likelihood="bernoulli"))(params, eps), np.float64)


def _logmeanexp(values, axis=-1):
  peak = values.max(axis=axis, keepdims=True)
  return np.squeeze(peak, axis) + np.log(np.mean(np.exp(values - peak), axis=axis))


def test_each_bound_is_its_formula_of_the_samples_log_weights():
  """With M = 3 bounds of K = 4 samples: MIWAE = mean_m logmeanexp_k log w_mk, CIWAE =
  beta * mean log w + (1 - beta) * logmeanexp log w, IWAE over all 12, each to 1e-4;
  MIWAE with M = 1 is IWAE, CIWAE with beta = 1 is the ELBO."""
  model, params, image = _setup()
  eps = jax.random.normal(jax.random.key(3), (12, model.noise_dim))
  log_w = _log_weights(model, params, image, eps)
  expected = {
      "iwae": -_logmeanexp(log_w),
      "miwae": -np.mean(_logmeanexp(log_w.reshape(3, 4))),
      "ciwae": -(0.3 * log_w.mean() + 0.7 * _logmeanexp(log_w)),
      "piwae": -_logmeanexp(log_w),  # Its value is the IWAE bound of all M * K samples.
  }
  for objective, value in expected.items():
    terms = _terms(model, params, image, eps, objective, num_bounds=3, ciwae_beta=0.3)
    np.testing.assert_allclose(float(terms["loss"]), value, rtol=0, atol=1e-4,
                               err_msg=objective)
  one_bound = _terms(model, params, image, eps, "miwae", num_bounds=1)
  iwae = _terms(model, params, image, eps, "iwae")
  np.testing.assert_allclose(float(one_bound["loss"]), float(iwae["loss"]), rtol=1e-6)
  elbo_like = _terms(model, params, image, eps, "ciwae", ciwae_beta=1.0)
  np.testing.assert_allclose(float(elbo_like["loss"]), float(elbo_like["neg_elbo_nats"]),
                             rtol=1e-5)


@pytest.mark.parametrize("stochastic_layers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_piwae_trains_the_inference_networks_on_miwae_and_the_rest_on_iwae(
    stochastic_layers):
  """PIWAE's gradient is MIWAE's for the inference networks (model.inference_networks)
  and the IWAE bound's of all M * K samples for the generative ones (1e-5)."""
  model, params, image = _setup(stochastic_layers)
  eps = jax.random.normal(jax.random.key(4), (8, model.noise_dim))

  def gradient(objective):
    return jax.jit(jax.grad(lambda p: losses.elbo_terms_from_noise(
        model, {"params": p}, image, None, eps, likelihood="bernoulli",
        objective=objective, num_bounds=2)["loss"]))(params)

  piwae, miwae, iwae = gradient("piwae"), gradient("miwae"), gradient("iwae")
  assert set(model.inference_networks) < set(params)
  for name in params:
    reference = miwae if name in model.inference_networks else iwae
    for got, want in zip(jax.tree.leaves(piwae[name]), jax.tree.leaves(reference[name])):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_objectives_are_listed_alike_in_the_schema_and_the_losses():
  assert config_schema.ALLOWED_VALUES["loss.objective"] == losses.OBJECTIVES


@pytest.mark.parametrize("overrides, message", [
    ({"loss.objective": "miwae", "loss.kl_weight": 2.0},
     "config.loss.objective='miwae' is a bound on log p(x) without a separate KL term: "
     "config.loss.kl_weight=2.0 must be 1.0."),
    ({"loss.objective": "iwae", "loss.num_bounds": 4},
     "config.loss.num_bounds=4 is M of config.loss.objective='miwae' or 'piwae'"),
    ({"loss.objective": "ciwae", "loss.ciwae_beta": 1.5},
     "config.loss.ciwae_beta=1.5 must be in [0, 1]."),
    ({"loss.objective": "piwae", "model.family": "vampprior"},
     "config.loss.objective='piwae' trains the inference and the generative networks"),
])
def test_bad_objective_settings_are_refused(overrides, message):
  assert_refused(tiny_config(), overrides, message)
