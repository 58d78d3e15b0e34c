"""Orbax checkpoints of a run under `workdir/checkpoints/<step>`.

Each checkpoint holds two items: `state` (the train state: parameters, optimizer, step)
and `progress` (JSON: what the loop needs to continue exactly, e.g. the current epoch's
per-step metrics). Orbax writes a step to a temporary folder and renames it when
complete, so a run killed mid-save never leaves a half-written checkpoint under a step's
name; leftover temporary folders are removed on the next start. A checkpoint that still
fails to load (a truncated or corrupted file) is moved to `workdir/corrupt_checkpoints/`
and the run falls back to the previous one.

A save that fails (no space, no permission, a vanished directory) raises `WriteError`,
which names the file and the OS error; its temporary folder is removed at once.
`Checkpointer.check_space` warns, once, when the filesystem has less room than the next
checkpoint needs.

The workdir may be on any filesystem that etils.epath knows: orbax takes the same path (its
arrays go through tensorstore, whose kvstore for `gs://` is the gcs driver), and the files
handled here go through `epath.Path`. GCS has no atomic rename (a folder's rename is a copy
and a delete of each object): there orbax writes a step under its own name and marks it
complete with a `commit_success.txt` file instead, and `saved_steps` counts only the steps
so marked.
"""

import contextlib
import logging as python_logging
import os
import re
import shutil
import signal
import sys
import threading

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp


class _QuietOrbax(python_logging.Filter):
  """Drops orbax's INFO chatter (dozens of lines per save) and its warning that a save
  between epochs has no metric to rank (those are kept by recency); keeps the others."""

  def filter(self, record):
    if "/orbax/" not in record.pathname:
      return True
    return (record.levelno >= python_logging.WARNING
            and "did not provide metrics" not in record.getMessage())


def quiet_orbax_logging() -> None:
  """For command lines: orbax's INFO lines would bury the run's own log."""
  logging.get_absl_handler().addFilter(_QuietOrbax())


class WriteError(OSError):
  """A file of a run could not be written (a checkpoint here; eval.json, the history or a
  figure in vae_jax/workdir.py): the message says what, where and why."""

  def __init__(self, what: str, path: str, reason: str):
    super().__init__(f"Could not write {what} to {path}: {reason}.")
    self.what, self.path, self.reason = what, path, reason


def os_error_reason(error: BaseException) -> str:
  """The OS error behind `error`, as the OS says it ('No space left on device (errno
  28)'): from an OSError, or from the os_error_code tensorstore puts in orbax's message;
  else the message's first line."""
  for cause in (error, error.__cause__, error.__context__):
    if isinstance(cause, OSError) and cause.errno:
      return f"{os.strerror(cause.errno)} (errno {cause.errno})"
  found = re.search(r"os_error_code='?(\d+)", str(error))
  if found:
    code = int(found.group(1))
    return f"{os.strerror(code)} (errno {code})"
  return (str(error).splitlines() or [type(error).__name__])[0][:300]


class _HeldRecords(python_logging.Filter):
  """Holds back orbax's own log records (a failed save logs each thread's traceback);
  the save's error says what failed instead."""

  def __init__(self):
    super().__init__()
    self.records = []

  def filter(self, record):
    if "/orbax/" in record.pathname:
      self.records.append(record)
      return False
    return True


@contextlib.contextmanager
def _orbax_logs_held():
  handler, held = logging.get_absl_handler(), _HeldRecords()
  handler.addFilter(held)
  try:
    yield held
  finally:
    handler.removeFilter(held)


def is_object_store(path) -> bool:
  """Whether `path` is a URI (gs://bucket/..., s3://...) rather than a local path."""
  return "://" in os.fspath(path)


def file_errors() -> tuple[type[BaseException], ...]:
  """What a failed read or write of a workdir file raises: OSError, and on a filesystem
  that epath reaches through tf.io.gfile (gs://) the TensorFlow errors it does not turn
  into OSErrors (e.g. permission denied)."""
  tensorflow = sys.modules.get("tensorflow")
  errors = getattr(tensorflow, "errors", None)
  return (OSError,) + ((errors.OpError,) if errors is not None else ())


