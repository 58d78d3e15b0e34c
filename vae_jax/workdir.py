"""Everything a run writes to or reads from its workdir.

    config.json          the run's config (the resume check compares against it)
    checkpoints/<step>/  orbax checkpoints (vae_jax/checkpoint.py)
    epoch_metrics.jsonl  one JSON object per logged epoch
    eval.json            the final evaluation (-ELBO, NLL, ...)
    timings.json         wall time by phase
    figures/<name>.png   figures, also written to TensorBoard as images
    events.out.tfevents.*  TensorBoard scalars (train/..., validation/..., test/...,
                         train_interval/...), hparams and images

Only process 0 writes files; the other processes of a multi-host run read.
"""

import dataclasses
import json
import os
from typing import Any

from absl import logging
from clu import metric_writers
import flax.linen as nn
import jax
import ml_collections

from vae_jax import checkpoint
from vae_jax import config_schema
from vae_jax import figures
from vae_jax import models
from vae_jax import steps

CONFIG_FILE = "config.json"
HISTORY_FILE = "epoch_metrics.jsonl"
EVAL_FILE = "eval.json"
TIMINGS_FILE = "timings.json"
# Summary keys start with their split; TensorBoard groups tags by the part before "/".
_SPLIT_PREFIXES = ("train_", "validation_", "test_")


class ConfigMismatchError(ValueError):
  """The workdir holds a run trained with another config; the message lists the keys."""


def is_writer() -> bool:
  return jax.process_index() == 0


def write_atomically(path: str, text: str) -> None:
  """A kill mid-write leaves the old file or the new one, never half of one."""
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def write_json(workdir: str, name: str, value) -> str:
  """workdir/name as indented JSON, atomically, from process 0; returns the path."""
  path = os.path.join(workdir, name)
  if is_writer():
    write_atomically(path, json.dumps(value, indent=2, default=str))
  return path


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  if is_writer():
    write_atomically(os.path.join(workdir, CONFIG_FILE),
                     config.to_json_best_effort(indent=2, sort_keys=True))


def check_same_config(config, workdir: str, checkpoint_step: int | None) -> None:
  """Refuses to resume a run that was trained with a different config, naming the keys."""
  path = os.path.join(workdir, CONFIG_FILE)
  if checkpoint_step is None or not os.path.exists(path):
    return
  differences = config_schema.resume_differences(config_schema.load_json(path), config)
  if not differences:
    return
  listing = "\n  ".join(f"{key}: {saved!r} -> {now!r}" for key, saved, now in differences)
  if config.resume_mismatch == "allow":
    logging.warning("Resuming %s (checkpoint of step %d) with a changed config, as "
                    "config.resume_mismatch='allow' says:\n  %s", workdir, checkpoint_step,
                    listing)
    return
  raise ConfigMismatchError(
      f"{workdir} holds a run with a checkpoint of step {checkpoint_step} that was trained "
      f"with a different config. Differing keys (saved -> now):\n  {listing}\n"
      "Use a new --workdir, or add --config.resume_mismatch=allow to continue this run "
      "with the new values.")


def read_history(workdir: str, up_to_step: int | None = None) -> list[dict]:
  """The per-epoch summaries a run logged (one JSON object per line), oldest first."""
  path = os.path.join(workdir, HISTORY_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    history = [json.loads(line) for line in f if line.strip()]
  return [h for h in history if up_to_step is None or h["step"] <= up_to_step]


def write_history(workdir: str, history: list[dict]) -> None:
  if is_writer():
    write_atomically(os.path.join(workdir, HISTORY_FILE),
                     "".join(json.dumps(entry) + "\n" for entry in history))


def open_writer(workdir: str) -> metric_writers.MetricWriter:
  """clu's TensorBoard + logging writer on process 0 (asynchronous), logging elsewhere."""
  return metric_writers.create_default_writer(workdir, just_logging=not is_writer())


def write_hparams(writer, config) -> None:
  writer.write_hparams({key: value if isinstance(value, (int, float, str, bool)) else str(value)
                        for key, value in config_schema.flat_items(config).items()})


def tensorboard_scalars(summary: dict) -> dict[str, float]:
  """{'train_neg_elbo': ...} -> {'train/neg_elbo': ...}: one TensorBoard group per split."""
  scalars = {}
  for name, value in summary.items():
    prefix = next((p for p in _SPLIT_PREFIXES if name.startswith(p)), None)
    scalars[f"{prefix[:-1]}/{name[len(prefix):]}" if prefix else name] = value
  return scalars


def write_figures(workdir: str, writer, step: int, named_figures: dict, *,
                  save_png: bool = True) -> list[str]:
  """Figures as workdir/figures/<name>.png and as TensorBoard images; returns the paths."""
  figure_dir = os.path.join(workdir, "figures")
  os.makedirs(figure_dir, exist_ok=True)
  images, paths = {}, []
  for name, figure in named_figures.items():
    if save_png:
      paths.append(os.path.join(figure_dir, f"{name}.png"))
      images[f"figures/{name}"] = figures.save_png(figure, paths[-1])
    else:
      images[f"figures/{name}"] = figures.to_rgb_array(figure)
      figures.close(figure)
  writer.write_images(step, {name: pixels[None] for name, pixels in images.items()})
  return paths


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained run read back from its workdir: config, model, latest parameters, keys."""
  config: ml_collections.ConfigDict
  model: nn.Module
  params: Any
  step: int
  keys: dict


def load_run(workdir: str) -> Run:
  """Rebuilds the model from workdir/config.json and restores its latest checkpoint.

  Raises ValueError saying what to do when the workdir has no config or no checkpoint.
  """
  config_path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(config_path):
    raise ValueError(f"{config_path} does not exist: --workdir must be a directory that "
                     "python -m vae_jax.main trained in.")
  config = config_schema.load_json(config_path)
  model = models.get_model(config.model, config.dtype)
  keys = steps.run_keys(config.seed)
  checkpointer = checkpoint.Checkpointer(workdir, config.checkpoints_to_keep)
  # Restored onto one device; callers replicate it if they want data parallelism.
  state, _, step = checkpointer.restore_latest(
      steps.create_train_state(model, config, keys["init"]))
  checkpointer.close()
  if step is None:
    raise ValueError(f"No checkpoint under {checkpointer.directory}: train first with "
                     f"python -m vae_jax.main --config=... --workdir={workdir}")
  logging.info("Restored step %d from %s.", step, checkpointer.directory)
  return Run(config=config, model=model, params=state.params, step=step, keys=keys)
