"""Everything a run writes to or reads from its workdir.

    config.json          the run's config (the resume check compares against it)
    manifest.json        which code made the run: one entry per start or resume (command
                         line, config hash, git commit and dirty state, package versions,
                         devices, XLA_FLAGS, start time); a resume with other code or
                         versions logs a warning naming what changed
    checkpoints/<step>/  orbax checkpoints (vae_jax/checkpoint.py)
    epoch_metrics.jsonl  one JSON object per logged epoch
    eval.json            the test split's final evaluation (-ELBO, NLL, latent diagnostics,
                         ...; vae_jax/evaluators.py); eval_<split>.json for another split
    timings.json         wall time by phase
    figures/<name>.png   figures, also written to TensorBoard as images
    events.out.tfevents.*  TensorBoard scalars (train/..., validation/..., test/...,
                         train_interval/...), hparams and images

Only process 0 writes files; the other processes of a multi-host run read.

A workdir may be on any filesystem that etils.epath knows (a local folder, `gs://bucket/run`,
...): every file here and in vae_jax/checkpoint.py goes through `epath.Path`, orbax and clu's
TensorBoard writer take the same path, so a run's files all land in one place.
"""

import contextlib
import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from typing import Any

from absl import logging
from clu import metric_writers
from etils import epath
import flax.linen as nn
import jax
import ml_collections

from vae_jax import checkpoint
from vae_jax import config_schema
from vae_jax import figures
from vae_jax import input_pipeline
from vae_jax import models
from vae_jax import steps

CONFIG_FILE = "config.json"
HISTORY_FILE = "epoch_metrics.jsonl"
EVAL_FILE = "eval.json"
TIMINGS_FILE = "timings.json"
MANIFEST_FILE = "manifest.json"
# The distributions whose versions a manifest records (python's own is added).
MANIFEST_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "clu",
                     "tensorflow-datasets", "numpy")
# A git that waits on a lock or a slow filesystem must not hold up training.
_GIT_TIMEOUT_SECONDS = 10
# Summary keys start with their split; TensorBoard groups tags by the part before "/".
_SPLIT_PREFIXES = ("train_", "validation_", "test_")
# epoch_metrics.jsonl's names before every layer used the evaluators' (runs written then
# still resume and plot): old name -> name, after the split prefix.
_LEGACY_SUMMARY_NAMES = {"neg_elbo": "neg_elbo_nats", "reconstruction": "reconstruction_nats",
                         "kl": "kl_nats", "mutual_information": "mutual_information_nats",
                         "marginal_kl": "marginal_kl_nats", "nll": "nll_nats"}


class ConfigMismatchError(ValueError):
  """The workdir holds a run trained with another config; the message lists the keys."""


def is_writer() -> bool:
  return jax.process_index() == 0


def write_atomically(path: str, text: str) -> None:
  """A kill mid-write leaves the old file or the new one, never half of one. Raises
  checkpoint.WriteError naming the file and the OS error when it cannot be written (no
  space, no permission, a vanished directory); the old file stays."""
  path = os.fspath(path)
  errors = checkpoint.file_errors()
  if checkpoint.is_object_store(path):
    # An object store (gs://, s3://) has no atomic rename: epath's "rename" there is a copy
    # and a delete. It needs none: an object is replaced whole when its upload completes,
    # and an upload cut short leaves the old object, so the file is written in place.
    try:
      epath.Path(path).write_text(text)
    except errors as error:
      raise checkpoint.WriteError(os.path.basename(path), path,
                                  checkpoint.os_error_reason(error)) from error
    return
  temporary = epath.Path(path + ".tmp")
  try:
    with temporary.open("w") as f:
      f.write(text)
    temporary.replace(path)
  except errors as error:
    with contextlib.suppress(*errors):
      temporary.unlink()
    raise checkpoint.WriteError(os.path.basename(path), path,
                                checkpoint.os_error_reason(error)) from error


def write_json(workdir: str, name: str, value) -> str:
  """workdir/name as indented JSON, atomically, from process 0; returns the path."""
  path = os.path.join(workdir, name)
  if is_writer():
    write_atomically(path, json.dumps(value, indent=2, default=str))
  return path


