"""Faults a long run meets: a write that fails (a full disk), too little space, and
SIGKILL at the moments that matter, each followed by a rerun that ends bit for bit like
an uninterrupted run. The kill moments are reached deterministically: a child process
patches the call at that moment to kill itself, no timer."""

import errno
import json
import logging
import os
import signal
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from tests.helpers import MNIST_SHAPE, REPO_ROOT, synthetic_splits, tiny_config
from vae_jax import checkpoint
from vae_jax import config_schema
from vae_jax import input_pipeline
from vae_jax import models
from vae_jax import steps
from vae_jax import train
from vae_jax import workdir as workdir_lib


def _no_space(*args, **kwargs):
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_failed_write_names_the_file_and_the_os_error_and_keeps_the_old_file(
    tmp_path, monkeypatch):
  path = str(tmp_path / "eval.json")
  workdir_lib.write_atomically(path, "old")
  monkeypatch.setattr(workdir_lib.os, "replace", _no_space)
  with pytest.raises(checkpoint.WriteError) as raised:
    workdir_lib.write_atomically(path, "new")
  assert str(raised.value) == (f"Could not write eval.json to {path}: No space left on "
                               "device (errno 28).")
  assert (tmp_path / "eval.json").read_text() == "old"
  assert not (tmp_path / "eval.json.tmp").exists()


def _small_state(seed=0):
  config = tiny_config()
  model = models.get_model(config.model, MNIST_SHAPE)
  return steps.create_train_state(model, config, jax.random.key(seed))


def test_a_failed_checkpoint_names_its_step_and_leaves_no_temporary_folder(tmp_path):
  checkpointer = checkpoint.Checkpointer(str(tmp_path), max_to_keep=3)
  state = _small_state()
  checkpointer.save(1, state)
  real_save = checkpointer._manager.save  # pylint: disable=protected-access

  def full_disk(step, **kwargs):
    # What orbax leaves and raises when tensorstore's write fails for lack of space.
    os.makedirs(tmp_path / "checkpoints" / f"{step}.orbax-checkpoint-tmp-123" / "state")
    raise ValueError('RESOURCE_EXHAUSTED: Error writing "params/0" in OCDBT database: '
                     "Failed to write 4096 bytes to file 17: No space left on device "
                     "[os_error_code='28']")

  checkpointer._manager.save = full_disk  # pylint: disable=protected-access
  with pytest.raises(checkpoint.WriteError) as raised:
    checkpointer.save(2, state)
  assert str(raised.value) == (f"Could not write the checkpoint of step 2 to "
                               f"{tmp_path}/checkpoints/2: No space left on device (errno 28).")
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]
  assert checkpoint.saved_steps(str(tmp_path)) == [1]
  checkpointer._manager.save = real_save  # pylint: disable=protected-access
  checkpointer.save(2, state)  # Room again: the same step saves.
  assert checkpoint.saved_steps(str(tmp_path)) == [1, 2]
  checkpointer.close()


def test_too_little_space_is_warned_once_with_the_numbers(tmp_path, monkeypatch, caplog):
  state = _small_state()
  checkpointer = checkpoint.Checkpointer(str(tmp_path), max_to_keep=3)
  monkeypatch.setattr(checkpoint.shutil, "disk_usage",
                      lambda path: type("Usage", (), {"free": 1000})())
  with caplog.at_level(logging.WARNING):
    for step in (1, 2, 3):
      checkpointer.save(step, state)
  warnings = [r.getMessage() for r in caplog.records if "free on the filesystem" in r.getMessage()]
  needed = checkpoint.state_bytes(state) / 1e6
  assert warnings == [
      f"Only 0.0 MB free on the filesystem of {tmp_path}/checkpoints; the next checkpoint "
      f"needs about {needed:.1f} MB (the train state's arrays). Free some space or move the "
      "run: if a save fails, the run stops, naming the last good checkpoint."]
  checkpointer.close()


def _chain_config():
  """Two epochs of 25 steps on the synthetic images, a checkpoint every 10 steps, the test
  NLL after epoch 1 and at the end: every kind of write a run makes."""
  config = tiny_config()
  config.train.num_steps = 50
  config.train.log_every_steps = 5
  config.checkpoint_every_steps = 10
  config.checkpoints_to_keep = 10
  config.eval.nll_at_epochs = (1,)
  config.eval.nll_samples_during_training = 4
  config.eval.num_importance_samples = 4
  config.figures.final = False
  return config


@pytest.mark.slow
def test_a_failed_save_stops_the_run_naming_the_last_checkpoint_and_a_rerun_ends_exactly(
    tmp_path, monkeypatch):
  monkeypatch.setattr(input_pipeline, "load_splits", lambda data_config: synthetic_splits())
  config = _chain_config()
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
  real_save = checkpoint.Checkpointer.save

  def full_at_20(self, step, *args, **kwargs):
    if step == 20:
      raise checkpoint.WriteError(f"the checkpoint of step {step}", self.step_path(step),
                                  "No space left on device (errno 28)")
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpoint.Checkpointer, "save", full_at_20)
  workdir = str(tmp_path / "full")
  with pytest.raises(train.WriteFailedError) as raised:
    train.train_and_evaluate(config, workdir)
  assert str(raised.value) == (
      f"Could not write the checkpoint of step 20 to {workdir}/checkpoints/20: No space left "
      "on device (errno 28). Nothing already written was lost. The last good checkpoint is "
      f"step 10 ({workdir}/checkpoints/10): the run resumes from it when the same command "
      "is run again, once the cause is fixed.")
  monkeypatch.setattr(checkpoint.Checkpointer, "save", real_save)
  assert train.train_and_evaluate(config, workdir) == straight
  chex.assert_trees_all_equal(workdir_lib.load_run(workdir).params,
                              workdir_lib.load_run(str(tmp_path / "straight")).params)


