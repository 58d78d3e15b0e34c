"""The evaluators' ownership rules and two of the latent diagnostics' estimates.

A group builds its evaluators once and each run of it calls them with its own eval.*
settings; each run logs its own learning rate; the activity of a sampled posterior mean is
unbiased; a conditional two-layer model's KL is not split into I(x; z) + marginal KL.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from tests.helpers import MNIST_SHAPE, count_traces, synthetic_splits, tiny_config
from tests.linear_models import LinearDecoder, LinearGaussian
from vae_jax import evaluators
from vae_jax import input_pipeline
from vae_jax import models
from vae_jax import steps
from vae_jax import train
from vae_jax import workdir as workdir_lib


def _group_configs():
  """Two runs that may share a program but differ in their rate and their eval.*."""
  configs = []
  for seed, learning_rate in ((0, 1e-3), (1, 3e-3)):
    config = tiny_config()
    config.seed = seed
    config.train.learning_rate = learning_rate
    config.train.num_steps = 50  # 2 epochs of the 400 synthetic images in batches of 16.
    config.train.log_every_steps = 5
    config.eval.diagnostics_every_epochs = 1
    config.eval.num_importance_samples = 3
    config.figures.final = False
    configs.append(config)
  configs[1].eval.num_importance_samples = 0
  configs[1].eval.diagnostics_examples = 0
  configs[1].figures.final = True
  return configs


@pytest.mark.slow  # Trains a group of two runs.
def test_a_group_compiles_each_evaluator_once_and_each_run_keeps_its_own_settings(
    tmp_path, monkeypatch):
  monkeypatch.setattr(input_pipeline, "load_splits", lambda data_config: synthetic_splits())
  configs = _group_configs()
  workdirs = [str(tmp_path / f"run{i}") for i in range(2)]
  with count_traces() as traces:
    summaries = train.train_group(configs, workdirs)
  # Per-epoch and final evaluations of both runs, each program traced (= compiled) once.
  assert traces["elbo_batch"] == 1 and traces["latent_batch"] == 1, traces
  assert traces["nll_batch"] == 1, traces  # Run 0's final NLL only.

  first, second = (json.loads((tmp_path / f"run{i}" / "eval.json").read_text())
                   for i in range(2))
  assert first["num_importance_samples"] == 3 and "nll_nats" in first
  assert second["num_importance_samples"] == 0 and "nll_nats" not in second
  assert "test_nll_nats" in summaries[0] and "test_nll_nats" not in summaries[1]
  history = [[json.loads(line) for line in (tmp_path / f"run{i}" / "epoch_metrics.jsonl")
              .read_text().splitlines()] for i in range(2)]
  assert "test_active_units" in history[0][0]  # Epoch 1 of 2: diagnostics every epoch.
  assert not any("test_active_units" in entry for entry in history[1])  # Its examples: 0.
  # figures.final: off for the first run, on for the second.
  assert not (tmp_path / "run0" / "figures" / "reconstructions.png").exists()
  assert (tmp_path / "run1" / "figures" / "reconstructions.png").exists()

  # Each run's TensorBoard logs its own learning rate.
  for config, workdir in zip(configs, workdirs):
    events = event_accumulator.EventAccumulator(workdir, size_guidance={"tensors": 0})
    events.Reload()
    for tag in ("train_interval/learning_rate", "train/learning_rate"):
      logged = [float(tensor_util.make_ndarray(event.tensor_proto))
                for event in events.Tensors(tag)]
      assert logged and np.allclose(logged, config.train.learning_rate, rtol=1e-6), (
          tag, logged)


def test_a_group_config_has_only_the_shared_keys():
  configs = _group_configs()
  shared = steps.shared_config(configs)
  assert shared.model.latent_dim == configs[0].model.latent_dim
  assert shared.train.batch_size == configs[0].train.batch_size
  assert shared.eval.diagnostics_every_epochs == 1  # A cadence key: shared.
  for key in ("seed", "learning_rate", "batch_size", "final"):
    node = {"seed": shared, "learning_rate": shared.train, "batch_size": shared.eval,
            "final": shared.figures}[key]
    with pytest.raises((AttributeError, KeyError)):
      getattr(node, key)


def _linear_two_layer(data_dim: int, slope: float, conditional: bool = False):
  """q(z1|x) = N(x, I) on a (D, 1, 1) 'image' (z1 has D units), q(z2|z1) = N(slope z1,
  I): E_q[z2|x] = slope x, so Var_x(E_q[z2_u|x]) = slope^2 Var_x(x_u)."""
  model = models.TwoLayerVAE(
      bottom_encoder=LinearGaussian(data_dim, data_dim, flatten_image=True),
      top_encoder=LinearGaussian(data_dim, data_dim),
      top_decoder=LinearGaussian(data_dim, data_dim),
      decoder=LinearDecoder(data_dim, data_dim),
      head=models.GaussianHead(variance="fixed"), num_classes=10 if conditional else 0)
  identity = np.eye(data_dim)
  zeros = np.zeros(data_dim)
  params = {
      "bottom_encoder": {"a": identity, "c": zeros, "logvar": zeros},
      "top_encoder": {"a": slope * identity, "c": zeros, "logvar": zeros},
      "top_decoder": {"a": identity, "c": zeros, "logvar": zeros},
      "decoder": {"w": identity, "b": zeros},
  }
  return model, jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), params)


def _latent_layers(model, params, xs, labels=None):
  def one(x, index, label):
    eps = jax.random.normal(jax.random.key(index),
                            (evaluators.LATENT_SAMPLES_PER_EXAMPLE, model.noise_dim))
    return model.apply({"params": params}, x.reshape(-1, 1, 1), eps, label,
                       method=model.latent_layers)
  labels = jnp.zeros(len(xs), jnp.int32) if labels is None else labels
  return jax.jit(jax.vmap(one))(jnp.asarray(xs, jnp.float32), jnp.arange(len(xs)), labels)


def test_the_activity_of_a_sampled_posterior_mean_matches_its_closed_form():
  # E_q[z2|x] is estimated from S = 16 samples of z1 ~ N(x, I): each estimate carries
  # variance slope^2 / S, which inflates Var_x by 6% here (slope^2 = 0.25 against
  # 0.25 / 16) unless subtracted. The closed form is slope^2 times the variance of the
  # exact means x_u over the same 4000 examples, so only the noise's estimate remains
  # (~1% at 4000 examples); tolerance 5%.
  data_dim, slope = 3, 0.5
  model, params = _linear_two_layer(data_dim, slope)
  xs = np.random.default_rng(0).normal(size=(4000, data_dim))
  result = evaluators.latent_diagnostics(_latent_layers(model, params, xs))
  z2 = result["latent_layers"][1]
  closed_form = slope ** 2 * xs.var(axis=0)
  np.testing.assert_allclose(z2["activity"], closed_form, rtol=0.05)
  # z1's posterior mean is exact (no samples): its activity is Var_x(x_u) itself.
  np.testing.assert_allclose(result["latent_layers"][0]["activity"], xs.var(axis=0),
                             rtol=1e-5)


def test_a_conditional_two_layer_model_reports_no_kl_split_and_says_why():
  model, params = _linear_two_layer(3, 0.5, conditional=True)
  xs = np.random.default_rng(0).normal(size=(200, 3))
  labels = jnp.asarray(np.arange(200) % 10, jnp.int32)
  result = evaluators.latent_diagnostics(_latent_layers(model, params, xs, labels),
                                         model.mutual_information_omitted)
  assert "mutual_information_nats" not in result and "marginal_kl_nats" not in result
  assert "label" in result["mutual_information_omitted"]
  assert "no split into I(x; z)" in evaluators.format_latent_diagnostics(result)
  # Without a label the split holds (z2 depends on x only through z1).
  unconditional, _ = _linear_two_layer(3, 0.5)
  assert unconditional.mutual_information_omitted is None
  assert models.get_model(tiny_config().model, MNIST_SHAPE).mutual_information_omitted is None


@pytest.mark.parametrize("change, expected", [(0.5, "fell by 0.50"), (-0.5, "rose by 0.50"),
                                              (0.05, None)])
def test_the_nll_warning_says_which_way_the_estimate_moved(change, expected):
  result = {"num_importance_samples": 1000,
            "nll_by_num_samples": [{"k": 100, "nll_nats": 90.0 + change},
                                   {"k": 1000, "nll_nats": 90.0}]}
  warnings = evaluators.nll_warnings(result)
  if expected is None:
    assert warnings == []
  else:
    assert len(warnings) == 1 and expected in warnings[0], warnings


def test_summary_numbers_are_the_evaluators_names():
  result = {"neg_elbo_nats": 1.0, "kl_nats": 2.0, "active_units": 3, "nll_nats": 4.0,
            "latent_layers": [{"layer": 1, "active_units": 2, "kl_nats": 1.5},
                              {"layer": 2, "active_units": 1, "kl_nats": 0.5}],
            "split": "test"}
  assert evaluators.summary_numbers(result) == {
      "neg_elbo_nats": 1.0, "kl_nats": 2.0, "active_units": 3, "nll_nats": 4.0,
      "active_units_z1": 2, "kl_nats_z1": 1.5, "active_units_z2": 1, "kl_nats_z2": 0.5}


def test_eval_json_merges_the_same_parameters_and_keeps_each_split_apart(tmp_path):
  workdir = str(tmp_path)
  trained = {"split": "test", "step": 50, "weights": "raw", "neg_elbo_nats": 100.0,
             "nll_nats": 95.0, "nll_during_training": [{"epoch": 1, "nll_nats": 99.0}]}
  workdir_lib.write_eval(workdir, trained)
  # Another evaluation of the same parameters keeps what it does not recompute.
  workdir_lib.write_eval(workdir, {"split": "test", "step": 50, "weights": "raw",
                                   "neg_elbo_nats": 100.0, "sample_quality": {"fd": 3.0}})
  assert workdir_lib.read_eval(workdir) == {**trained, "sample_quality": {"fd": 3.0}}
  # Another split writes its own file.
  workdir_lib.write_eval(workdir, {"split": "validation", "step": 50, "weights": "raw",
                                   "neg_elbo_nats": 101.0})
  assert workdir_lib.read_eval(workdir)["neg_elbo_nats"] == 100.0
  assert workdir_lib.read_eval(workdir, "validation")["neg_elbo_nats"] == 101.0
  # Other parameters (a later step, or the moving average) replace the file.
  later = {"split": "test", "step": 80, "weights": "raw", "neg_elbo_nats": 98.0}
  workdir_lib.write_eval(workdir, later)
  assert workdir_lib.read_eval(workdir) == later