def eval_file(split: str) -> str:
  """The file of a split's final evaluation: eval.json for test, eval_<split>.json else."""
  return EVAL_FILE if split == "test" else f"eval_{split}.json"


def read_eval(workdir: str, split: str = "test") -> dict | None:
  path = epath.Path(workdir) / eval_file(split)
  if not path.exists():
    return None
  with path.open() as f:
    return json.load(f)


def write_eval(workdir: str, result: dict) -> str:
  """Writes an evaluation (evaluators.final_result's dict) to its split's file and returns
  the path. Merges: what the file holds for the same parameters (step and weights) and
  this result does not recompute is kept (e.g. the sample quality of an earlier
  `python -m vae_jax.evaluate`); a file of other parameters is replaced."""
  previous = read_eval(workdir, result["split"]) if is_writer() else None
  if previous and all(previous.get(key) == result.get(key) for key in ("step", "weights")):
    result = {**previous, **result}
  return write_json(workdir, eval_file(result["split"]), result)


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  if is_writer():
    write_atomically(os.path.join(workdir, CONFIG_FILE),
                     config.to_json_best_effort(indent=2, sort_keys=True))


def check_same_config(config, workdir: str, checkpoint_step: int | None) -> None:
  """Refuses to resume a run that was trained with a different config, naming the keys."""
  path = os.path.join(workdir, CONFIG_FILE)
  if checkpoint_step is None or not epath.Path(path).exists():
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


def config_sha256(config: ml_collections.ConfigDict) -> str:
  """sha256 of the config's canonical JSON (sorted keys): equal configs, equal hashes."""
  return hashlib.sha256(config.to_json_best_effort(sort_keys=True).encode()).hexdigest()


def _git(directory: str, *args: str) -> bytes | None:
  """git's stdout, or None when git is missing, fails or takes too long."""
  try:
    result = subprocess.run(["git", "-C", directory, *args], capture_output=True,
                            timeout=_GIT_TIMEOUT_SECONDS, check=False,
                            stdin=subprocess.DEVNULL)
  except (OSError, subprocess.SubprocessError):
    return None
  return result.stdout if result.returncode == 0 else None


def git_state(directory: str) -> dict:
  """{'commit', 'dirty', 'diff_sha256'} of the git checkout holding `directory`.

  dirty: tracked files differ from the commit (staged or not; untracked files do not
  count); diff_sha256: sha256 of `git diff HEAD` when dirty, so two dirty runs can be told
  apart. All None when `directory` is not in a git checkout, holds none of its tracked files
  (e.g. a package installed into an ignored virtualenv inside another checkout), the
  checkout has no commit yet, or git is missing.
  """
  unknown = {"commit": None, "dirty": None, "diff_sha256": None}
  commit = _git(directory, "rev-parse", "HEAD")
  if commit is None or not _git(directory, "ls-files", "--", "."):
    return unknown
  status = _git(directory, "status", "--porcelain", "--untracked-files=no")
  if status is None:
    return unknown
  dirty = bool(status.strip())
  diff_sha256 = None
  if dirty:
    diff = _git(directory, "diff", "HEAD", "--no-color", "--no-ext-diff")
    diff_sha256 = None if diff is None else hashlib.sha256(diff).hexdigest()
  return {"commit": commit.decode().strip(), "dirty": dirty, "diff_sha256": diff_sha256}


def package_versions() -> dict[str, str | None]:
  """Python's and MANIFEST_PACKAGES' versions; None for a package that is not installed."""
  versions = {"python": platform.python_version()}
  for name in MANIFEST_PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def manifest_entry(config: ml_collections.ConfigDict, *,
                   resumed_from_step: int | None) -> dict:
  """What made this start of a run: command line, config hash, code, versions, devices."""
  return {
      "start_time": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "resumed_from_step": resumed_from_step,
      "argv": list(sys.argv),
      "config_sha256": config_sha256(config),
      "git": git_state(os.path.dirname(os.path.abspath(__file__))),
      "versions": package_versions(),
      "backend": jax.default_backend(),
      "device_kind": jax.devices()[0].device_kind,
      "device_count": jax.device_count(),
      "process_count": jax.process_count(),
      "xla_flags": os.environ.get("XLA_FLAGS"),
  }


