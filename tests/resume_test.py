"""Runs that survive: SIGKILL and SIGTERM then resume bit for bit, a corrupt latest
checkpoint, a changed config, non-finite updates, and the progress output."""

import functools
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import REPO_ROOT, tiny_config
from vae_jax import input_pipeline
from vae_jax import progress
from vae_jax import steps
from vae_jax import train
from vae_jax import workdir as workdir_lib

# About 2.7 epochs of 1100 steps: checkpoints land mid-epoch, so a resume must also bring
# back the epoch's metrics so far.
_NUM_STEPS, _EVERY = 3000, 250
_FLAGS = [
    "--config=configs/mlp.py", "--config.model.hidden_dims=(32,)",
    "--config.model.latent_dim=4", "--config.train.batch_size=50",
    f"--config.train.num_steps={_NUM_STEPS}", "--config.train.log_every_steps=50",
    f"--config.checkpoint_every_steps={_EVERY}", "--config.checkpoints_to_keep=3",
    "--config.train.progress_every_seconds=0.5", "--config.figures.num_prior_samples=4",
    "--config.figures.num_scatter_points=100", "--config.figures.final=False",
]


def _command(workdir, tfds_data_dir):
  return [sys.executable, "-m", "vae_jax.main", *_FLAGS, f"--workdir={workdir}",
          f"--config.data.tfds_data_dir={tfds_data_dir}"]


def _env(manual_dir):
  return dict(os.environ, VAE_JAX_MANUAL_DIR=manual_dir)


def _run(workdir, manual_dir, tfds_data_dir):
  result = subprocess.run(_command(workdir, tfds_data_dir), cwd=REPO_ROOT,
                          env=_env(manual_dir), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-5000:]
  return result


def _saved_steps(workdir):
  directory = workdir / "checkpoints"
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) \
      if directory.is_dir() else []


def _start_and_signal(workdir, manual_dir, tfds_data_dir, signum, after_step):
  """Starts a run and sends it `signum` once a checkpoint at or past `after_step` exists."""
  log_path = workdir.parent / f"{workdir.name}.log"
  with open(log_path, "w") as log:
    process = subprocess.Popen(_command(workdir, tfds_data_dir), cwd=REPO_ROOT,
                               env=_env(manual_dir), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while not any(step >= after_step for step in _saved_steps(workdir)):
      assert process.poll() is None, log_path.read_text()[-5000:]
      assert time.time() < deadline
      time.sleep(0.02)
    process.send_signal(signum)
    returncode = process.wait(timeout=600)
  return returncode, log_path.read_text()


def _final(workdir):
  run = workdir_lib.load_run(str(workdir))
  history = (workdir / workdir_lib.HISTORY_FILE).read_text()
  return run.step, jax.device_get(run.params), history


def _assert_same_run(workdir, uninterrupted):
  step, params, history = _final(workdir)
  ref_step, ref_params, ref_history = uninterrupted()
  assert step == ref_step == _NUM_STEPS
  chex.assert_trees_all_equal(params, ref_params)  # Bit for bit.
  assert history == ref_history  # Every logged epoch metric, as text.


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, mnist_manual_dir, tfds_data_dir):
  """The run straight through, started in the background so that it overlaps the runs
  the tests stop and resume (on the second core); call it for (step, params, history)."""
  workdir = tmp_path_factory.mktemp("uninterrupted") / "run"
  log_path = workdir.parent / "run.log"
  # Prepared here first: two processes preparing one fresh TFDS folder at once collide.
  input_pipeline.load_splits(tiny_config(manual_dir=mnist_manual_dir,
                                         tfds_data_dir=tfds_data_dir).data)
  with open(log_path, "w") as log:
    process = subprocess.Popen(_command(workdir, tfds_data_dir), cwd=REPO_ROOT,
                               env=_env(mnist_manual_dir), stdout=log, stderr=subprocess.STDOUT)

  @functools.cache
  def result():
    returncode = process.wait(timeout=600)
    log = log_path.read_text()
    assert returncode == 0, log[-5000:]
    assert re.search(r"progress: step \d+/3000 \(\d+\.\d%\), epoch [\d.]+/[\d.]+, [\d.]+ "
                     r"steps/s, \d+ examples/s, .* left", log), log[-3000:]
    return _final(workdir)

  yield result
  if process.poll() is None:  # A test failed before it needed the run.
    process.kill()
    process.wait()


