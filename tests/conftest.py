"""Shared fixtures and pytest hooks: the offline TFDS source, the XLA compilation
cache and flags. The helpers that tests import are in tests/helpers.py."""

import fcntl
import os

import jax
import pytest

from tests.helpers import FAST_COMPILE_FLAGS, OLDER_EMITTERS_FLAG, data_config, manual_dir
from vae_jax import input_pipeline

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
# instead of 81 s (2-core VM, empty cache). XLA's older CPU fusion emitters then compile a
# small program in about 2/3 of the time (the subset in 53 s instead of 67 s). The
# arithmetic is the same up to float rounding (no fused multiply-adds, other fusions), and
# a bitwise comparison computes both sides under the same flags: here, or both in one
# script (helpers.run_script, which says which checks run there and why). XLA reads
# XLA_FLAGS when the backend starts, so the flags are set for that moment only: the
# command lines that tests start (main, evaluate, sample, sweep, benchmark; resume,
# faults, multi-host) compile as users' runs do.


def pytest_configure(config):
  del config  # The hook's signature.
  user_flags = os.environ.get("XLA_FLAGS")
  os.environ["XLA_FLAGS"] = f"{user_flags or ''} {FAST_COMPILE_FLAGS} {OLDER_EMITTERS_FLAG}"
  jax.devices()  # Starts the backend with the flags.
  if user_flags is None:
    del os.environ["XLA_FLAGS"]
  else:
    os.environ["XLA_FLAGS"] = user_flags


# pytest-xdist (`-n auto` in pytest.ini) spreads the tests over worker processes, one per
# CPU up to _MAX_WORKERS (each holds JAX and TensorFlow, about 1.5 GB).
_MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config):
  del config  # The hook's signature.
  return max(1, min(len(os.sched_getaffinity(0)), _MAX_WORKERS))


# First, so that the marks are there when xdist's own hook reads them.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
  """Tests that share an expensive fixture run in one worker (--dist loadgroup), so that
  it is built once: those of a module-scoped fixture of their own module (a trained
  group, a background run), and those of Fashion-MNIST and binarized MNIST, so that
  those two are prepared once."""
  del config  # The hook's signature.
  for item in items:
    if "prepared_datasets" in getattr(item, "fixturenames", ()):
      item.add_marker(pytest.mark.xdist_group("prepared_datasets"))
      continue
    fixtures = getattr(item, "_fixtureinfo", None)
    for definitions in (fixtures.name2fixturedefs.values() if fixtures else ()):
      if any(d.scope == "module" and d.baseid == item.nodeid.split("::")[0]
             for d in definitions):
        item.add_marker(pytest.mark.xdist_group(item.module.__name__))
        break


@pytest.fixture(scope="session")
def mnist_manual_dir() -> str:
  path = manual_dir()
  if path is None:
    pytest.skip("No offline MNIST files: set VAE_JAX_MANUAL_DIR (see README).")
  return path


@pytest.fixture(scope="session")
def tfds_data_dir(tmp_path_factory, mnist_manual_dir) -> str:
  """A fresh TFDS data dir for the test run, so the real preparation path is exercised,
  with MNIST prepared in it before any test or subprocess reads it. The xdist workers
  share it: the first prepares it while the others wait on a lock (two processes
  preparing one dataset at once collide)."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # The run's folder, above each worker's own.
  path = root / "tensorflow_datasets"
  with open(root / "tensorflow_datasets.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # Released when the file closes.
    input_pipeline.load_splits(data_config("mnist", mnist_manual_dir, str(path)))
  return str(path)


@pytest.fixture(scope="session")
def prepared_datasets(mnist_manual_dir, tfds_data_dir) -> str:
  """tfds_data_dir with Fashion-MNIST and binarized MNIST prepared too."""
  for name in ("fashion_mnist", "binarized_mnist"):
    input_pipeline.load_splits(data_config(name, mnist_manual_dir, tfds_data_dir))
  return tfds_data_dir
