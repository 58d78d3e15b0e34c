"""Orbax checkpoints of the train state under `workdir/checkpoints/<step>`.

Orbax writes each step to a temporary folder and renames it when complete, so a run killed
mid-save never leaves a half-written checkpoint under a step's name.
"""

import logging as python_logging
import os

from absl import logging
import jax
import orbax.checkpoint as ocp


class _QuietOrbax(python_logging.Filter):
  """Drops orbax's INFO chatter (dozens of lines per save); keeps its warnings."""

  def filter(self, record):
    return record.levelno >= python_logging.WARNING or "/orbax/" not in record.pathname


def quiet_orbax_logging() -> None:
  """For command lines: orbax's INFO lines would bury the run's own log."""
  logging.get_absl_handler().addFilter(_QuietOrbax())


class Checkpointer:
  """Restore-or-init, save, latest step."""

  def __init__(self, workdir: str, max_to_keep: int):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def restore_or(self, initial_state):
    """The latest saved state, shaped and sharded like `initial_state`; else `initial_state`."""
    step = self.latest_step()
    if step is None:
      return initial_state
    abstract_state = jax.tree.map(ocp.utils.to_shape_dtype_struct, initial_state)
    logging.info("Restoring checkpoint of step %d from %s.", step, self.directory)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

  def save(self, step: int, state) -> None:
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
