"""Multi-host: two local processes (jax.distributed on localhost, one CPU device each)
train the same parameters as one process, and only process 0 writes files; when one is
killed the other stops at once, saying so, and both resume to the same end."""

import os
import socket
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from tests.helpers import REPO_ROOT, shipped_config
from vae_jax import input_pipeline
from vae_jax import train
from vae_jax import workdir as workdir_lib

pytestmark = pytest.mark.slow  # Several processes.

_OVERRIDES = {"model.hidden_dims": (32,), "model.latent_dim": 4, "train.batch_size": 50,
              "train.num_steps": 60, "train.log_every_steps": 20,
              "checkpoint_every_steps": 40, "figures.num_prior_samples": 4,
              "figures.num_scatter_points": 100, "figures.final": False}
_FLAGS = ["--config=configs/mlp.py"] + [f"--config.{key}={value}"
                                       for key, value in _OVERRIDES.items()]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(manual_dir):
  return dict(os.environ, VAE_JAX_MANUAL_DIR=manual_dir, JAX_PLATFORMS="cpu",
              XLA_FLAGS="--xla_force_host_platform_device_count=1")


# Process 1 kills itself when it dispatches step 50 (the last checkpoint is step 40).
_KILLED_AT_50 = r"""
import os, runpy, signal, sys
from vae_jax import train
dispatch = train.Group.dispatch
def dispatch_or_die(self, count):
  if self.step == 50 and "--process_id=1" in sys.argv:
    os.kill(os.getpid(), signal.SIGKILL)
  return dispatch(self, count)
train.Group.dispatch = dispatch_or_die
sys.argv = ["vae_jax.main"] + sys.argv[1:]
runpy.run_module("vae_jax.main", run_name="__main__", alter_sys=True)
"""


def test_two_processes_train_the_parameters_of_one_and_survive_a_killed_one(
    tmp_path, mnist_manual_dir, tfds_data_dir):
  # Prepare the data once here, so the processes only read it.
  config = shipped_config("mlp")
  config.update_from_flattened_dict(_OVERRIDES)
  config.data.manual_dir, config.data.tfds_data_dir = mnist_manual_dir, tfds_data_dir
  input_pipeline.load_splits(config.data)
  flags = _FLAGS + [f"--config.data.tfds_data_dir={tfds_data_dir}"]

  def start(workdir, process_id, port, script=None):
    distributed = ["--distributed", f"--coordinator_address=localhost:{port}",
                   "--num_processes=2", f"--process_id={process_id}"]
    return subprocess.Popen(
        [sys.executable, *(["-c", script] if script else ["-m", "vae_jax.main"]), *flags,
         f"--workdir={workdir}", *distributed], cwd=REPO_ROOT, env=_env(mnist_manual_dir),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

  # A pair, and the same run in this process meanwhile; then, once the pair's programs
  # are in the test's XLA cache (conftest.py), a pair whose process 1 is killed at step 50.
  single, multi, killed = tmp_path / "single", tmp_path / "multi", tmp_path / "killed"
  port = _free_port()
  processes = [start(multi, index, port) for index in (0, 1)]
  train.train_and_evaluate(config, str(single))
  outputs = [process.communicate(timeout=600) for process in processes]
  port = _free_port()
  processes += [start(killed, index, port, _KILLED_AT_50) for index in (0, 1)]
  outputs += [process.communicate(timeout=600) for process in processes[2:]]
  for process, (_, stderr) in zip(processes[:2], outputs[:2]):
    assert process.returncode == 0, stderr[-5000:]
  assert "JAX process 0 of 2" in outputs[0][1] and "JAX process 1 of 2" in outputs[1][1]
  # Both processes computed each epoch's evaluation; process 0 alone logged it to files.
  assert "test -ELBO" in outputs[1][1]
  assert len(list(multi.glob("events.out.tfevents.*"))) == 1

  single_run, multi_run = workdir_lib.load_run(str(single)), workdir_lib.load_run(str(multi))
  assert single_run.step == multi_run.step == 60
  # Each process took half of every global batch; only the summation order (and this
  # process's compile flags, conftest.py) differ, and Adam's normalized steps can turn
  # that into ~1e-6 for a weight whose gradient is ~0 (measured: 4.4e-7 at most).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5),
               jax.device_get(single_run.params), jax.device_get(multi_run.params))
  assert (multi / workdir_lib.HISTORY_FILE).read_text().count("\n") == 1
  for name in ("single", "multi"):
    history = workdir_lib.read_history(str(tmp_path / name))
    assert len(history) == 1
  np.testing.assert_allclose(workdir_lib.read_history(str(multi))[0]["test_neg_elbo_nats"],
                             workdir_lib.read_history(str(single))[0]["test_neg_elbo_nats"], rtol=1e-5)

  # The killed pair: process 0 stopped at once (its next collective failed), with one
  # message and no traceback, naming the checkpoint both resume from.
  assert processes[3].returncode == -9
  assert processes[2].returncode == 1, outputs[2][1][-5000:]
  message = outputs[2][1].strip().splitlines()[-1]
  assert message.startswith("Process 0 of 2: a collective with the other processes failed"), message
  assert (f"The last good checkpoint is step 40 ({killed}/checkpoints/40): the run resumes "
          "from it when every process is started again with its same command.") in message
  assert "Traceback" not in outputs[2][1]
  port = _free_port()
  processes = [start(killed, index, port) for index in (0, 1)]
  for process in processes:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-5000:]
    assert "Resuming at step 40 of 60" in stderr
  # The same end as the pair that was never stopped, bit for bit.
  chex.assert_trees_all_equal(workdir_lib.load_run(str(killed)).params, multi_run.params)
  assert workdir_lib.read_history(str(killed)) == workdir_lib.read_history(str(multi))