def _short(value):
  # Commits and diff hashes are 40 and 64 hex digits; 12 tell them apart in a log line.
  return value[:12] if isinstance(value, str) and len(value) >= 40 else value


def code_changes(previous: dict, current: dict) -> list[str]:
  """'jax 0.10.1 -> 0.10.2', 'git commit abc -> def', ...: the code and versions that differ.

  The config hash is left out: check_same_config already names changed keys, and keys
  such as data.manual_dir may change freely between machines.
  """
  changes = []
  previous_git, current_git = previous.get("git") or {}, current.get("git") or {}
  for key, label in (("commit", "git commit"), ("dirty", "uncommitted changes"),
                     ("diff_sha256", "git diff sha256")):
    if previous_git.get(key) != current_git.get(key):
      changes.append(f"{label} {_short(previous_git.get(key))} -> "
                     f"{_short(current_git.get(key))}")
  previous_versions = previous.get("versions") or {}
  current_versions = current.get("versions") or {}
  names = list(current_versions) + [name for name in previous_versions
                                     if name not in current_versions]
  for name in names:
    if previous_versions.get(name) != current_versions.get(name):
      changes.append(f"{name} {previous_versions.get(name)} -> {current_versions.get(name)}")
  return changes


def read_manifest(workdir: str) -> list[dict]:
  """manifest.json's entries, oldest first; [] when there is none."""
  path = epath.Path(workdir) / MANIFEST_FILE
  if not path.exists():
    return []
  with path.open() as f:
    return json.load(f)


def record_manifest(workdir: str, config: ml_collections.ConfigDict,
                    resumed_from_step: int | None) -> list[str]:
  """Appends this start's manifest_entry to workdir/manifest.json (process 0 only).

  On a resume (resumed_from_step is the checkpoint's step), compares the entry with the
  previous one and logs a warning naming the code and versions that changed; returns those
  changes ([] on other processes and on a fresh start).
  """
  if not is_writer():
    return []
  try:
    entries = read_manifest(workdir)
  except (OSError, ValueError) as error:
    logging.warning("Could not read %s (%s); starting a new manifest.",
                    os.path.join(workdir, MANIFEST_FILE), error)
    entries = []
  if not isinstance(entries, list):
    entries = [entries]
  entry = manifest_entry(config, resumed_from_step=resumed_from_step)
  changes = []
  if resumed_from_step is not None and entries and isinstance(entries[-1], dict):
    changes = code_changes(entries[-1], entry)
    if changes:
      logging.warning("Resuming %s at step %d with other code or versions than its previous "
                      "start (%s): %s", workdir, resumed_from_step, MANIFEST_FILE,
                      "; ".join(changes))
  entries.append(entry)
  write_atomically(os.path.join(workdir, MANIFEST_FILE), json.dumps(entries, indent=2))
  return changes


def read_history(workdir: str, up_to_step: int | None = None) -> list[dict]:
  """The per-epoch summaries a run logged (one JSON object per line), oldest first."""
  path = epath.Path(workdir) / HISTORY_FILE
  if not path.exists():
    return []
  with path.open() as f:
    history = [_current_names(json.loads(line)) for line in f if line.strip()]
  return [h for h in history if up_to_step is None or h["step"] <= up_to_step]


def _current_names(entry: dict) -> dict:
  renamed = {}
  for name, value in entry.items():
    prefix = next((p for p in _SPLIT_PREFIXES if name.startswith(p)), "")
    renamed[prefix + _LEGACY_SUMMARY_NAMES.get(name[len(prefix):], name[len(prefix):])] = value
  return renamed


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
  errors = checkpoint.file_errors()
  try:
    epath.Path(figure_dir).mkdir(parents=True, exist_ok=True)
  except errors as error:
    raise checkpoint.WriteError("the figures folder", figure_dir,
                                checkpoint.os_error_reason(error)) from error
  images, paths = {}, []
  for name, figure in named_figures.items():
    if save_png:
      paths.append(os.path.join(figure_dir, f"{name}.png"))
      try:
        # matplotlib writes to the open file (a PNG: savefig's default format) the bytes
        # it would write to the local path.
        with epath.Path(paths[-1]).open("wb") as f:
          images[f"figures/{name}"] = figures.save_png(figure, f)
      except errors as error:
        raise checkpoint.WriteError(f"the figure {name}", paths[-1],
                                    checkpoint.os_error_reason(error)) from error
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


