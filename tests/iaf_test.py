"""The IAF posterior family (vae_jax/models/iaf.py) against independent computations; the
contract checks that every family passes are in conformance_test.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import assert_refused, jit_apply, shipped_config, small_model, tiny_config
from vae_jax import config_schema
from vae_jax import evaluators
from vae_jax import parallel
from vae_jax.models import iaf


def test_made_masks_are_autoregressive():
  """The MADE's m and s for unit i depend on units < i only: their Jacobian in z is
  strictly lower triangular, and below the diagonal it is not all zero."""
  made = iaf.MADE(hidden_dim=16, activation=jnp.tanh,
                  kernel_init=jax.nn.initializers.normal(1.0), gate_bias=1.0)
  z = jax.random.normal(jax.random.key(0), (5,))
  variables = made.init(jax.random.key(1), z)
  for part in range(2):
    jacobian = np.asarray(jax.jit(jax.jacfwd(lambda v, p=part: made.apply(variables, v)[p]))(z))
    np.testing.assert_array_equal(np.triu(jacobian), 0.0)
    assert np.abs(np.tril(jacobian, -1)).sum() > 0


@pytest.mark.parametrize("num_steps", [1, 3])
def test_log_q_is_the_gaussians_minus_the_flows_log_determinant(num_steps):
  """log q(z_T|x) = log N(eps) - log |det dz_T/deps|, with the determinant computed by
  autodiff over the whole map eps -> z_T (1e-4): the flow's triangular shortcut is exact."""
  model, params = small_model("iaf", **{"model.iaf.steps": num_steps,
                                        "model.iaf.hidden_dim": 16})
  image = jax.random.uniform(jax.random.key(4), (28, 28, 1))
  eps = jax.random.normal(jax.random.key(5), (5, 3))

  def sample(e):
    return model.apply({"params": params}, image, e[None]).z[0]

  outputs = jax.jit(lambda e: model.apply({"params": params}, image, e))(eps)
  jacobians = jax.jit(jax.vmap(jax.jacfwd(sample)))(eps)  # One program, not op by op.
  for index in range(5):
    jacobian = np.asarray(jacobians[index], np.float64)
    log_normal = -0.5 * np.sum(np.asarray(eps[index], np.float64) ** 2 + np.log(2 * np.pi))
    expected = log_normal - np.log(abs(np.linalg.det(jacobian)))
    np.testing.assert_allclose(outputs.log_posterior[index], expected, rtol=0, atol=1e-4)
  # The flow moves z: not the Gaussian's sample.
  mean, logvar = jit_apply(model)({"params": params}, image, method="encode")
  assert float(jnp.max(jnp.abs(outputs.z - (mean + jnp.exp(0.5 * logvar) * eps)))) > 1e-3


def test_the_shipped_config_is_valid():
  for arg in (None, "short", "short,steps=4"):
    config = shipped_config("iaf", arg)
    config_schema.validate(config)
    assert config.model.family == "iaf"
  assert shipped_config("iaf", "steps=4").model.iaf.steps == 4


@pytest.mark.parametrize("overrides, message", [
    ({"model.family": "iaf", "model.iaf.steps": 0},
     "config.model.iaf.steps=0 must be a positive integer."),
    ({"model.family": "iaf", "model.stochastic_layers": 2},
     "config.model.family='iaf' has one stochastic layer"),
])
def test_what_it_cannot_take_is_refused_by_name(overrides, message):
  assert_refused(tiny_config(), overrides, message)


def test_the_evaluation_says_why_it_has_no_latent_diagnostics():
  config = tiny_config()
  config.model.family = "iaf"
  model, params = small_model("iaf")
  evaluator = evaluators.Evaluators(model, config, parallel.make_mesh(jax.devices()[:1]))
  images = np.zeros((10, 28, 28, 1), np.uint8)
  result = evaluator.latents(params, {"image": jnp.asarray(images),
                                      "label": jnp.zeros(10, jnp.int32)},
                             jax.random.key(0), config)
  assert evaluators.format_result({"neg_elbo_nats": 1.0, **result}).splitlines()[-1] == (
      "no latent diagnostics: the posterior is not a diagonal Gaussian, whose mean and "
      "variance the diagnostics need")
