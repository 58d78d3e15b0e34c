"""The two-stochastic-layer VAE: exact log-likelihood on a linear-Gaussian hierarchy whose
marginal is analytic, shapes of the paper's model, conditioning, and its shipped config."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import MNIST_SHAPE, jit_apply, shipped_config, tiny_config
from tests.linear_models import LinearDecoder, LinearGaussian, gaussian_log_density
from vae_jax import config_schema
from vae_jax import evaluators
from vae_jax import losses
from vae_jax import models
from vae_jax import steps

# x (4 pixels) <- z1 (2) <- z2 (1), all linear-Gaussian.
_DATA_DIM, _Z1_DIM, _Z2_DIM = 4, 2, 1
_Z1_VARIANCE, _X_VARIANCE, _BETA = 0.5, 0.3, 1.5


def _linear_gaussian_hierarchy():
  """p(z2) = N(0, 1), p(z1|z2) = N(B z2 + c, s1 I), p(x|z1) = N(W z1 + b, s2 I), and the
  exact posteriors q(z1|x) = p(z1|x), q(z2|z1) = p(z2|z1).

  B = (beta, 0) keeps z1's marginal covariance D diagonal and W's orthogonal columns keep
  W^T W diagonal, so p(z1|x) (precision D^-1 + W^T W / s2) is a diagonal Gaussian. Since x
  and z2 are independent given z1, p(z1, z2|x) = p(z1|x) p(z2|z1): with these q every
  importance weight equals p(x).
  """
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(_DATA_DIM, _Z1_DIM)))
  w = (q * np.array([2.0, 0.7])).T  # (z1, x): W^T W = diag(4, 0.49).
  b = rng.normal(size=_DATA_DIM)
  c = np.array([0.4, -0.3])
  beta = np.array([[_BETA, 0.0]])  # (z2, z1)
  z1_cov = np.diag([_BETA ** 2 + _Z1_VARIANCE, _Z1_VARIANCE])
  # p(z1|x): mean = P^-1 (D^-1 c + W^T (x - b) / s2) with W^T as `w` here (rows = z1).
  precision = np.linalg.inv(z1_cov) + w @ w.T / _X_VARIANCE
  posterior_cov = np.linalg.inv(precision)
  a1 = (posterior_cov @ w / _X_VARIANCE).T  # x @ a1
  c1 = posterior_cov @ (np.linalg.solve(z1_cov, c) - w @ b / _X_VARIANCE)
  # p(z2|z1): precision 1 + beta^2 / s1, mean = beta (z1_0 - c_0) / (s1 precision).
  z2_precision = 1.0 + _BETA ** 2 / _Z1_VARIANCE
  a2 = np.array([[_BETA / (_Z1_VARIANCE * z2_precision)], [0.0]])
  params = {
      "bottom_encoder": {"a": a1, "c": c1, "logvar": np.log(np.diag(posterior_cov))},
      "top_encoder": {"a": a2, "c": -c[:1] * a2[0], "logvar": np.array([-np.log(z2_precision)])},
      "top_decoder": {"a": beta, "c": c, "logvar": np.log(np.full(_Z1_DIM, _Z1_VARIANCE))},
      "decoder": {"w": w, "b": b},
  }
  model = models.TwoLayerVAE(
      bottom_encoder=LinearGaussian(_DATA_DIM, _Z1_DIM, flatten_image=True),
      top_encoder=LinearGaussian(_Z1_DIM, _Z2_DIM),
      top_decoder=LinearGaussian(_Z2_DIM, _Z1_DIM),
      decoder=LinearDecoder(_Z1_DIM, _DATA_DIM),
      head=models.GaussianHead(variance="fixed", fixed_variance=_X_VARIANCE))
  x_mean = w.T @ c + b
  x_cov = w.T @ z1_cov @ w + _X_VARIANCE * np.eye(_DATA_DIM)
  return model, jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), params), x_mean, x_cov


@functools.partial(jax.jit, static_argnums=(0, 3))
def _estimates(model, params, xs, num_samples):
  keys = jax.vmap(jax.random.key)(jnp.arange(xs.shape[0]))
  return jax.vmap(lambda x, key: evaluators.importance_sampled_log_likelihood(
      model, params, x.reshape(_DATA_DIM, 1, 1), None, key, likelihood="gaussian",
      num_samples=num_samples, chunk_size=min(num_samples, 100)))(
          jnp.asarray(xs, jnp.float32), keys)


def _data(mean, cov, count):
  return np.random.default_rng(1).multivariate_normal(mean, cov, size=count)


@pytest.mark.parametrize("num_samples", [1, 10, 300])
def test_exact_posteriors_give_the_exact_log_likelihood_for_any_k(num_samples):
  model, params, x_mean, x_cov = _linear_gaussian_hierarchy()
  xs = _data(x_mean, x_cov, 6)
  np.testing.assert_allclose(_estimates(model, params, xs, num_samples),
                             [gaussian_log_density(x, x_mean, x_cov) for x in xs], rtol=0, atol=2e-4)


def test_sampled_elbo_of_the_exact_posteriors_is_the_log_likelihood():
  """The ELBO path (reconstruction + a KL estimated from samples) sees the same weights."""
  model, params, x_mean, x_cov = _linear_gaussian_hierarchy()
  x = _data(x_mean, x_cov, 1)[0]
  terms = jax.jit(lambda params, x: losses.elbo_terms(
      model, {"params": params}, x.reshape(_DATA_DIM, 1, 1), None, jax.random.key(3),
      likelihood="gaussian", num_samples=20))(params, jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(float(terms["neg_elbo_nats"]), -gaussian_log_density(x, x_mean, x_cov),
                             rtol=0, atol=2e-4)
  assert float(terms["kl_nats"]) > 0.1  # A real, sampled KL term, not zero by construction.


@pytest.mark.slow  # Compile-heavy; nll_test.py checks the one-layer case in the fast subset.
def test_poorer_posteriors_approach_the_log_likelihood_from_below_as_k_grows():
  model, params, x_mean, x_cov = _linear_gaussian_hierarchy()
  params["bottom_encoder"]["c"] = params["bottom_encoder"]["c"] + 0.3
  params["top_encoder"]["logvar"] = params["top_encoder"]["logvar"] + np.log(2.0)
  xs = _data(x_mean, x_cov, 200)
  exact = np.mean([gaussian_log_density(x, x_mean, x_cov) for x in xs])
  gaps = {k: exact - float(jnp.mean(_estimates(model, params, xs, k)))
          for k in (1, 10, 100, 1000)}
  assert gaps[1] > gaps[10] > gaps[100] > gaps[1000] > 0, gaps
  assert gaps[1] > 0.1 and gaps[1000] < 0.02, gaps


def test_prior_samples_are_ancestral_with_the_marginal_covariance_of_z1():
  """decode_prior_sample draws z1 ~ p(z1|z2): the mean images W z1 + b of 20,000 prior
  samples have mean W^T c + b and covariance W^T D W (D = z1's marginal covariance), in
  closed form; `decode` (z1 = E[z1|z2]) would give W^T B^T B W, missing s1 I."""
  model, params, _, _ = _linear_gaussian_hierarchy()
  noise = jax.random.normal(jax.random.key(4), (20_000, model.noise_dim))
  means = np.asarray(jax.jit(lambda p: model.apply(
      {"params": p}, noise, method=model.decode_prior_sample)["mean"])(params),
                     np.float64).reshape(len(noise), _DATA_DIM)
  w, c = np.asarray(params["decoder"]["w"]), np.asarray(params["top_decoder"]["c"])
  z1_cov = np.diag([_BETA ** 2 + _Z1_VARIANCE, _Z1_VARIANCE])
  # Standard errors of 20,000 samples: about 0.015 for the means, 0.02 for the
  # covariances (entries up to 2.3); 4 of them.
  np.testing.assert_allclose(means.mean(axis=0), w.T @ c + params["decoder"]["b"], atol=0.06)
  np.testing.assert_allclose(np.cov(means.T), w.T @ z1_cov @ w, atol=0.1)


def test_the_papers_two_layer_model_has_its_layer_sizes():
  config = shipped_config("iwae", "layers=2,objective=iwae,k=5")
  config_schema.validate(config)
  model = models.get_model(config.model, MNIST_SHAPE)
  assert (model.latent_dim, model.noise_dim) == (50, 150)
  # Shapes only: eval_shape traces the initialization without compiling or running it.
  params = jax.eval_shape(lambda: steps.create_train_state(
      model, config, jax.random.key(0)).params)
  shapes = jax.tree.map(lambda p: p.shape, params)
  assert shapes["bottom_encoder"]["Dense_0"]["kernel"] == (784, 200)
  assert shapes["bottom_encoder"]["Dense_1"]["kernel"] == (200, 200)
  assert shapes["bottom_encoder"]["mean"]["kernel"] == (200, 100)
  assert shapes["top_encoder"]["Dense_0"]["kernel"] == (100, 100)
  assert shapes["top_encoder"]["mean"]["kernel"] == (100, 50)
  assert shapes["top_decoder"]["Dense_0"]["kernel"] == (50, 100)
  assert shapes["top_decoder"]["mean"]["kernel"] == (100, 100)
  assert shapes["decoder"]["Dense_0"]["kernel"] == (100, 200)
  assert shapes["decoder"]["output"]["kernel"] == (200, 784)


@pytest.mark.parametrize("conditional", [False, True])
def test_two_layer_shapes_decoding_and_label_dependence(conditional):
  config = tiny_config()
  config.model.stochastic_layers = 2
  config.model.conditional = conditional
  config.model.top_layer.hidden_dims = (8,)
  config.model.top_layer.latent_dim = 2
  model = models.get_model(config.model, MNIST_SHAPE)
  params = steps.create_train_state(model, config, jax.random.key(0)).params
  apply = jit_apply(model)
  images = jax.random.uniform(jax.random.key(1), (5, 28, 28, 1))
  labels = jnp.arange(5, dtype=jnp.int32)
  mean, logvar = apply({"params": params}, images, labels, method="encode")
  assert mean.shape == logvar.shape == (5, 2)
  logits = apply({"params": params}, mean, labels, method="decode")["logits"]
  assert logits.shape == (5, 28, 28, 1)
  eps = jax.random.normal(jax.random.key(2), (7, model.noise_dim))
  outputs = apply({"params": params}, images[0], eps, labels[0])
  assert outputs.decoded["logits"].shape == (7, 28, 28, 1)
  assert outputs.log_prior.shape == outputs.log_posterior.shape == (7,)
  if conditional:  # The same z2 under another label decodes differently.
    other = apply({"params": params}, mean, (labels + 1) % 10, method="decode")["logits"]
    assert float(jnp.max(jnp.abs(other - logits))) > 1e-4


def test_two_layer_conv_is_refused_with_the_conflicting_keys():
  config = tiny_config()
  config.model.stochastic_layers = 2
  config.model.name = "conv"
  with pytest.raises(ValueError, match=r"model.stochastic_layers=2 needs config.model.name"):
    config_schema.validate(config)
  config.model.name = "mlp"
  config.model.stochastic_layers = 3
  with pytest.raises(ValueError, match=r"model.stochastic_layers=3 is not one of 1, 2"):
    config_schema.validate(config)
