"""The model contract (vae_jax/models/contract.py), checked for every family the same way.

Every check runs on a small model of each example that a registered family gives
(models.FAMILIES); what a family cannot meet is skipped with its reason in one line.
"""

import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import (MNIST_SHAPE, assert_refused, fixed_batch_step, perturbed,
                           run_script, tiny_config)
from vae_jax import checkpoint
from vae_jax import figures
from vae_jax import input_pipeline
from vae_jax import losses
from vae_jax import models
from vae_jax import parallel
from vae_jax import steps
from vae_jax import visualize
from vae_jax.models import contract


def _small_config(family: str, overrides: dict):
  """A small model of `family`: the test config with 3 latent units (2 for z2), narrow
  conv layers, and the family's example overrides."""
  config = tiny_config()
  config.model.family = family
  config.model.latent_dim = 3
  config.model.conv.encoder_features = config.model.conv.decoder_features = (4, 4, 4)
  config.model.top_layer.hidden_dims, config.model.top_layer.latent_dim = (8,), 2
  config.update_from_flattened_dict(overrides)
  return config


# Every registered family's examples (their Registration.examples): registering a family
# is enough to get it checked here.
FAMILIES = {name: _small_config(family, overrides)
            for family, registration in models.FAMILIES.items()
            for name, overrides in registration.examples.items()}


# Each registered family's first example. The fast subset (-m "not slow") checks these;
# the full suite every example. The checks that compile training programs (sharding,
# vectorizing) and draw figures run on these alone: what they check does not vary within
# a family.
FIRST_EXAMPLES = {name: FAMILIES[name] for name in
                  (next(iter(registration.examples))
                   for registration in models.FAMILIES.values())}


@pytest.fixture(scope="module", params=[
    name if name in FIRST_EXAMPLES else pytest.param(name, marks=pytest.mark.slow)
    for name in FAMILIES])
def family(request):
  config = FAMILIES[request.param]
  model = models.get_model(config.model, MNIST_SHAPE)
  params = steps.create_train_state(model, config, jax.random.key(0)).params
  params = perturbed(params)  # Away from the initialization's symmetries.
  return request.param, config, model, params


def _apply(model, params, images, eps, labels):
  """The model on each image with its eps, as one jitted program (vmapped)."""
  return jax.jit(jax.vmap(lambda x, e, y: model.apply({"params": params}, x, e, y)))(
      images, eps, labels)


def test_the_family_meets_the_contract(family):
  _, _, model, _ = family
  assert isinstance(model, contract.Family)
  assert model.noise_dim >= model.latent_dim > 0
  assert isinstance(model.gaussian_posterior, bool)
  assert isinstance(model.standard_normal_prior, bool)
  assert model.mutual_information_omitted is None or model.mutual_information_omitted