@pytest.fixture(scope="module")
def killed(tmp_path_factory, mnist_manual_dir, tfds_data_dir):
  """A run SIGKILLed once its third checkpoint exists; tests resume copies of it."""
  workdir = tmp_path_factory.mktemp("killed") / "run"
  returncode, _ = _start_and_signal(workdir, mnist_manual_dir, tfds_data_dir,
                                    signal.SIGKILL, after_step=3 * _EVERY)
  assert returncode == -signal.SIGKILL
  assert _saved_steps(workdir)[-1] < _NUM_STEPS
  return workdir


def _copy(workdir, tmp_path):
  shutil.copytree(workdir, tmp_path / "run", symlinks=True)
  return tmp_path / "run"


@pytest.mark.slow
def test_sigkill_then_the_same_command_gives_the_uninterrupted_run(
    tmp_path, mnist_manual_dir, tfds_data_dir, uninterrupted, killed):
  workdir = _copy(killed, tmp_path)
  result = _run(workdir, mnist_manual_dir, tfds_data_dir)
  assert "Resuming at step" in result.stderr
  _assert_same_run(workdir, uninterrupted)


@pytest.mark.slow
def test_sigterm_saves_where_it_stopped_then_resumes_exactly(
    tmp_path, mnist_manual_dir, tfds_data_dir, uninterrupted):
  workdir = tmp_path / "run"
  returncode, log = _start_and_signal(workdir, mnist_manual_dir, tfds_data_dir,
                                      signal.SIGTERM, after_step=2 * _EVERY)
  assert returncode == 128 + signal.SIGTERM, log[-3000:]
  match = re.search(r"Received SIGTERM: saved a checkpoint of step (\d+) of 3000 to (\S+)\. "
                    r"Run the same command again to resume\.", log)
  assert match, log[-3000:]
  stopped_at = int(match.group(1))
  assert _saved_steps(workdir)[-1] == stopped_at and os.path.isdir(match.group(2))
  assert "Traceback" not in log
  result = _run(workdir, mnist_manual_dir, tfds_data_dir)
  assert f"Resuming at step {stopped_at} of 3000" in result.stderr
  _assert_same_run(workdir, uninterrupted)


@pytest.mark.slow
def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(
    tmp_path, mnist_manual_dir, tfds_data_dir, uninterrupted, killed):
  workdir = _copy(killed, tmp_path)
  steps = _saved_steps(workdir)
  latest, previous = steps[-1], steps[-2]
  # Truncate the largest file of the latest checkpoint's state to half its size.
  files = [os.path.join(root, name) for root, _, names in
           os.walk(workdir / "checkpoints" / str(latest) / "state") for name in names]
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 2)
  result = _run(workdir, mnist_manual_dir, tfds_data_dir)
  assert re.search(rf"The checkpoint of step {latest} at \S+checkpoints/{latest} failed to "
                   r"load", result.stderr), result.stderr[-5000:]
  assert f"Resuming from the previous good checkpoint, step {previous}." in result.stderr
  assert f"Resuming at step {previous} of 3000" in result.stderr
  assert (workdir / "corrupt_checkpoints" / str(latest)).is_dir()  # Kept, not deleted.
  _assert_same_run(workdir, uninterrupted)


@pytest.mark.slow
def test_a_changed_config_is_refused_with_the_differing_keys(tmp_path, mnist_manual_dir,
                                                             tfds_data_dir):
  config = tiny_config(manual_dir=mnist_manual_dir, tfds_data_dir=tfds_data_dir)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  config.model.latent_dim = 8
  config.train.learning_rate = 3e-4
  config.train.log_every_steps = 2  # Free to change: not part of the comparison.
  with pytest.raises(ValueError) as error:
    train.train_and_evaluate(config, workdir)
  message = str(error.value)
  assert "model.latent_dim: 4 -> 8" in message
  assert "train.learning_rate: 0.001 -> 0.0003" in message
  assert "log_every_steps" not in message
  assert "--config.resume_mismatch=allow" in message
  config.model.latent_dim = 4
  config.resume_mismatch = "allow"
  train.train_and_evaluate(config, workdir)  # Resumes with the new learning rate.
  saved = json.loads((tmp_path / "run" / "config.json").read_text())
  assert saved["train"]["learning_rate"] == 3e-4


