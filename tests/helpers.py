"""What tests import: the repository root, the offline MNIST folder, a small config for
fast runs and helpers to run models (tests/conftest.py holds the fixtures and hooks)."""

import collections
import contextlib
import os
import pathlib
import re

import jax
import numpy as np

from vae_jax import config_schema

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def manual_dir() -> str | None:
  """$VAE_JAX_MANUAL_DIR, else ../shared/data beside the checkout when it exists."""
  candidates = [os.environ.get("VAE_JAX_MANUAL_DIR"), str(REPO_ROOT.parent / "shared" / "data")]
  for candidate in candidates:
    if candidate and os.path.isdir(os.path.join(candidate, "mnist")):
      return candidate
  return None


def data_config(name: str, manual_dir_path: str, tfds_data_dir: str,
                validation_size: int = 5000):
  """The default config.data for TFDS dataset `name` read from the offline files."""
  data = config_schema.default_config().data
  data.name, data.manual_dir, data.tfds_data_dir = name, manual_dir_path, tfds_data_dir
  data.validation_size = validation_size
  return data


# The MNIST family's images, which most tests model (the loop reads a run's shape from its
# data; tests that build a model directly pass this).
MNIST_SHAPE = (28, 28, 1)


def tiny_config(**data_overrides):
  """A small MLP VAE that trains in seconds."""
  config = config_schema.default_config()
  config.model.hidden_dims = (32,)
  config.model.latent_dim = 4
  config.train.batch_size = 16
  config.train.num_steps = 8
  config.train.log_every_steps = 4
  config.eval.batch_size = 500
  config.figures.num_reconstructions = 4
  config.figures.num_prior_samples = 4
  config.figures.every_epochs = 0
  config.figures.manifold_size = 5
  config.figures.num_scatter_points = 200
  config.figures.samples_per_class = 3
  config.figures.num_interpolations = 2
  config.figures.interpolation_steps = 4
  config.figures.num_denoising_examples = 3
  for key, value in data_overrides.items():
    config.data[key] = value
  return config


def synthetic_splits(num_train=400, num_test=100):
  """Noise images in place of a dataset, for loop tests that need no TFDS: pass as
  monkeypatch.setattr(input_pipeline, "load_splits", lambda data_config: ...)."""
  from vae_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (num_train + num_test, 28, 28, 1)).astype(np.uint8)
  labels = rng.integers(0, 10, num_train + num_test).astype(np.int32)
  return {"train": input_pipeline.Split(images[:num_train], labels[:num_train], 10),
          "validation": input_pipeline.Split(images[:0], labels[:0], 10),
          "test": input_pipeline.Split(images[num_train:], labels[num_train:], 10)}


def fixed_batch_step(model, config, mesh):
  """step(state, batch, rng) -> (state, metrics): one training step on a given batch,
  through the codebase's one program builder (the batch as a one-step epoch)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vae_jax import steps  # pylint: disable=g-import-not-at-top
  program = steps.make_train_program(model, [config], mesh, steps_per_epoch=1)

  def step(state, batch, rng):
    epoch_indices = jnp.arange(batch["image"].shape[0], dtype=jnp.int32)[None]
    state, metrics = program(state, batch, epoch_indices, rng, 1)
    return state, jax.tree.map(lambda value: value[0], metrics)

  return step


def perturbed(params, scale=0.1, seed=1):
  """params + scale * N(0, 1) noise: away from the initialization's symmetries (zero
  biases, a decoder that ignores z), as a trained model would be."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [leaf + scale * jax.random.normal(key, leaf.shape)
                                   for leaf, key in zip(leaves, keys)])


# How the tests' own process compiles (tests/conftest.py says why) and the scripts it runs
# in a fresh process (run_script): without LLVM's optimization passes.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0"
# The tests' own process also compiles with XLA's older CPU fusion emitters (conftest.py
# says why); the scripts do not (run_script says why).
OLDER_EMITTERS_FLAG = "--xla_cpu_use_fusion_emitters=false"


def run_script(script: str, devices: int) -> str:
  """Runs a Python script in a fresh process with `devices` fake CPU devices (XLA_FLAGS
  must be set before JAX is imported) from the repository root, compiled with
  FAST_COMPILE_FLAGS and XLA's default emitters; asserts it succeeded and returns its
  stdout. With the older emitters, two programs that split the same steps differently (a
  resumed run's dispatches) can differ in the last bit, so the checks that resuming is
  bitwise exact train here, under the emitters users get."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE_FLAGS}")
  result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stdout + result.stderr[-5000:]
  return result.stdout


def small_model(family: str, **overrides):
  """(model, perturbed params) of a small model of `family`: tiny_config with 3 latent
  units and the flattened `overrides`."""
  from vae_jax import models, steps  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  config.model.family = family
  config.model.latent_dim = 3
  config.update_from_flattened_dict(overrides)
  model = models.get_model(config.model, MNIST_SHAPE)
  return model, perturbed(steps.create_train_state(model, config, jax.random.key(0)).params)


def assert_refused(config, overrides: dict, message: str):
  """config with `overrides` fails config_schema.validate with `message` in its text."""
  import pytest  # pylint: disable=g-import-not-at-top
  config.update_from_flattened_dict(overrides)
  with pytest.raises(ValueError, match=re.escape(message)):
    config_schema.validate(config)


def jit_apply(model):
  """model.apply as one jitted program (method by name, e.g. method="encode"): a test that
  applies a model eagerly compiles every op on its own, several times slower."""
  return jax.jit(model.apply, static_argnames=("method", "train"))


def shipped_config(name: str, arg=None):
  """configs/<name>.py's get_config(arg), loaded by path as config_flags does."""
  return config_schema.load_shipped(name, arg)


_TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
_trace_counts = None  # The open count_traces block's counter, if any.


def _on_event(event, duration, **kwargs):
  del duration
  if event == _TRACE_EVENT and _trace_counts is not None:
    _trace_counts[kwargs.get("fun_name", "")] += 1


@contextlib.contextmanager
def count_traces():
  """Counts how often each function is traced (each trace compiles a new program) inside
  the block, by the function's name, through jax.monitoring's public events."""
  global _trace_counts
  if not _listening:
    jax.monitoring.register_event_duration_secs_listener(_on_event)
    _listening.append(True)
  _trace_counts = collections.Counter()
  try:
    yield _trace_counts
  finally:
    _trace_counts = None


_listening = []