@pytest.mark.parametrize("batch_size, num_samples", [(1, 1), (7, 1), (7, 5)])
def test_outputs_have_their_shapes_and_a_batch_equals_its_examples(family, batch_size,
                                                                   num_samples):
  _, _, model, params = family
  images = jax.random.uniform(jax.random.key(2), (batch_size, 28, 28, 1))
  eps = jax.random.normal(jax.random.key(3), (batch_size, num_samples, model.noise_dim))
  labels = jnp.arange(batch_size, dtype=jnp.int32) % 10
  outputs = _apply(model, params, images, eps, labels)
  assert isinstance(outputs, contract.Outputs)
  assert outputs.log_prior.shape == outputs.log_posterior.shape == (batch_size, num_samples)
  per_example = (num_samples, 28, 28, 1)
  for value in jax.tree.leaves(outputs.decoded):  # A fixed variance has no sample axis.
    assert value.shape[0] == batch_size
    assert np.broadcast_shapes(value.shape[1:], per_example) == per_example, value.shape
  if outputs.kl is not None:
    assert outputs.kl.shape == (batch_size,)
  assert outputs.kl_groups.shape == outputs.kl_group_units.shape
  assert outputs.kl_groups.shape[0] == batch_size
  # Each example alone gives the batch's numbers (1e-5).
  for index in (0, batch_size - 1):
    alone = jax.jit(lambda x, e, y: model.apply({"params": params}, x, e, y))(
        images[index], eps[index], labels[index])
    np.testing.assert_allclose(alone.log_prior, outputs.log_prior[index], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(alone.log_posterior, outputs.log_posterior[index], rtol=1e-5,
                               atol=1e-5)


def test_the_same_key_gives_the_same_bits(family):
  _, config, model, params = family
  terms = jax.jit(lambda key: losses.elbo_terms(
      model, {"params": params}, jnp.full((28, 28, 1), 0.3), 1, key,
      likelihood=config.model.likelihood, num_samples=3))
  first, second = terms(jax.random.key(4)), terms(jax.random.key(4))
  for name in first:
    np.testing.assert_array_equal(first[name], second[name])
  assert float(terms(jax.random.key(5))["neg_elbo_nats"]) != float(first["neg_elbo_nats"])


def _one_unit_per_layer(config):
  """The family's config with one latent unit per stochastic layer."""
  config = config.copy_and_resolve_references()
  config.model.latent_dim = config.model.top_layer.latent_dim = 1
  return config


@pytest.mark.slow  # A grid of 20,000 (or 360,000) latent points per family.
def test_the_densities_integrate_to_one(family):
  """On the family with one latent unit per layer: the integrals of q(z|x) and of p(z)
  over z, numerically (the trapezoid rule over z(eps) for eps on a grid, times the
  Jacobian |dz/deps|, which a triangular q makes the product of each unit's
  derivative), are 1 to 1e-3."""
  name, config, _, _ = family
  config = _one_unit_per_layer(config)
  model = models.get_model(config.model, MNIST_SHAPE)
  params = steps.create_train_state(model, config, jax.random.key(0)).params
  image, label = jnp.full((28, 28, 1), 0.3), jnp.asarray(3, jnp.int32)
  width = 30.0 if model.noise_dim == 1 else 12.0  # In eps: the prior is reached too.
  points = 20_001 if model.noise_dim == 1 else 601
  axis = np.linspace(-width, width, points)
  grid = np.stack(np.meshgrid(*[axis] * model.noise_dim, indexing="ij"), -1)
  eps = jnp.asarray(grid.reshape(-1, model.noise_dim), jnp.float32)

  def outputs_and_jacobian(e):
    outputs = model.apply({"params": params}, image, e[None], label)
    jacobian = jax.jacfwd(lambda ee: model.apply({"params": params}, image, ee[None],
                                                 label).z[0])(e)
    return outputs.log_prior[0], outputs.log_posterior[0], jnp.abs(jnp.linalg.det(jacobian))

  log_prior, log_posterior, jacobian = jax.jit(jax.vmap(outputs_and_jacobian))(eps)
  shape = (points,) * model.noise_dim

  def integral(log_density):
    values = (np.exp(np.asarray(log_density, np.float64)) * np.asarray(jacobian, np.float64))
    values = values.reshape(shape)
    for _ in range(model.noise_dim):
      values = np.trapezoid(values, axis, axis=0)
    return values

  np.testing.assert_allclose(integral(log_posterior), 1.0, atol=1e-3, err_msg=name)
  np.testing.assert_allclose(integral(log_prior), 1.0, atol=1e-3, err_msg=name)


@pytest.mark.slow  # 20,000 posterior samples per family.
def test_the_closed_form_kl_is_the_samples_mean_and_the_groups_split_the_kl(family):
  """Where the family gives a closed-form KL, it equals the mean of log q - log p over
  20,000 posterior samples (4 standard errors); the free-bits groups sum to the KL."""
  _, _, model, params = family
  num = 20_000
  eps = jax.random.normal(jax.random.key(6), (1, num, model.noise_dim))
  outputs = _apply(model, params, jnp.full((1, 28, 28, 1), 0.3), eps,
                   jnp.asarray([3], jnp.int32))
  sampled = np.asarray(outputs.log_posterior[0] - outputs.log_prior[0], np.float64)
  if outputs.kl is not None:
    assert abs(float(outputs.kl[0]) - sampled.mean()) < 4 * sampled.std() / np.sqrt(num)
    np.testing.assert_allclose(float(jnp.sum(outputs.kl_groups[0])), float(outputs.kl[0]),
                               rtol=1e-5)
  else:
    np.testing.assert_allclose(float(jnp.sum(outputs.kl_groups[0])), sampled.mean(),
                               rtol=1e-4)


def test_prior_samples_decode_for_every_label(family):
  _, config, model, params = family
  labels = jnp.arange(4, dtype=jnp.int32)
  decoded = jax.jit(lambda key: model.apply({"params": params}, key, 4, labels,
                                            method=model.sample_prior))(jax.random.key(7))
  images = losses.mean_image(config.model.likelihood, decoded)
  assert images.shape == (4, 28, 28, 1)
  assert bool(jnp.all((images >= 0) & (images <= 1)))
  # The same noise decoded through decode_prior_sample gives the same samples.
  noise = model.prior_noise(jax.random.key(7), 4)
  again = jax.jit(lambda n: model.apply({"params": params}, n, labels,
                                        method=model.decode_prior_sample))(noise)
  for value, other in zip(jax.tree.leaves(decoded), jax.tree.leaves(again)):
    # Two programs: the random normals may round differently in the last bit.
    np.testing.assert_allclose(value, other, rtol=1e-5, atol=1e-6)
  # posterior_mean lives in decode's space.
  point = jax.jit(lambda x: model.apply({"params": params}, x, labels[:1],
                                        method=model.posterior_mean))(
                                            jnp.full((1, 28, 28, 1), 0.3))
  assert point.shape == (1, model.latent_dim)


def test_a_family_the_registry_does_not_know_is_refused_by_name():
  assert_refused(tiny_config(), {"model.family": "flow"},
                 f"config.model.family='flow' is not one of "
                 f"{', '.join(map(repr, models.FAMILIES))}")


def test_a_checkpoint_round_trips(family, tmp_path):
  """The train state (parameters and Adam's moments) saved and restored, bit for bit."""
  _, config, model, params = family
  state = steps.create_train_state(model, config, jax.random.key(0)).replace(params=params)
  checkpointer = checkpoint.Checkpointer(str(tmp_path), max_to_keep=1)
  checkpointer.save(3, state)
  blank = steps.create_train_state(model, config, jax.random.key(9))
  restored, _ = checkpointer.restore(3, blank)
  checkpointer.close()
  chex.assert_trees_all_equal(restored.params, state.params)
  chex.assert_trees_all_equal(restored.opt_state, state.opt_state)


@pytest.mark.slow  # Draws every figure of three models with matplotlib.
def test_every_figure_draws():
  """visualize.make_figures gives each family's figures (its first example's; the
  variants of the 'vae' family are drawn in visualize_test.py), each a non-blank image."""
  for name, config in FIRST_EXAMPLES.items():
    _draw_every_figure(name, config)


def _draw_every_figure(family_name, config):
  model = models.get_model(config.model, MNIST_SHAPE)
  params = perturbed(steps.create_train_state(model, config, jax.random.key(0)).params)
  rng = np.random.default_rng(0)
  split = input_pipeline.Split(rng.integers(0, 256, (300, 28, 28, 1), dtype=np.uint8),
                               rng.integers(0, 10, 300).astype(np.int32))
  named = visualize.make_figures(model, params, config, split, jax.random.key(1))
  assert {"reconstructions", "interpolations", "denoising"} <= set(named)
  assert ("class_grid" if model.conditional else "prior_samples") in named
  for name, figure in named.items():
    pixels = figures.to_rgb_array(figure)
    figures.close(figure)
    assert pixels.std() > 1, (family_name, name)


def test_the_elbo_is_below_iwae_k_below_iwae_10k_on_average(family):
  """On a tiny model trained (100 ELBO steps, the loop's step program) on 20 binary
  images, from the same 1000 samples per image: the mean over images of the ELBO (the
  mean log weight), of IWAE-10 (the mean over 100 disjoint groups) and of IWAE-100 (over
  10 groups) increase, each step by more than 3 standard errors of the paired difference
  over images; with a normalized q and p the bounds tighten as k grows."""
  _, config, model, _ = family
  images = (jax.random.uniform(jax.random.key(8), (20, 28, 28, 1)) > 0.5).astype(jnp.float32)
  labels = jnp.arange(20, dtype=jnp.int32) % 10
  mesh = parallel.make_mesh(jax.devices()[:1])
  state = parallel.replicate(steps.create_train_state(model, config, jax.random.key(0)), mesh)
  step = fixed_batch_step(model, config, mesh)
  batch = {"image": (images * 255).astype(jnp.uint8), "label": labels}
  first = None
  for index in range(100):
    state, metrics = step(state, batch, jax.random.key(index))
    first = first if first is not None else float(metrics["neg_elbo_nats"])
  assert float(metrics["neg_elbo_nats"]) < first  # It trained.
  params = state.params
  eps = jax.random.normal(jax.random.key(9), (20, 1000, model.noise_dim))
  log_weights = np.asarray(jax.jit(jax.vmap(lambda x, e, y: losses.log_importance_weights(
      model, {"params": params}, x, y, e, likelihood=config.model.likelihood)))(
          images, eps, labels), np.float64)

  def bound(k):  # Per image: the mean of the IWAE-k bounds of 1000 / k disjoint groups.
    groups = log_weights.reshape(20, -1, k)
    peak = groups.max(axis=-1, keepdims=True)
    return (peak[..., 0] + np.log(np.mean(np.exp(groups - peak), axis=-1))).mean(axis=-1)

  for lower, upper in ((bound(1), bound(10)), (bound(10), bound(100))):
    difference = upper - lower
    assert difference.mean() > 3 * difference.std(ddof=1) / np.sqrt(20), difference


# One subprocess with 8 (fake CPU) devices, XLA_FLAGS set before JAX is imported: for each
# family, one training step of a group of two runs (seeds 0 and 1) on 8 devices equals
# each run alone on 1 device (1e-5): the family runs sharded, and vectorized as a group.
_DEVICES_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from tests.conformance_test import FIRST_EXAMPLES
    from tests.helpers import MNIST_SHAPE
    from tests.train_test import _fixed_batch
    from vae_jax import models, parallel, steps
    assert jax.device_count() == 8, jax.devices()
    batch = _fixed_batch(batch_size=16)
    batch["label"] = jnp.arange(16, dtype=jnp.int32) % 10
    indices = jnp.arange(16, dtype=jnp.int32)[None]
    one, eight = parallel.make_mesh(jax.devices()[:1]), parallel.make_mesh(jax.devices())
    for name, config in FIRST_EXAMPLES.items():
      configs = [config.copy_and_resolve_references() for _ in range(2)]
      configs[1].seed = 1
      model = models.get_model(config.model, MNIST_SHAPE)
      states = [steps.create_train_state(model, c, jax.random.key(c.seed)) for c in configs]
      keys = jax.random.split(jax.random.key(7), 2)
      group = steps.make_train_program(model, configs, eight, steps_per_epoch=1)(
          parallel.replicate(steps.stack_states(states), eight), batch,
          jnp.stack([indices] * 2), keys, 1)
      alone = steps.make_train_program(model, configs[:1], one, steps_per_epoch=1)
      for index in range(2):
        state, metrics = alone(parallel.replicate(states[index], one), batch, indices,
                               keys[index], 1)
        # The group's parameters have the run axis first, its metrics after the steps'.
        pairs = [(got[index], want) for got, want in zip(
            jax.tree.leaves(group[0].params), jax.tree.leaves(state.params))] + [
                (got[:, index], want) for got, want in zip(
                    jax.tree.leaves(group[1]), jax.tree.leaves(metrics))]
        for got, want in pairs:
          np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)
      print("a group on 8 devices equals each run alone on 1:", name)
""")


@pytest.mark.slow  # A subprocess that compiles two training programs per family.
def test_a_group_on_8_devices_equals_each_run_alone_on_1():
  stdout = run_script(_DEVICES_SCRIPT, devices=8)
  assert len(FIRST_EXAMPLES) == len(models.FAMILIES)
  for name in FIRST_EXAMPLES:
    assert f"a group on 8 devices equals each run alone on 1: {name}\n" in stdout, name
