"""The jitted data-parallel train step: learning, determinism, no retrace, device-count invariance."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import MNIST_SHAPE, count_traces, fixed_batch_step, synthetic_splits, tiny_config
from vae_jax import input_pipeline
from vae_jax import models
from vae_jax import parallel
from vae_jax import progress
from vae_jax import steps
from vae_jax import train
from vae_jax import workdir as workdir_lib


def _fixed_batch(batch_size=16, seed=0):
  rng = np.random.default_rng(seed)
  # Blobs of ink on a blank page: learnable structure, like digits.
  images = (rng.uniform(size=(batch_size, 28, 28, 1)) > 0.8) * rng.integers(100, 256, (batch_size, 28, 28, 1))
  return {"image": jnp.asarray(images, jnp.uint8), "label": jnp.zeros(batch_size, jnp.int32)}


def _setup(config, seed=0):
  model = models.get_model(config.model, MNIST_SHAPE)
  mesh = parallel.make_mesh()
  state = parallel.replicate(steps.create_train_state(model, config, jax.random.key(seed)), mesh)
  return model, mesh, state


def test_the_cadence_stops_where_the_host_acts():
  """Epochs of 25 steps, logs every 10, checkpoints every 6, 60 steps, 4 per dispatch."""
  cadence = train.Cadence(steps_per_epoch=25, num_steps=60, log_every_steps=10,
                          checkpoint_every_steps=6, steps_per_dispatch=4,
                          figures_every_epochs=2, diagnostics_every_epochs=0,
                          nll_at_epochs=())
  step, stops = 0, []
  while step < cadence.num_steps:
    step += cadence.dispatch_size(step)
    if cadence.is_log_step(step) or cadence.is_save_step(step):
      stops.append(step)
  # Every multiple of 6 and 10, the epoch ends 25 and 50, and the end: nothing skipped.
  assert stops == [6, 10, 12, 18, 20, 24, 25, 30, 36, 40, 42, 48, 50, 54, 60]
  assert cadence.next_stop(25) == 30 and cadence.dispatch_size(25) == 4
  assert cadence.dispatch_size(27) == 1  # 27 + 4 would pass the stop at 30.
  assert [s for s in range(61) if cadence.is_epoch_end(s) and s] == [25, 50, 60]
  assert [s for s in range(61) if cadence.draws_figures(s)] == [50]  # Not at the end.
  assert not train.Cadence(25, 60, 10, 0, 4, 0, 0, ()).is_save_step(30)


def test_the_cadence_schedules_the_diagnostics_and_the_nll_before_the_end():
  """Epochs of 10 steps, 100 steps: diagnostics every 3 epochs and at the NLL epochs 2 and
  10; the end (epoch 10) has the final evaluation instead."""
  cadence = train.Cadence(steps_per_epoch=10, num_steps=100, log_every_steps=10,
                          checkpoint_every_steps=0, steps_per_dispatch=5,
                          figures_every_epochs=0, diagnostics_every_epochs=3,
                          nll_at_epochs=(2, 10))
  assert [s // 10 for s in range(101) if cadence.evaluates_nll(s)] == [2]
  assert [s // 10 for s in range(101) if cadence.runs_diagnostics(s)] == [2, 3, 6, 9]
  only_nll = train.Cadence(10, 100, 10, 0, 5, 0, 0, (4,))
  assert [s // 10 for s in range(101) if only_nll.runs_diagnostics(s)] == [4]


def test_all_finite_finds_a_nan_or_inf_in_any_leaf():
  tree = {"a": jnp.ones((3, 2)), "b": [jnp.zeros(4), jnp.arange(5.0)]}
  assert bool(steps.all_finite(tree))
  for bad in (jnp.nan, jnp.inf, -jnp.inf):
    assert not bool(steps.all_finite({**tree, "a": tree["a"].at[2, 1].set(bad)}))


def test_train_step_lowers_the_loss_on_a_fixed_batch():
  config = tiny_config()
  model, mesh, state = _setup(config)
  step = fixed_batch_step(model, config, mesh)
  batch, rng = _fixed_batch(), jax.random.key(1)
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch, rng)
    losses.append(float(metrics["loss"]))
  assert int(state.step) == 30
  assert np.all(np.isfinite(losses))
  # Averages of 5 steps, to see the trend through the sampling noise.
  assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), losses


def test_same_seed_gives_bitwise_identical_parameters_twice():
  config = tiny_config()

  def run():
    model, mesh, state = _setup(config, seed=3)
    step = fixed_batch_step(model, config, mesh)
    for index in range(5):
      state, _ = step(state, _fixed_batch(seed=index), jax.random.key(4))
    return jax.device_get(state.params)

  first, second = run(), run()
  chex.assert_trees_all_equal(first, second)


def test_different_steps_draw_different_noise():
  """The step's key is folded from state.step: the same parameters and batch at another
  step number give another loss."""
  config = tiny_config()
  model, mesh, state = _setup(config)
  step = fixed_batch_step(model, config, mesh)
  later = jax.tree.map(jnp.copy, state.replace(step=jnp.asarray(1, jnp.int32)))
  _, m0 = step(state, _fixed_batch(), jax.random.key(0))  # Donates `state`.
  _, m1 = step(later, _fixed_batch(), jax.random.key(0))
  assert float(m0["reconstruction_nats"]) != float(m1["reconstruction_nats"])


def test_train_steps_do_not_retrace_across_dispatches():
  config = tiny_config()
  model, mesh, state = _setup(config)
  program = steps.make_train_program(model, [config], mesh, steps_per_epoch=4)
  dataset = _fixed_batch(batch_size=64)
  epoch_indices = jnp.arange(64, dtype=jnp.int32).reshape(4, 16)
  with count_traces() as traces:
    for count in (1, 3, 1, 3, 3):
      state, metrics = program(state, dataset, epoch_indices, jax.random.key(0), count)
      assert metrics["loss"].shape == (count,)
  # One program per dispatch size.
  assert traces["train_program"] == 2, traces
  assert int(state.step) == 11


@pytest.mark.slow
@pytest.mark.parametrize("steps_per_dispatch", [4, 7])
def test_scanned_dispatches_give_the_parameters_of_single_steps(tmp_path, monkeypatch,
                                                                steps_per_dispatch):
  """Whole runs (epochs of 25 steps, logs every 10, checkpoints every 6) with several
  steps per dispatch end with the parameters and metrics of one step per dispatch."""
  monkeypatch.setattr(input_pipeline, "load_splits", lambda data_config: synthetic_splits())
  config = tiny_config()
  config.train.num_steps, config.train.num_epochs = 0, 2
  config.train.log_every_steps, config.checkpoint_every_steps = 10, 6
  config.data.binarization = "dynamic"
  config.model.dropout_rate = 0.1
  results = {}
  for count in (1, steps_per_dispatch):
    config.train.steps_per_dispatch = count
    workdir = str(tmp_path / str(count))
    results[count] = (train.train_and_evaluate(config, workdir),
                      jax.device_get(workdir_lib.load_run(workdir).params))
  assert results[1][0] == results[steps_per_dispatch][0]  # Epoch metrics, exactly.
  chex.assert_trees_all_equal(results[1][1], results[steps_per_dispatch][1])  # Bit for bit.


def test_phase_timer_counts_nested_phases_once(monkeypatch):
  # perf_counter at each call: start 0; epoch_eval 1 .. 10 with figures 3 .. 4 inside;
  # checkpoints 12 .. 20; finish at 25.
  clock = iter([0.0, 1.0, 3.0, 4.0, 10.0, 12.0, 20.0, 25.0])
  monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
  timer = progress.PhaseTimer(imports_seconds=5.0)
  with timer.phase("epoch_eval"):
    with timer.phase("figures"):
      pass
  with timer.phase("checkpoints"):
    pass
  seconds = timer.finish()
  assert seconds["figures"] == 1.0 and seconds["epoch_eval"] == 8.0
  assert seconds["checkpoints"] == 8.0
  assert seconds["train"] == 25.0 - 17.0  # The rest of the 25 s.
  assert seconds["total"] == 30.0


@pytest.mark.slow
def test_a_run_writes_its_time_by_phase(tmp_path, monkeypatch):
  monkeypatch.setattr(input_pipeline, "load_splits", lambda data_config: synthetic_splits())
  config = tiny_config()
  config.figures.final = True
  train.train_and_evaluate(config, str(tmp_path), imports_seconds=1.5)
  seconds = json.loads((tmp_path / "timings.json").read_text())
  assert set(seconds) == set(progress.PhaseTimer.PHASES) | {"total"}
  assert seconds["imports"] == 1.5
  for phase in ("data", "compile", "train", "epoch_eval", "final_eval", "figures",
                "checkpoints"):
    assert seconds[phase] > 0, phase
  np.testing.assert_allclose(sum(seconds[p] for p in progress.PhaseTimer.PHASES),
                             seconds["total"], rtol=1e-9)