# A child process: trains a group of runs on the synthetic images (configs and workdirs
# from the command line) and kills itself with SIGKILL at the named moment.
_CHILD = r"""
import json, os, signal, sys
from tests.helpers import synthetic_splits
from vae_jax import checkpoint, config_schema, evaluators, input_pipeline, train

input_pipeline.load_splits = lambda data_config: synthetic_splits()
moment, runs = sys.argv[1], json.loads(sys.argv[2])

def die():
  os.kill(os.getpid(), signal.SIGKILL)

if moment == "checkpoint_commit":  # Step 20 written to its temporary folder, not renamed.
  from orbax.checkpoint._src.path import atomicity
  finalize = atomicity.AtomicRenameTemporaryPath.finalize
  async def finalize_or_die(self):
    if self._final_path.name == "20":
      die()
    return await finalize(self)
  atomicity.AtomicRenameTemporaryPath.finalize = finalize_or_die
elif moment == "between_runs_saves":  # The first run has saved step 30, the second not.
  save = checkpoint.Checkpointer.save
  def save_or_die(self, step, *args, **kwargs):
    if step == 30 and self.workdir.endswith("run1"):
      die()
    return save(self, step, *args, **kwargs)
  checkpoint.Checkpointer.save = save_or_die
elif moment in ("history_replace", "eval_replace"):  # The new file written, not in place.
  replace = os.replace
  def replace_or_die(source, target):
    if (moment == "eval_replace" and target.endswith("eval.json")
        or moment == "history_replace" and target.endswith("epoch_metrics.jsonl")
        and open(source).read().count("\n") == 2):  # The second epoch's line.
      die()
    return replace(source, target)
  os.replace = replace_or_die
elif moment == "final_evaluation":
  def final_result(*args, **kwargs):
    die()
  evaluators.final_result = final_result
train.train_group([config_schema.load_json(path) for path, _ in runs],
                  [workdir for _, workdir in runs])
"""


def _start_child(moment, runs):
  return subprocess.Popen([sys.executable, "-c", _CHILD, moment, json.dumps(runs)],
                          cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


@pytest.mark.slow
def test_a_group_killed_at_each_moment_that_matters_ends_like_a_straight_one(tmp_path):
  """A vectorized group of two runs, killed in turn while a checkpoint is committed,
  between the two runs' saves, while epoch_metrics.jsonl is replaced, during the final
  evaluation and while eval.json is replaced, each time resumed by the same command: it
  ends with the straight group's parameters, histories and evaluations, bit for bit."""
  runs = {}
  for kind in ("straight", "killed"):
    runs[kind] = []
    for index in range(2):
      config = _chain_config()
      config.seed, config.train.learning_rate = index, (1e-3, 3e-3)[index]
      path = tmp_path / f"{kind}_config{index}.json"
      path.write_text(config.to_json())
      runs[kind].append((str(path), str(tmp_path / kind / f"run{index}")))
  straight = None
  killed_dir = tmp_path / "killed" / "run0"
  for moment in ("checkpoint_commit", "between_runs_saves", "history_replace",
                 "final_evaluation", "eval_replace"):
    child = _start_child(moment, runs["killed"])
    _, stderr = child.communicate(timeout=600)
    if straight is None:  # Beside the other killed ones, its programs now in the cache.
      straight = _start_child("none", runs["straight"])
    assert child.returncode == -signal.SIGKILL, (moment, stderr[-5000:])
    saved = checkpoint.saved_steps(str(killed_dir))
    if moment == "checkpoint_commit":  # Killed between the temporary folder and its rename.
      assert saved == [10] and any(name.startswith("20.orbax-checkpoint-tmp")
                                   for name in os.listdir(killed_dir / "checkpoints"))
    elif moment == "between_runs_saves":
      assert saved[-1] == 30 and checkpoint.saved_steps(str(tmp_path / "killed" / "run1"))[-1] == 25
    elif moment == "history_replace":  # Epoch 2's line written beside, not in place.
      assert (killed_dir / "epoch_metrics.jsonl.tmp").read_text().count("\n") == 2
      assert saved[-1] == 40
    elif moment == "final_evaluation":
      assert saved[-1] == 50 and not (killed_dir / "eval.json").exists()
    else:
      assert (killed_dir / "eval.json.tmp").exists() and not (killed_dir / "eval.json").exists()
  child = _start_child("none", runs["killed"])
  for process in (child, straight):
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-5000:]

  for index in range(2):
    killed, alone = (str(tmp_path / kind / f"run{index}") for kind in ("killed", "straight"))
    chex.assert_trees_all_equal(workdir_lib.load_run(killed).params,
                                workdir_lib.load_run(alone).params)
    assert workdir_lib.read_history(killed) == workdir_lib.read_history(alone)
    evaluations = [{key: value for key, value in workdir_lib.read_eval(run).items()
                    if key != "nll_seconds"} for run in (killed, alone)]
    assert evaluations[0] == evaluations[1]
    assert "nll_during_training" in evaluations[0]
