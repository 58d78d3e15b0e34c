"""TFDS -> numpy -> device arrays; splits, shuffling, binarization.

Each split is read once with `tfds.load` into uint8 numpy arrays (cached decoded beside
TFDS's files, so later runs skip the image decoding) and placed on the devices whole; batches are gathered on the device from index arrays, so the training loop never
touches tf.data. Offline machines point TFDS at the original files with
`config.data.manual_dir` or `$VAE_JAX_MANUAL_DIR` (one sub-folder per TFDS dataset name).
"""

import dataclasses
import os
import socket
import tempfile
import urllib.parse

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import config_schema
from vae_jax import parallel

MANUAL_DIR_ENV = "VAE_JAX_MANUAL_DIR"
# How long to wait for a download host before declaring the machine offline.
_NETWORK_PROBE_TIMEOUT_SECONDS = 5.0


class DataError(RuntimeError):
  """The dataset is missing, unreachable or corrupt; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Split:
  """One split on the host: uint8 images (N, 28, 28, 1) in 0..255, int32 labels or None."""
  images: np.ndarray
  labels: np.ndarray | None

  @property
  def num_examples(self) -> int:
    return self.images.shape[0]


def resolve_manual_dir(data_config) -> str | None:
  return data_config.manual_dir or os.environ.get(MANUAL_DIR_ENV) or None


def _expected_files(builder) -> list[str]:
  return sorted(info.filename or url.rsplit("/", 1)[-1]
                for url, info in (builder.url_infos or {}).items())


def _hosts_reachable(builder) -> bool:
  for url in (builder.url_infos or {}):
    parsed = urllib.parse.urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
      socket.create_connection((parsed.hostname, port),
                               timeout=_NETWORK_PROBE_TIMEOUT_SECONDS).close()
    except OSError:
      return False
  return True


def _prepare(builder, name: str, manual_dir: str | None) -> None:
  """Runs TFDS preparation, failing fast with a clear message when it cannot succeed."""
  # Heavy (TensorFlow); only needed here.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.download import download_manager  # pylint: disable=g-import-not-at-top

  expected = _expected_files(builder)
  if manual_dir:
    dataset_dir = os.path.join(manual_dir, name)
    missing = [f for f in expected if not os.path.isfile(os.path.join(dataset_dir, f))]
    if missing:
      raise DataError(
          f"Dataset {name!r} is not prepared in {builder.data_dir} and its original files are "
          f"missing from {dataset_dir}: {', '.join(missing)}. The manual directory comes from "
          f"config.data.manual_dir or ${MANUAL_DIR_ENV}; it must hold one sub-folder per TFDS "
          f"dataset name with the files {', '.join(expected)}.")
  else:
    dataset_dir = None
    if not _hosts_reachable(builder):
      raise DataError(
          f"Dataset {name!r} is not prepared in {builder.data_dir} and its download hosts are "
          f"unreachable (offline?). Put the original files {', '.join(expected)} in "
          f"<dir>/{name}/ and set ${MANUAL_DIR_ENV}=<dir> or --config.data.manual_dir=<dir>.")
  logging.info("Preparing %s with TFDS (manual files: %s).", name, dataset_dir or "download")
  try:
    builder.download_and_prepare(
        # One download folder per dataset: TFDS names extracted manual files by file name
        # alone, and mnist and fashion_mnist share file names, so a shared folder would
        # silently hand one dataset the other's pixels.
        download_dir=os.path.join(builder.data_dir_root, "downloads", name),
        download_config=tfds.download.DownloadConfig(manual_dir=dataset_dir))
  except download_manager.NonMatchingChecksumError as error:
    raise DataError(
        f"A source file of {name!r} is corrupt or not the original (its checksum does not "
        f"match TFDS's registered one). Replace it with the original file.\n{error}") from None


_LOADED = {}  # Splits already read by this process (a sweep trains many runs on them).


def load_splits(data_config) -> dict[str, Split]:
  """Returns {'train', 'validation', 'test'} splits of `data_config.name` as numpy.

  Read once per process and shared: callers must not write into the arrays.
  """
  cache_key = (data_config.name, data_config.tfds_data_dir, data_config.validation_size)
  if cache_key not in _LOADED:
    _LOADED[cache_key] = _load_splits(data_config)
  return _LOADED[cache_key]


# The decoded arrays of every split, kept beside TFDS's prepared files (see _tfds_arrays).
DECODED_ARRAYS_FILE = "vae_jax_decoded_arrays.npz"


def _load_splits(data_config) -> dict[str, Split]:
  import tensorflow_datasets as tfds  # Heavy (TensorFlow); only needed here.

  name = data_config.name
  data_dir = data_config.tfds_data_dir or None
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    _prepare(builder, name, resolve_manual_dir(data_config))
  arrays = _tfds_arrays(builder, name, data_dir)

  if "validation" in arrays:
    loaded = {split: arrays[split] for split in ("train", "validation", "test")}
  else:
    # The validation split is the last `validation_size` examples in TFDS's (fixed) order.
    train = arrays["train"]
    num_train = train.num_examples - data_config.validation_size
    if num_train <= 0:
      raise ValueError(f"config.data.validation_size={data_config.validation_size} leaves no "
                       f"training examples in {name!r}.")
    labels = train.labels
    loaded = {"train": Split(train.images[:num_train],
                             None if labels is None else labels[:num_train]),
              "validation": Split(train.images[num_train:],
                                  None if labels is None else labels[num_train:]),
              "test": arrays["test"]}
  logging.info("Loaded %s: %s.", name,
               ", ".join(f"{k} {v.num_examples}" for k, v in loaded.items()))
  return loaded


def _tfds_arrays(builder, name: str, data_dir: str | None) -> dict[str, Split]:
  """Every split of a prepared TFDS dataset, whole, as numpy.

  TFDS decodes every image on every read (70,000 PNGs for MNIST, 3-4 s of each run's start
  on a 2-core machine) and has no cache of decoded arrays that several processes can share,
  so this keeps one: DECODED_ARRAYS_FILE beside the prepared files, written atomically by
  the first read. A cache that does not load, or whose sizes disagree with the dataset's,
  is read again from TFDS and rewritten; one that cannot be written is skipped.
  """
  path = os.path.join(builder.data_dir, DECODED_ARRAYS_FILE)
  sizes = {split: info.num_examples for split, info in builder.info.splits.items()}
  if os.path.exists(path):
    try:
      with np.load(path) as cached:
        arrays = {split: Split(cached[f"{split}.images"],
                               cached[f"{split}.labels"] if f"{split}.labels" in cached
                               else None) for split in sizes}
      if {split: a.num_examples for split, a in arrays.items()} == sizes:
        return arrays
      logging.warning("%s holds other split sizes than %s %s: reading the TFDS files again.",
                      path, name, sizes)
    except Exception as error:  # pylint: disable=broad-except  # Any damage: read TFDS.
      logging.warning("%s does not load (%s: %s): reading the TFDS files again.", path,
                      type(error).__name__, error)

  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  arrays = {}
  for split in sizes:
    decoded = tfds.as_numpy(tfds.load(name, split=split, data_dir=data_dir, batch_size=-1,
                                      download=False))
    images = np.asarray(decoded["image"], np.uint8).reshape(-1, 28, 28, 1)
    if name == "binarized_mnist":
      images = images * np.uint8(255)  # 0/1 -> 0/255, so every dataset is scaled alike.
    arrays[split] = Split(images, np.asarray(decoded["label"], np.int32)
                          if "label" in decoded else None)
  flat = {f"{split}.images": a.images for split, a in arrays.items()}
  flat.update({f"{split}.labels": a.labels for split, a in arrays.items()
               if a.labels is not None})
  temporary = None
  try:
    fd, temporary = tempfile.mkstemp(dir=builder.data_dir, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **flat)
    os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide it from a shared data dir's users.
    os.replace(temporary, path)  # Atomic: a concurrent reader sees all of it or none.
  except OSError as error:  # A read-only data dir or a full disk: every run reads TFDS.
    logging.warning("Could not cache the decoded %s arrays in %s: %s", name, path, error)
    if temporary and os.path.exists(temporary):
      os.remove(temporary)
  return arrays


def to_device(split: Split, sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """The whole split on the devices; labels are zeros when the dataset has none."""
  labels = split.labels if split.labels is not None else np.zeros(split.num_examples, np.int32)
  return {"image": jax.device_put(split.images, sharding),
          "label": jax.device_put(labels, sharding)}


def epoch_batch_indices(rng: jax.Array, epoch, num_examples: int,
                        batch_size: int) -> jax.Array:
  """(steps_per_epoch, batch_size) example indices: a fresh permutation per epoch.

  The remainder that does not fill a batch is dropped, as the seeds' readers do.
  """
  permutation = jax.random.permutation(jax.random.fold_in(rng, epoch), num_examples)
  steps_per_epoch = num_examples // batch_size
  return permutation[:steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)


def to_model_input(image_uint8: jax.Array, binarization: str, rng: jax.Array) -> jax.Array:
  """uint8 pixels -> float32 in [0, 1]; a fresh Bernoulli draw under 'dynamic'."""
  image = image_uint8.astype(jnp.float32) / 255.0
  if binarization == "dynamic":
    return jax.random.bernoulli(rng, image).astype(jnp.float32)
  return image  # 'none' (grayscale) and 'static' (pixels already 0 or 1).


@dataclasses.dataclass(frozen=True)
class DeviceData:
  """A group's data: host splits (for figures), device-resident train and eval splits."""
  splits: dict
  train: dict
  eval: dict  # "validation" and/or "test", the non-empty ones.
  steps_per_epoch: int
  num_steps: int


def load_device_data(config, mesh: jax.sharding.Mesh) -> DeviceData:
  """Loads the dataset, puts it on every device of the mesh and counts the steps."""
  num_devices = parallel.num_batch_shards(mesh)
  if config.train.batch_size % num_devices:
    raise ValueError(f"config.train.batch_size={config.train.batch_size} must be divisible "
                     f"by the number of devices ({num_devices}).")
  splits = load_splits(config.data)
  replicated = parallel.replicated(mesh)
  steps_per_epoch = splits["train"].num_examples // config.train.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"config.train.batch_size={config.train.batch_size} exceeds the "
                     f"{splits['train'].num_examples} training examples.")
  return DeviceData(
      splits=splits, train=to_device(splits["train"], replicated),
      eval={name: to_device(splits[name], replicated)
            for name in ("validation", "test") if splits[name].num_examples},
      steps_per_epoch=steps_per_epoch,
      num_steps=(config.train.num_steps
                 or config_schema.num_epochs(config) * steps_per_epoch))
