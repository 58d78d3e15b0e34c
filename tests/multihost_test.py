"""Multi-host: two local processes (jax.distributed on localhost, one CPU device each)
train the same parameters as one process, and only process 0 writes files."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.helpers import REPO_ROOT
from vae_jax import config_schema
from vae_jax import input_pipeline
from vae_jax import workdir as workdir_lib

pytestmark = pytest.mark.slow  # Several processes.

_FLAGS = ["--config=configs/mlp.py", "--config.model.hidden_dims=(32,)",
          "--config.model.latent_dim=4", "--config.train.batch_size=50",
          "--config.train.num_steps=60", "--config.train.log_every_steps=20",
          "--config.checkpoint_every_steps=40", "--config.figures.num_prior_samples=4",
          "--config.figures.num_scatter_points=100", "--config.figures.final=False"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(manual_dir):
  return dict(os.environ, VAE_JAX_MANUAL_DIR=manual_dir, JAX_PLATFORMS="cpu",
              XLA_FLAGS="--xla_force_host_platform_device_count=1")


def test_two_processes_train_the_parameters_of_one(tmp_path, mnist_manual_dir,
                                                   tfds_data_dir):
  # Prepare the data once here, so the processes only read it.
  data_config = config_schema.default_config().data
  data_config.manual_dir, data_config.tfds_data_dir = mnist_manual_dir, tfds_data_dir
  input_pipeline.load_splits(data_config)
  flags = _FLAGS + [f"--config.data.tfds_data_dir={tfds_data_dir}"]

  # The one-process run and the two processes at once (they wait on each other anyway).
  single, multi, port = tmp_path / "single", tmp_path / "multi", _free_port()
  commands = [[sys.executable, "-m", "vae_jax.main", *flags, f"--workdir={single}"]] + [
      [sys.executable, "-m", "vae_jax.main", *flags, f"--workdir={multi}", "--distributed",
       f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={index}"]
      for index in (0, 1)]
  processes = [subprocess.Popen(command, cwd=REPO_ROOT, env=_env(mnist_manual_dir),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for command in commands]
  outputs = [process.communicate(timeout=600) for process in processes]
  for process, (_, stderr) in zip(processes, outputs):
    assert process.returncode == 0, stderr[-5000:]
  outputs = outputs[1:]  # The two processes'.
  assert "JAX process 0 of 2" in outputs[0][1] and "JAX process 1 of 2" in outputs[1][1]
  # Both processes computed each epoch's evaluation; process 0 alone logged it to files.
  assert "test -ELBO" in outputs[1][1]
  assert len(list(multi.glob("events.out.tfevents.*"))) == 1

  single_run, multi_run = workdir_lib.load_run(str(single)), workdir_lib.load_run(str(multi))
  assert single_run.step == multi_run.step == 60
  # Each process took half of every global batch; only the summation order differs, and
  # Adam's normalized steps can turn that into ~1e-6 for a weight whose gradient is ~0.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5),
               jax.device_get(single_run.params), jax.device_get(multi_run.params))
  assert (multi / workdir_lib.HISTORY_FILE).read_text().count("\n") == 1
  for name in ("single", "multi"):
    history = workdir_lib.read_history(str(tmp_path / name))
    assert len(history) == 1
  np.testing.assert_allclose(workdir_lib.read_history(str(multi))[0]["test_neg_elbo_nats"],
                             workdir_lib.read_history(str(single))[0]["test_neg_elbo_nats"], rtol=1e-5)