def _absolute(path: str) -> str:
  return path if is_object_store(path) else os.path.abspath(path)


def _remove_tree(path: epath.Path) -> None:
  """Removes a folder, as much of it as can be removed."""
  if is_object_store(path):
    with contextlib.suppress(*file_errors()):
      path.rmtree()
  else:
    shutil.rmtree(path, ignore_errors=True)


def _directory_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)


def saved_steps(workdir: str) -> list[int]:
  """The steps of the complete checkpoints in workdir/checkpoints, oldest first (orbax
  gives a step's folder its name only when the save is complete; on an object store it
  writes a commit_success.txt file into it instead)."""
  directory = epath.Path(workdir) / "checkpoints"
  if not directory.is_dir():
    return []
  return sorted(int(path.name) for path in directory.iterdir()
                if path.name.isdigit()
                and (not is_object_store(path) or ocp.step.is_checkpoint_finalized(path)))


def state_bytes(state) -> int:
  """The bytes of a train state's arrays: what its checkpoint holds, before compression."""
  return sum(leaf.nbytes for leaf in jax.tree.leaves(_saved_items(state)))


def _saved_items(state) -> dict:
  """What a checkpoint holds of a train state, by name: `ema_params` only when the run
  keeps the average, so checkpoints without it keep the layout they always had (and
  checkpoints written before the average existed still load)."""
  items = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
  if state.ema_params is not None:
    items["ema_params"] = state.ema_params
  return items


# The metric saved with a checkpoint at an epoch's end; the lowest one is kept as "best".
BEST_METRIC = "validation_neg_elbo_nats"
_LEGACY_BEST_METRIC = "validation_neg_elbo"  # Its name in checkpoints saved before.


def _best_metric(metrics: dict) -> float:
  return metrics[BEST_METRIC] if BEST_METRIC in metrics else metrics[_LEGACY_BEST_METRIC]


