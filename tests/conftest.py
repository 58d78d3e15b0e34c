"""Shared fixtures and pytest hooks: the offline TFDS source, the XLA compilation
cache and flags. The helpers that tests import are in tests/helpers.py."""

import os
import subprocess
import sys

import jax
import pytest

from tests.helpers import REPO_ROOT, manual_dir

# One XLA compilation cache for the test runs, this process's and its subprocesses' (they
# inherit the environment): many tests build the same tiny programs, a cache hit loads the
# very executable a compile would give, and XLA keys each entry by the program, JAX's
# version and the flags, so a stale entry is never used. It persists between runs, which
# speeds up the edit-test loop; $VAE_JAX_TEST_XLA_CACHE moves it.
_COMPILATION_CACHE = os.environ.get("VAE_JAX_TEST_XLA_CACHE") or os.path.join(
    os.path.expanduser("~"), ".cache", "vae_jax", "test_xla_cache")
_CACHE_SETTINGS = {"jax_compilation_cache_dir": _COMPILATION_CACHE,
                   "jax_persistent_cache_min_compile_time_secs": 0,
                   "jax_persistent_cache_min_entry_size_bytes": 0}
for _name, _value in _CACHE_SETTINGS.items():
  jax.config.update(_name, _value)
  os.environ[_name.upper()] = str(_value)

# This process compiles hundreds of small programs and runs most of them once, so LLVM's
# optimization passes cost more than they save: without them the fast subset ran in 58 s
# instead of 81 s (2-core VM, empty cache). The arithmetic is the same up to float
# rounding (no fused multiply-adds), and each comparison in a test runs both sides here.
# XLA reads XLA_FLAGS when the backend starts, so the flags are set for that moment only:
# the subprocesses that tests start (the CLIs, resume, multi-host) compile as users' runs do.
_FAST_COMPILE = "--xla_backend_optimization_level=0"
# The fast subset (-m "not slow", the edit-test loop) also uses XLA's older CPU fusion
# emitters, which compile a small program in about 2/3 of the time (53 s instead of 67 s
# for the subset, empty cache). Not in the full suite: with them, programs that split the
# same steps differently (a resumed run's dispatches) can differ in the last bit, and the
# slow tests check that resuming is bitwise exact under the default emitters users get.
_FASTER_COMPILE = "--xla_cpu_use_fusion_emitters=false"


def pytest_configure(config):
  flags = _FAST_COMPILE
  if "not slow" in (config.option.markexpr or ""):
    flags += " " + _FASTER_COMPILE
  user_flags = os.environ.get("XLA_FLAGS")
  os.environ["XLA_FLAGS"] = f"{user_flags or ''} {flags}"
  jax.devices()  # Starts the backend with the flags.
  if user_flags is None:
    del os.environ["XLA_FLAGS"]
  else:
    os.environ["XLA_FLAGS"] = user_flags


@pytest.fixture(scope="session")
def mnist_manual_dir() -> str:
  path = manual_dir()
  if path is None:
    pytest.skip("No offline MNIST files: set VAE_JAX_MANUAL_DIR (see README).")
  return path


@pytest.fixture(scope="session")
def tfds_data_dir(tmp_path_factory) -> str:
  """A fresh TFDS data dir per session, so the real preparation path is exercised."""
  return str(tmp_path_factory.mktemp("tensorflow_datasets"))


# Prepared by a second process while the first slow tests run (about 35 s together, on the
# core that the test process's compilations leave idle); MNIST is prepared by the tests.
_PREPARED_IN_BACKGROUND = ("fashion_mnist", "binarized_mnist")
_PREPARE_SCRIPT = """
import sys
from vae_jax import config_schema, input_pipeline
for name in sys.argv[3:]:
  data = config_schema.default_config().data
  data.name, data.manual_dir, data.tfds_data_dir = name, sys.argv[1], sys.argv[2]
  input_pipeline.load_splits(data)
"""


@pytest.fixture(scope="session", autouse=True)
def _prepare_in_background(request):
  """Starts preparing _PREPARED_IN_BACKGROUND into tfds_data_dir when slow tests (the
  ones that read them) are selected and the offline files exist; `prepared_datasets`
  waits for it. One process per dataset folder: two preparing one at once collide."""
  path = manual_dir()
  if path is None or not any(item.get_closest_marker("slow") for item in request.session.items):
    yield None
    return
  data_dir = request.getfixturevalue("tfds_data_dir")
  log_path = os.path.join(data_dir, "background_preparation.log")
  with open(log_path, "w") as log:
    process = subprocess.Popen(
        [sys.executable, "-c", _PREPARE_SCRIPT, path, data_dir, *_PREPARED_IN_BACKGROUND],
        cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
  yield process, log_path
  if process.poll() is None:
    process.kill()
    process.wait()


@pytest.fixture(scope="session")
def prepared_datasets(_prepare_in_background, mnist_manual_dir, tfds_data_dir) -> str:
  """tfds_data_dir once _PREPARED_IN_BACKGROUND are prepared in it."""
  process, log_path = _prepare_in_background
  if process.wait(timeout=900) != 0:
    with open(log_path) as log:
      pytest.fail(f"Preparing {_PREPARED_IN_BACKGROUND} failed:\n{log.read()[-5000:]}")
  return tfds_data_dir