def _marked_splits(marker_index):
  """400 training and 100 test images of noise; train image `marker_index` is all 77s."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (500, 28, 28, 1)).astype(np.uint8)
  images[images == 77] = 78
  images[marker_index] = 77
  labels = np.zeros(500, np.int32)
  empty = input_pipeline.Split(images[:0], labels[:0], 10)
  return {"train": input_pipeline.Split(images[:400], labels[:400], 10), "validation": empty,
          "test": input_pipeline.Split(images[400:], labels[400:], 10)}


@pytest.fixture
def nan_on_marked_image(monkeypatch):
  """The model input of the marked image is NaN: a bad example in the data."""
  marker_index = 123
  original = input_pipeline.to_model_input

  def to_model_input(image_uint8, binarization, rng):
    image = original(image_uint8, binarization, rng)
    return jnp.where(jnp.all(image_uint8 == 77), jnp.nan, image)

  monkeypatch.setattr(input_pipeline, "to_model_input", to_model_input)
  monkeypatch.setattr(input_pipeline, "load_splits",
                      lambda data_config: _marked_splits(marker_index))
  return marker_index


def _steps_with_example(config, example, num_epochs):
  """The 1-based steps whose batch holds training example `example`."""
  keys = steps.run_keys(config.seed)
  found = []
  for epoch in range(num_epochs):
    indices = np.asarray(input_pipeline.epoch_batch_indices(keys["shuffle"], epoch, 400,
                                                            config.train.batch_size))
    found += [epoch * indices.shape[0] + row + 1 for row in np.nonzero(indices == example)[0]]
  return found


@pytest.mark.slow
def test_a_nan_batch_stops_the_run_naming_the_step(tmp_path, nan_on_marked_image):
  config = tiny_config()
  config.train.num_steps, config.train.num_epochs = 0, 2  # 25 steps per epoch.
  bad_step = _steps_with_example(config, nan_on_marked_image, 2)[0]
  with pytest.raises(train.NonFiniteLossError,
                     match=rf"Non-finite training metrics at step {bad_step}: .*'loss': nan"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  # No checkpoint at or after the bad step: the last one left is from before it.
  assert all(step < bad_step for step in _saved_steps(tmp_path / "run"))
  # What was logged before the stop reached TensorBoard (the writers flush on the error).
  [events] = (tmp_path / "run").glob("events.out.tfevents.*")
  assert b"_hparams_/session_start_info" in events.read_bytes()


@pytest.mark.slow
def test_skipping_non_finite_updates_completes_and_counts_them(tmp_path, nan_on_marked_image):
  config = tiny_config()
  config.train.num_steps, config.train.num_epochs = 0, 2
  config.train.skip_nonfinite_updates = True
  bad_steps = _steps_with_example(config, nan_on_marked_image, 2)
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  history = workdir_lib.read_history(str(tmp_path / "run"))
  assert [h["train_skipped_updates"] for h in history] == [1, 1], (history, bad_steps)
  assert np.isfinite(summary["test_neg_elbo_nats"]) and np.isfinite(summary["train_neg_elbo_nats"])
  params = workdir_lib.load_run(str(tmp_path / "run")).params
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(params))


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_reports_rate_epoch_and_time_left_at_its_period(monkeypatch):
  lines = []
  monkeypatch.setattr(progress.logging, "info", lambda fmt, *args: lines.append(fmt % args))
  now = [0.0]
  terminal = _Terminal()
  reporter = progress.Progress(total_steps=100, steps_per_epoch=40, batch_size=20,
                               every_seconds=10, stream=terminal, clock=lambda: now[0])
  for step in range(1, 101):
    now[0] += 0.5  # 2 steps/s
    if step % 40 == 0:  # An evaluation of 3 s at each epoch's end: not in the rate.
      now[0] += 3.0
      reporter.exclude(3.0)
    reporter.update(step)
  # Every 10 s of 56 s, evaluations included: 5 lines, each with the training rate.
  assert len(lines) == 5, lines
  assert lines[0] == ("progress: step 20/100 (20.0%), epoch 0.50/2.5, 2.0 steps/s, "
                      "40 examples/s, 40 s left")
  assert all(" 2.0 steps/s, 40 examples/s" in line for line in lines), lines
  assert lines[-1].startswith("progress: step 100/100 (100.0%)")
  bar = terminal.getvalue()
  # Redrawn at most every 0.2 s: here at every step (0.5 s apart); a newline at the end.
  assert bar.count("\r") == 100 and bar.endswith("\n")
  assert "[" + "#" * 30 + "]" in bar


def test_no_bar_when_the_output_is_not_a_terminal():
  stream = io.StringIO()
  reporter = progress.Progress(total_steps=10, steps_per_epoch=5, batch_size=1,
                               every_seconds=0, stream=stream)
  for step in range(1, 11):
    reporter.update(step)
  assert stream.getvalue() == ""