class Checkpointer:
  """Restore the latest good checkpoint, save, list steps.

  Keeps the latest `max_to_keep` checkpoints and, beside them, the one with the lowest
  validation -ELBO among those saved with it (orbax's preservation policies): `best_step`.
  """

  def __init__(self, workdir: str, max_to_keep: int):
    self.workdir = _absolute(workdir)
    self.directory = os.path.join(self.workdir, "checkpoints")
    keep = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(n=max_to_keep),
        ocp.checkpoint_managers.BestN(
            get_metric_fn=_best_metric, reverse=True, n=1,
            keep_checkpoints_without_metrics=False)])
    # No item_names (deprecated): the Composite args of save and restore name the items.
    self._last_checkpoint_bytes = None  # Measured after each save.
    self._space_warned = False
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            preservation_policy=keep, best_fn=_best_metric,
            best_mode="min", create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def best_step(self) -> int | None:
    """The step with the lowest validation -ELBO saved with it; None when no checkpoint
    has one (a run without a validation split)."""
    if not any(self._manager.metrics(step) for step in self._manager.all_steps()):
      return None
    return self._manager.best_step()

  def step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def restore(self, step: int, initial_state):
    """The state and progress saved at `step`, shaped and sharded like `initial_state`."""
    return self._restore(step, initial_state)

  def restore_latest(self, initial_state, max_step: int | None = None):
    """(state, progress, step) of the newest checkpoint that loads (at or before
    `max_step` if given); else (initial_state, {}, None). `state` is shaped and sharded
    like `initial_state`."""
    failed = []
    steps = [s for s in self._manager.all_steps() if max_step is None or s <= max_step]
    for step in sorted(steps, reverse=True):
      try:
        state, progress = self._restore(step, initial_state)
      except Exception as error:  # pylint: disable=broad-except  (any unreadable file)
        failed.append(step)
        moved_to = self._set_aside(step)
        logging.error("The checkpoint of step %d at %s failed to load (%s: %s); moved it "
                      "to %s.", step, self.step_path(step), type(error).__name__,
                      str(error).splitlines()[0][:300] if str(error) else "", moved_to)
        continue
      if failed:
        logging.warning("Resuming from the previous good checkpoint, step %d.", step)
      return state, progress, step
    if failed:
      logging.warning("No checkpoint in %s loads: starting from scratch.", self.directory)
    return initial_state, {}, None

  def _restore(self, step, initial_state):
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _saved_items(initial_state))
    step_dir = self.step_path(step)
    if (epath.Path(step_dir) / "default").is_dir():  # Written before `progress` existed.
      legacy = ocp.CheckpointManager(self.directory)
      items = legacy.restore(step, args=ocp.args.StandardRestore(abstract))
      legacy.close()
      return initial_state.replace(**items), {}
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()))
    return initial_state.replace(**restored["state"]), dict(restored["progress"] or {})

  def _set_aside(self, step: int) -> str:
    """Moves a bad checkpoint out of orbax's sight (kept for inspection, not deleted)."""
    target = os.path.join(self.workdir, "corrupt_checkpoints", str(step))
    if jax.process_index() == 0:
      suffix = 0
      while epath.Path(target + (f".{suffix}" if suffix else "")).exists():
        suffix += 1
      target += f".{suffix}" if suffix else ""
      epath.Path(os.path.dirname(target)).mkdir(parents=True, exist_ok=True)
      if is_object_store(target):  # A folder's "move" there renames each object in it.
        epath.Path(self.step_path(step)).rename(target)
      else:
        shutil.move(self.step_path(step), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
    self._manager.reload()
    return target

  def check_space(self, state) -> None:
    """Warns once when the workdir's filesystem has less free space than the next
    checkpoint needs: the last one's size, or before the first the state's bytes."""
    if self._space_warned or jax.process_index() != 0 or is_object_store(self.directory):
      return  # An object store has no free space to measure.
    needed = self._last_checkpoint_bytes or state_bytes(state)
    free = shutil.disk_usage(self.directory).free
    if free < needed:
      self._space_warned = True
      logging.warning(
          "Only %.1f MB free on the filesystem of %s; the next checkpoint needs about %.1f "
          "MB (%s). Free some space or move the run: if a save fails, the run stops, "
          "naming the last good checkpoint.", free / 1e6, self.directory, needed / 1e6,
          "the size of the last one" if self._last_checkpoint_bytes
          else "the train state's arrays")

  def save(self, step: int, state, progress: dict | None = None,
           validation_neg_elbo_nats: float | None = None) -> None:
    """Saves unless this step is already saved (e.g. preempted right after a save);
    `validation_neg_elbo_nats` (at epoch ends) ranks it for best_step. Raises WriteError
    when the checkpoint cannot be written (its temporary folder is removed)."""
    if step in self._manager.all_steps():
      return
    self.check_space(state)
    metrics = (None if validation_neg_elbo_nats is None
               else {BEST_METRIC: validation_neg_elbo_nats})
    try:
      with _orbax_logs_held():
        self._manager.save(step, metrics=metrics, args=ocp.args.Composite(
            state=ocp.args.StandardSave(_saved_items(state)),
            progress=ocp.args.JsonSave(progress or {})))
        self._manager.wait_until_finished()
    except Exception as error:  # pylint: disable=broad-except  (orbax wraps the OS's)
      if jax.process_index() == 0:
        for leftover in epath.Path(self.directory).iterdir():
          # On GCS orbax writes under the step's own name, marked complete at the end.
          if (leftover.name.startswith(f"{step}.orbax-checkpoint-tmp")
              or (leftover.name == str(step) and is_object_store(leftover)
                  and not ocp.step.is_checkpoint_finalized(leftover))):
            _remove_tree(leftover)
      raise WriteError(f"the checkpoint of step {step}", self.step_path(step),
                       os_error_reason(error)) from error
    if jax.process_index() == 0 and not is_object_store(self.directory):  # For check_space.
      self._last_checkpoint_bytes = _directory_bytes(self.step_path(step))

  def close(self) -> None:
    self._manager.close()


class SigtermFlag:
  """Records SIGTERM instead of dying, so the loop can save a checkpoint first.

  With several processes, JAX's preemption sync point (the coordination service relays
  the signal) makes every process stop at the same step, which a collective save needs.
  """

  def __init__(self):
    self.received = False
    self._previous = None

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.received = True

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.received

  def __exit__(self, *exc_info):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
