"""K runs trained as one vmapped program equal the same runs trained one by one."""

import re

import chex
import jax
import numpy as np
import pytest

from tests.helpers import run_script, synthetic_splits, tiny_config
from vae_jax import input_pipeline
from vae_jax import steps
from vae_jax import train
from vae_jax import workdir as workdir_lib

pytestmark = pytest.mark.slow  # Whole training runs.

# (seed, learning rate, KL weight, KL warm-up epochs, free bits): every vectorizable key
# varies somewhere, and run 0 keeps all of them at their defaults.
_POINTS = [(0, 1e-3, 1.0, 0.0, 0.0), (1, 3e-3, 0.5, 0.0, 0.0), (0, 1e-3, 2.0, 1.0, 0.0),
           (2, 1e-3, 1.0, 0.0, 0.5)]


def _config(seed, learning_rate, kl_weight, warmup, free_bits):
  config = tiny_config()
  config.seed = seed
  config.train.learning_rate = learning_rate
  config.loss.kl_weight = kl_weight
  config.loss.kl_warmup_epochs = warmup
  config.loss.free_bits = free_bits
  # 2 epochs of 25 steps and 3 more (a partial epoch), with dynamic binarization and
  # dropout on, so every per-run key (shuffle, binarization, dropout, noise) matters.
  config.train.num_steps = 53
  config.train.log_every_steps = 10
  config.train.steps_per_dispatch = 4
  config.data.binarization = "dynamic"
  config.model.dropout_rate = 0.1
  config.figures.final = False  # Figures are tested elsewhere; the test wants speed.
  config.figures.every_epochs = 1  # But the periodic ones, as every run writes them.
  return config


def _params(workdir):
  run = workdir_lib.load_run(str(workdir))
  return run.step, jax.tree.map(np.asarray, run.params)


def _history(workdir):
  return workdir_lib.read_history(str(workdir))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  patch = pytest.MonkeyPatch()
  patch.setattr(input_pipeline, "load_splits", lambda data_config: synthetic_splits())
  root = tmp_path_factory.mktemp("vectorized")
  configs = [_config(*point) for point in _POINTS]
  alone = [root / f"alone_{i}" for i in range(len(configs))]
  together = [root / f"together_{i}" for i in range(len(configs))]
  try:
    alone_summaries = [train.train_and_evaluate(c, str(w)) for c, w in zip(configs, alone)]
    together_summaries = train.train_group(
        configs, [str(w) for w in together])
  finally:
    patch.undo()
  return alone, together, alone_summaries, together_summaries


def test_each_model_equals_its_run_alone(trained):
  alone, together, _, _ = trained
  for alone_dir, together_dir in zip(alone, together):
    step_alone, params_alone = _params(alone_dir)
    step_together, params_together = _params(together_dir)
    assert step_alone == step_together == 53
    chex.assert_trees_all_close(params_together, params_alone, rtol=0, atol=1e-5)
  # The runs differ from each other: the comparison above is not vacuous.
  first, second = _params(alone[0])[1], _params(alone[1])[1]
  assert max(float(np.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(first), jax.tree.leaves(second))) > 1e-2


def test_each_run_logs_the_same_metrics_as_alone(trained):
  alone, together, alone_summaries, together_summaries = trained
  for alone_dir, together_dir in zip(alone, together):
    history_alone, history_together = _history(alone_dir), _history(together_dir)
    assert [h["step"] for h in history_alone] == [h["step"] for h in history_together] == [
        25, 50, 53]
    for entry_alone, entry_together in zip(history_alone, history_together):
      for name, value in entry_alone.items():
        np.testing.assert_allclose(entry_together[name], value, rtol=1e-5, atol=1e-4,
                                   err_msg=name)
  for summary_alone, summary_together in zip(alone_summaries, together_summaries):
    assert summary_alone.keys() == summary_together.keys()


def _files_and_tags(workdir):
  """The workdir's files (one name for the TensorBoard events file) and the tags in it."""
  names = set()
  for path in workdir.rglob("*"):
    relative = str(path.relative_to(workdir))
    if path.is_file() and not relative.startswith("checkpoints"):
      names.add("events" if path.name.startswith("events.out.tfevents") else relative)
  [events] = workdir.glob("events.out.tfevents.*")
  tags = set(re.findall(rb"(?:train|test|train_interval|figures)/[a-z_]+",
                        events.read_bytes()))
  return names, tags, b"_hparams_/session_start_info" in events.read_bytes()


def test_a_run_of_a_group_writes_the_files_of_a_run_alone(trained):
  """timings.json, hparams, train_interval/* scalars, periodic figures: all as alone."""
  alone, together, _, _ = trained
  names, tags, hparams = _files_and_tags(alone[0])
  assert {"config.json", "epoch_metrics.jsonl", "timings.json", "events"} <= names
  assert {b"train_interval/loss", b"train_interval/steps_per_sec",
          b"train_interval/learning_rate", b"train/neg_elbo_nats", b"train/learning_rate",
          b"test/neg_elbo_nats", b"figures/reconstructions", b"figures/prior_samples"} <= tags
  assert hparams
  for workdir in together:
    assert _files_and_tags(workdir) == (names, tags, hparams)


def test_warmup_and_free_bits_change_training(trained):
  """Run 2 (warm-up) and run 3 (free bits) differ from the same run without them."""
  alone, _, _, _ = trained
  history = [_history(w) for w in alone]
  # Warm-up: with the KL weight ramping from 0, the first epoch's KL is larger than
  # that of the run with the same seed and no warm-up (run 0) -- at KL weight 2.
  assert history[2][0]["train_kl_nats"] > history[0][0]["train_kl_nats"]
  # Free bits: the loss adds at least free_bits per latent dimension.
  latent_dim = tiny_config().model.latent_dim
  for entry in history[3]:
    assert entry["train_loss"] >= entry["train_reconstruction_nats"] + 0.5 * latent_dim - 1e-4


def test_configs_that_need_different_programs_are_refused():
  configs = [_config(*_POINTS[0]), _config(*_POINTS[1])]
  configs[1].model.latent_dim = 8
  with pytest.raises(ValueError, match="differ in model.latent_dim"):
    steps.check_vectorizable(configs)


def _train_straight_and_stopped(root):
  """Two runs as a group straight to step 53, and stopped at step 30 (mid-epoch, mid-
  dispatch) then run again to 53: run by run_script, under the emitters users get
  (tests/helpers.py says why)."""
  input_pipeline.load_splits = lambda data_config: synthetic_splits()
  configs = [_config(*point) for point in _POINTS[:2]]
  train.train_group(configs, [f"{root}/straight_{i}" for i in range(2)])
  for num_steps in (30, 53):
    for config in configs:
      config.train.num_steps = num_steps
    train.train_group(configs, [f"{root}/run_{i}" for i in range(2)])


def test_a_group_resumes_where_it_stopped(tmp_path):
  """Stopped at step 30, then run again to step 53: the same end as the group trained
  straight through, bit for bit."""
  run_script("from tests.vectorized_test import _train_straight_and_stopped\n"
             f"_train_straight_and_stopped({str(tmp_path)!r})", devices=1)
  for index in range(2):
    workdir, straight = tmp_path / f"run_{index}", tmp_path / f"straight_{index}"
    step, params = _params(workdir)
    assert step == 53
    chex.assert_trees_all_equal(params, _params(straight)[1])
    assert [h["step"] for h in _history(workdir)] == [25, 30, 50, 53]