CHECKPOINT_CHOICES = "latest, best or a step number"
WEIGHT_CHOICES = ("raw", "ema")


def load_run(workdir: str, checkpoint_choice: str = "latest",
             weights: str = "raw") -> Run:
  """Rebuilds the model from workdir/config.json and restores a checkpoint's parameters.

  `checkpoint_choice`: "latest", "best" (the lowest validation -ELBO among the saved
  checkpoints) or a step; `weights`: "raw", or "ema" (the parameters' moving average,
  config.train.ema_decay > 0). Raises ValueError saying what to do when the workdir has no
  config or no such checkpoint, or the choice does not apply to this run, before any
  checkpoint is read.
  """
  config_path = os.path.join(workdir, CONFIG_FILE)
  if not epath.Path(config_path).exists():
    raise ValueError(f"{config_path} does not exist: --workdir must be a directory that "
                     "python -m vae_jax.main trained in.")
  config = config_schema.load_json(config_path)
  if weights not in WEIGHT_CHOICES:
    raise ValueError(f"--weights={weights!r} is not one of {', '.join(WEIGHT_CHOICES)}.")
  if weights == "ema" and not config.train.ema_decay:
    raise ValueError(f"--weights=ema: {workdir} was trained without a moving average of its "
                     "parameters (config.train.ema_decay=0). Use --weights=raw, or train "
                     "with e.g. --config.train.ema_decay=0.999.")
  model = models.get_model(config.model, input_pipeline.configured_image_shape(config),
                           config.dtype)
  keys = steps.run_keys(config.seed)
  checkpointer = checkpoint.Checkpointer(workdir, config.checkpoints_to_keep)
  initial = steps.create_train_state(model, config, keys["init"])
  try:
    if checkpointer.latest_step() is None:
      raise ValueError(f"No checkpoint under {checkpointer.directory}: train first with "
                       f"python -m vae_jax.main --config=... --workdir={workdir}")
    # Restored onto one device; callers replicate it if they want data parallelism.
    if checkpoint_choice == "latest":
      state, _, step = checkpointer.restore_latest(initial)
    else:
      step = _chosen_step(checkpointer, checkpoint_choice, workdir)
      state, _ = checkpointer.restore(step, initial)
  finally:
    checkpointer.close()
  if step is None:  # Every checkpoint failed to load (each was reported and set aside).
    raise ValueError(f"No checkpoint under {checkpointer.directory} loads; see the errors "
                     "above.")
  logging.info("Restored step %d (%s checkpoint, %s weights) from %s.", step,
               checkpoint_choice, weights, checkpointer.directory)
  params = state.ema_params if weights == "ema" else state.params
  return Run(config=config, model=model, params=params, step=step, keys=keys)


def _chosen_step(checkpointer: checkpoint.Checkpointer, choice: str, workdir: str) -> int:
  saved = checkpointer.all_steps()
  if choice == "best":
    best = checkpointer.best_step()
    if best is None:
      raise ValueError(
          f"--checkpoint=best: no checkpoint in {checkpointer.directory} was saved with a "
          "validation -ELBO (a run without a validation split, config.data.validation_size=0,"
          " or one trained before vae_jax kept the best checkpoint). Use --checkpoint=latest "
          f"or one of the saved steps: {', '.join(map(str, saved))}.")
    return best
  if not choice.isdigit() or int(choice) not in saved:
    raise ValueError(f"--checkpoint={choice!r}: use {CHECKPOINT_CHOICES}; {workdir} has "
                     f"checkpoints of steps {', '.join(map(str, saved))}.")
  return int(choice)
