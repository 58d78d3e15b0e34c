"""The VampPrior family (vae_jax/models/vampprior.py) against independent computations;
the contract checks that every family passes are in conformance_test.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import (assert_refused, jit_apply, shipped_config, small_model,
                           synthetic_splits, tiny_config)
from vae_jax import config_schema
from vae_jax import evaluators
from vae_jax import figures
from vae_jax import input_pipeline
from vae_jax import losses
from vae_jax import train
from vae_jax import visualize
from vae_jax.models.vampprior import mixture_component_log_densities


def test_the_prior_is_the_mixture_of_the_posteriors_at_the_pseudo_inputs():
  """log p(z) against the mixture computed in float64 from the encoder's means and
  variances at the (clipped) pseudo-inputs (1e-4); prior samples are the component
  that the uniform picks, at its mean + std * noise (1e-5)."""
  model, params = small_model("vampprior", **{"model.vampprior.num_pseudo_inputs": 4})
  apply = jit_apply(model)
  pseudo_inputs = np.clip(np.asarray(params["pseudo_inputs"]), 0, 1)
  assert pseudo_inputs.shape == (4, 28, 28, 1)
  mean, logvar = (np.asarray(a, np.float64) for a in apply(
      {"params": params}, jnp.asarray(pseudo_inputs, jnp.float32), method="encode"))
  z = np.asarray(jax.random.normal(jax.random.key(2), (6, 3)), np.float64)
  log_components = -0.5 * np.sum((z[:, None] - mean) ** 2 / np.exp(logvar) + logvar
                                 + np.log(2 * np.pi), axis=-1)
  peak = log_components.max(axis=1, keepdims=True)
  expected = (peak[:, 0] + np.log(np.exp(log_components - peak).sum(axis=1))) - np.log(4)
  log_prior = apply({"params": params}, jnp.asarray(z, jnp.float32), method="log_prior")
  np.testing.assert_allclose(log_prior, expected, rtol=0, atol=1e-4)

  noise = model.prior_noise(jax.random.key(3), 8)
  z_noise, uniform = np.asarray(noise[:, :3], np.float64), np.asarray(noise[:, 3])
  assert noise.shape == (8, 4) and np.all((uniform >= 0) & (uniform < 1))
  component = np.floor(uniform * 4).astype(int)
  expected_z = mean[component] + np.exp(0.5 * logvar[component]) * z_noise
  decoded = apply({"params": params}, noise, method="decode_prior_sample")
  direct = apply({"params": params}, jnp.asarray(expected_z, jnp.float32), method="decode")
  np.testing.assert_allclose(decoded["logits"], direct["logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # Compile-heavy (float64 beside float32): the full suite only.
def test_the_component_densities_hold_for_narrow_posteriors_far_from_the_origin():
  """mixture_component_log_densities against float64 where trained posteriors make
  cancellation bite (means of scale 3 around 2, variances near e^-6, z drawn from the
  components): log p(z) to 1e-4 nats, the nearest component's log-density to 1e-4
  relative; batched over a leading axis as per example; its gradient is the broadcast
  formula's (1e-4 relative)."""
  rng = np.random.default_rng(0)
  num_components, latent_dim = 50, 20
  mean = 2 + 3 * rng.standard_normal((num_components, latent_dim))
  logvar = -6 + 0.5 * rng.standard_normal((num_components, latent_dim))
  pick = rng.integers(0, num_components, 64)
  z = mean[pick] + np.exp(0.5 * logvar[pick]) * rng.standard_normal((64, latent_dim))
  expected = -0.5 * np.sum((z[:, None] - mean) ** 2 / np.exp(logvar) + logvar
                           + np.log(2 * np.pi), axis=-1)
  peak = expected.max(axis=1)
  expected_log_prior = peak + np.log(np.exp(expected - peak[:, None]).sum(1)) - np.log(
      num_components)
  as32 = lambda a: jnp.asarray(a, jnp.float32)
  got = np.asarray(mixture_component_log_densities(as32(z), as32(mean), as32(logvar)))
  log_prior = np.asarray(losses.logmeanexp(jnp.asarray(got), axis=-1))
  np.testing.assert_allclose(log_prior, expected_log_prior, rtol=0, atol=1e-4)
  nearest = np.arange(64), pick
  np.testing.assert_allclose(got[nearest], expected[nearest], rtol=1e-4)
  batched = mixture_component_log_densities(as32(z).reshape(4, 16, latent_dim),
                                            as32(mean), as32(logvar))
  np.testing.assert_array_equal(np.asarray(batched).reshape(64, -1), got)
  total = lambda f: lambda m: jnp.sum(losses.logmeanexp(f(m), axis=-1))
  gradient = jax.grad(total(lambda m: mixture_component_log_densities(
      as32(z), m, as32(logvar))))(as32(mean))
  reference = jax.grad(total(lambda m: losses.diagonal_gaussian_log_density(
      as32(z)[:, None], m, as32(logvar))))(as32(mean))
  np.testing.assert_allclose(gradient, reference, rtol=1e-4,
                             atol=1e-4 * np.abs(reference).max())


def test_the_latent_diagnostics_give_the_layers_kl_and_each_units_activity():
  """A mixture prior has no KL per unit: the layer's KL is the mean of the examples'
  sampled KLs (1e-6), the activity is per unit, and the figure draws the activity."""
  model, params = small_model("vampprior", **{"model.vampprior.num_pseudo_inputs": 4})
  images = jax.random.uniform(jax.random.key(4), (20, 28, 28, 1))
  eps = jax.random.normal(jax.random.key(5), (20, 16, 3))
  layers = jax.jit(jax.vmap(lambda x, e: model.apply(
      {"params": params}, x, e, method=model.latent_layers)))(images, eps)
  result = evaluators.latent_diagnostics(layers)
  [layer] = result["latent_layers"]
  assert "kl_per_dim" not in layer and len(layer["activity"]) == 3
  np.testing.assert_allclose(layer["kl_nats"], np.mean(np.asarray(layers[0]["kl"], np.float64)),
                             rtol=1e-6)
  assert result["mutual_information_nats"] + result["marginal_kl_nats"] == pytest.approx(
      layer["kl_nats"])
  figures.close(visualize.latent_figure(result))


def test_the_shipped_config_is_valid():
  for arg in (None, "short"):
    config = shipped_config("vampprior", arg)
    config_schema.validate(config)
    assert config.model.family == "vampprior"


@pytest.mark.parametrize("overrides, message", [
    ({"model.family": "vampprior", "model.conditional": True},
     "config.model.family='vampprior' is unconditional"),
    ({"model.family": "vampprior", "model.stochastic_layers": 2},
     "config.model.family='vampprior' has one stochastic layer"),
    ({"model.family": "vampprior", "model.vampprior.num_pseudo_inputs": 0},
     "config.model.vampprior.num_pseudo_inputs=0 must be a positive integer."),
])
def test_what_it_cannot_take_is_refused_by_name(overrides, message):
  assert_refused(tiny_config(), overrides, message)


def test_more_pseudo_inputs_than_training_images_is_refused_before_anything_is_written(
    tmp_path, monkeypatch):
  monkeypatch.setattr(input_pipeline, "load_splits",
                      lambda data_config: synthetic_splits(num_train=400))
  config = tiny_config()
  config.model.family = "vampprior"
  config.model.vampprior.num_pseudo_inputs = 401
  with pytest.raises(ValueError, match=r"num_pseudo_inputs=401 exceeds the 400 training "
                                       r"images: .* use at most 400"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
