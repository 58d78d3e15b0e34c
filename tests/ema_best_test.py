"""The parameters' moving average, the best checkpoint, and choosing what to evaluate."""

import chex
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.helpers import (MNIST_SHAPE, fixed_batch_step, run_script, synthetic_splits,
                           tiny_config)
from vae_jax import checkpoint
from vae_jax import input_pipeline
from vae_jax import models
from vae_jax import parallel
from vae_jax import steps
from vae_jax import train
from vae_jax import workdir as workdir_lib


def _batch(seed=0, batch_size=16):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.integers(0, 256, (batch_size, 28, 28, 1)), jnp.uint8),
          "label": jnp.zeros(batch_size, jnp.int32)}


@pytest.mark.parametrize("decay", [0.0, 0.5])
def test_the_average_follows_its_recursion_and_equals_the_parameters_at_decay_0(decay):
  config = tiny_config()
  config.train.ema_decay = decay
  model = models.get_model(config.model, MNIST_SHAPE)
  mesh = parallel.make_mesh(jax.devices()[:1])
  state = steps.create_train_state(model, config, jax.random.key(0))
  if decay == 0:  # Off in a run (no average is kept); forced here to check the update.
    assert state.ema_params is None
    state = state.replace(ema_params=jax.tree.map(jnp.copy, state.params))
  state = parallel.replicate(state, mesh)
  step = fixed_batch_step(model, config, mesh)
  for index in range(3):
    previous = jax.device_get(state.ema_params)
    state, _ = step(state, _batch(index), jax.random.key(1))
    expected = jax.tree.map(lambda old, new: decay * old + (1 - decay) * new, previous,
                            jax.device_get(state.params))
    chex.assert_trees_all_close(jax.device_get(state.ema_params), expected, rtol=1e-6,
                                atol=1e-7)
  if decay == 0:
    chex.assert_trees_all_equal(jax.device_get(state.ema_params),
                                jax.device_get(state.params))


def _tiny_state():
  config = tiny_config()
  return steps.create_train_state(models.get_model(config.model, MNIST_SHAPE), config, jax.random.key(0))


def test_the_best_checkpoint_is_kept_beside_the_latest(tmp_path):
  checkpointer = checkpoint.Checkpointer(str(tmp_path), max_to_keep=2)
  state = _tiny_state()
  for step, validation in [(1, 5.0), (2, 3.0), (3, None), (4, 4.0), (5, 6.0), (6, 7.0)]:
    checkpointer.save(step, state.replace(step=jnp.asarray(step, jnp.int32)),
                      validation_neg_elbo_nats=validation)
  assert checkpointer.all_steps() == [2, 5, 6]  # The latest two and the lowest -ELBO.
  assert checkpointer.best_step() == 2
  restored, _ = checkpointer.restore(2, state)
  assert int(restored.step) == 2
  checkpointer.close()
  without = checkpoint.Checkpointer(str(tmp_path / "other"), max_to_keep=2)
  without.save(1, state)
  assert without.best_step() is None
  without.close()


def test_checkpoints_written_before_the_average_existed_still_load(tmp_path):
  """flax's plain TrainState, saved as vae_jax saved it before train.ema_decay existed."""
  state = _tiny_state()
  old = train_state.TrainState(step=jnp.asarray(5, jnp.int32), apply_fn=state.apply_fn,
                               params=jax.tree.map(lambda p: p + 1.0, state.params),
                               tx=state.tx, opt_state=state.opt_state)
  manager = ocp.CheckpointManager(str(tmp_path / "checkpoints"))
  manager.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave(old),
                                          progress=ocp.args.JsonSave({})))
  manager.wait_until_finished()
  manager.close()
  checkpointer = checkpoint.Checkpointer(str(tmp_path), max_to_keep=2)
  restored, _, step = checkpointer.restore_latest(state)
  checkpointer.close()
  assert step == 5 and int(restored.step) == 5 and restored.ema_params is None
  chex.assert_trees_all_equal(restored.params, old.params)


def _saved_run(tmp_path, ema_decay=0.0):
  """A workdir with a config and checkpoints of steps 3 and 5 (no validation -ELBO)."""
  config = tiny_config()
  config.train.ema_decay = ema_decay
  workdir_lib.write_config(str(tmp_path), config)
  checkpointer = checkpoint.Checkpointer(str(tmp_path), config.checkpoints_to_keep)
  state = steps.create_train_state(models.get_model(config.model, MNIST_SHAPE), config,
                                   steps.run_keys(config.seed)["init"])
  for step in (3, 5):
    checkpointer.save(step, state.replace(step=jnp.asarray(step, jnp.int32)))
  checkpointer.close()
  return str(tmp_path)


def test_bad_choices_of_checkpoint_or_weights_are_refused_saying_what_to_use(tmp_path):
  workdir = _saved_run(tmp_path)
  with pytest.raises(ValueError, match=r"--checkpoint=best: no checkpoint .* validation "
                                       r"-ELBO.*--checkpoint=latest or one of the saved "
                                       r"steps: 3, 5"):
    workdir_lib.load_run(workdir, "best")
  with pytest.raises(ValueError, match=r"--weights=ema: .* without a moving average .*"
                                       r"ema_decay=0\). Use --weights=raw"):
    workdir_lib.load_run(workdir, weights="ema")
  with pytest.raises(ValueError, match=r"--checkpoint='7': use latest, best or a step "
                                       r"number; .* steps 3, 5"):
    workdir_lib.load_run(workdir, "7")
  assert workdir_lib.load_run(workdir, "3").step == 3
  assert workdir_lib.load_run(workdir).step == 5


def _splits_with_validation():
  splits = synthetic_splits(num_train=400, num_test=100)
  test = splits["test"]
  return {**splits, "validation": input_pipeline.Split(test.images[:50], test.labels[:50])}


def _train_straight_and_resumed(root):
  """4 epochs straight, and 2 then 2 more resumed, with the average and the best kept:
  run by run_script, under the emitters users get (tests/helpers.py says why)."""
  input_pipeline.load_splits = lambda data_config: _splits_with_validation()
  config = tiny_config()
  config.train.num_steps, config.train.num_epochs = 0, 4
  config.train.ema_decay = 0.9
  config.train.learning_rate = 0.3  # Large: the validation -ELBO rises after epoch 2.
  config.checkpoints_to_keep = 1
  train.train_and_evaluate(config, f"{root}/straight")
  for epochs in (2, 4):
    config.train.num_epochs = epochs
    train.train_and_evaluate(config, f"{root}/resumed")


@pytest.mark.slow  # Three whole (tiny) runs, in a fresh process.
def test_resume_with_the_average_and_the_best_checkpoint_is_bitwise(tmp_path):
  run_script("from tests.ema_best_test import _train_straight_and_resumed\n"
             f"_train_straight_and_resumed({str(tmp_path)!r})", devices=1)
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  for weights in ("raw", "ema"):
    a, b = (jax.device_get(workdir_lib.load_run(w, weights=weights).params)
            for w in (straight, resumed))
    chex.assert_trees_all_equal(a, b)
  history = workdir_lib.read_history(straight)
  best = min(history, key=lambda entry: entry["validation_neg_elbo_nats"])["step"]
  assert best < history[-1]["step"]  # Not the latest: kept beside it (1 to keep).
  for workdir in (straight, resumed):
    assert workdir_lib.load_run(workdir, "best").step == best
  raw, ema = (workdir_lib.load_run(straight, weights=w).params for w in ("raw", "ema"))
  assert not np.array_equal(jax.tree.leaves(raw)[0], jax.tree.leaves(ema)[0])
