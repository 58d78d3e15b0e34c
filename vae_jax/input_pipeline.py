"""TFDS -> numpy -> device arrays; splits, shuffling, binarization.

Each split is read once with `tfds.load` into uint8 numpy arrays (cached decoded beside
TFDS's files, so later runs skip the image decoding) and placed on the devices whole; batches are gathered on the device from index arrays, so the training loop never
touches tf.data. Offline machines point TFDS at the original files with
`config.data.manual_dir` or `$VAE_JAX_MANUAL_DIR` (one sub-folder per TFDS dataset name).
"""

import concurrent.futures
import dataclasses
import functools
import os
import socket
import tempfile
import urllib.parse

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import config_schema
from vae_jax import image_files
from vae_jax import parallel

MANUAL_DIR_ENV = "VAE_JAX_MANUAL_DIR"
# How long to wait for a download host before declaring the machine offline.
_NETWORK_PROBE_TIMEOUT_SECONDS = 5.0


class DataError(RuntimeError):
  """The dataset is missing, unreachable or corrupt; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Split:
  """One split on the host: uint8 images (N, H, W, C) in 0..255, int32 labels or None, and
  the dataset's number of classes (0 when it has no labels)."""
  images: np.ndarray
  labels: np.ndarray | None
  num_classes: int = 0

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
  cache_key = (data_config.name, data_config.path, data_config.tfds_data_dir,
               data_config.validation_size, data_config.test_size,
               tuple(data_config.image_size), data_config.resize_method)
  if cache_key not in _LOADED:
    _LOADED[cache_key] = _load_splits(data_config)
  return _LOADED[cache_key]


# The decoded arrays of every split, kept beside TFDS's prepared files (see _tfds_arrays).
DECODED_ARRAYS_FILE = "vae_jax_decoded_arrays.npz"


# The order in which a source without its own splits (a folder, an .npz) is carved into
# test, validation and train: one fixed permutation, the same for every run and seed, so
# runs that differ in config.seed are compared on the same examples.
_SPLIT_PERMUTATION_SEED = 0


def _load_splits(data_config) -> dict[str, Split]:
  name = data_config.name
  if name in config_schema.OWN_DATA:
    read = image_files.read_folder if name == "folder" else image_files.read_npz
    images, labels, num_classes = read(data_config.path, tuple(data_config.image_size),
                                       data_config.resize_method)
    order = np.random.default_rng(_SPLIT_PERMUTATION_SEED).permutation(len(images))
    whole = Split(images[order], None if labels is None else labels[order], num_classes)
    loaded = _carve(whole, {"train": whole}, data_config, carve_test=True)
  else:
    arrays = _tfds_arrays(data_config)
    if "train" not in arrays:
      raise DataError(f"TFDS dataset {name!r} has no 'train' split (it has "
                      f"{', '.join(arrays)}); vae_jax trains on 'train'.")
    loaded = _carve(arrays["train"], arrays, data_config, carve_test="test" not in arrays)
  logging.info("Loaded %s: %s; images %s, %s.", name,
               ", ".join(f"{k} {v.num_examples}" for k, v in loaded.items()),
               "x".join(map(str, loaded["train"].images.shape[1:])),
               f"{loaded['train'].num_classes} classes" if loaded["train"].num_classes
               else "no labels")
  return loaded


def _carve(train: Split, arrays: dict[str, Split], data_config, *,
           carve_test: bool) -> dict[str, Split]:
  """{'train', 'validation', 'test'}: a split the source lacks is carved from the end of
  train, in train's (fixed) order: the last validation_size examples are validation, the
  test_size before them test (when the source has no test split)."""
  num_validation = 0 if "validation" in arrays else data_config.validation_size
  num_test = data_config.test_size if carve_test else 0
  num_train = train.num_examples - num_validation - num_test
  if num_train <= 0:
    raise ValueError(f"config.data.validation_size={data_config.validation_size} and "
                     f"config.data.test_size={data_config.test_size} leave no training "
                     f"examples of the {train.num_examples} in {data_config.name!r}: set "
                     "them smaller, e.g. --config.data.validation_size="
                     f"{train.num_examples // 10} --config.data.test_size="
                     f"{train.num_examples // 10 if carve_test else 0}.")

  def part(start: int, stop: int) -> Split:
    labels = None if train.labels is None else train.labels[start:stop]
    return Split(train.images[start:stop], labels, train.num_classes)

  return {"train": part(0, num_train),
          "validation": arrays["validation"] if "validation" in arrays
                        else part(num_train + num_test, train.num_examples),
          "test": part(num_train, num_train + num_test) if carve_test else arrays["test"]}


def _tfds_builder(data_config):
  """The prepared TFDS builder of config.data.name; refuses a name TFDS does not know."""
  import tensorflow_datasets as tfds  # Heavy (TensorFlow); only needed here.

  name = data_config.name
  try:
    builder = tfds.builder(name, data_dir=data_config.tfds_data_dir or None)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(
        f"config.data.name={name!r} is neither a TFDS dataset nor 'folder' or 'npz'. Use a "
        "TFDS image dataset's name (e.g. mnist, fashion_mnist, binarized_mnist, cifar10, "
        "svhn_cropped, celeb_a, omniglot; the list: tfds.list_builders()), or your own "
        "images with --config.data.name=folder --config.data.path=DIR.") from None
  features = builder.info.features
  if "image" not in features or not isinstance(features["image"], tfds.features.Image):
    raise DataError(f"TFDS dataset {name!r} has no 'image' feature (its features: "
                    f"{', '.join(features.keys())}); vae_jax models images.")
  if not builder.is_prepared():
    _prepare(builder, name, resolve_manual_dir(data_config))
  return builder


def _decoded_arrays_file(data_config) -> str:
  if not data_config.image_size:
    return DECODED_ARRAYS_FILE
  height, width = data_config.image_size
  return DECODED_ARRAYS_FILE.replace(
      ".npz", f"_{height}x{width}_{data_config.resize_method}.npz")


def _tfds_arrays(data_config) -> dict[str, Split]:
  """Every split of a TFDS image dataset, whole, as numpy (resized if configured).

  TFDS decodes every image on every read (70,000 PNGs for MNIST, 3-4 s of each run's start
  on a 2-core machine) and has no cache of decoded arrays that several processes can share,
  so this keeps one: DECODED_ARRAYS_FILE beside the prepared files, written atomically by
  the first read. A cache that does not load, or whose sizes disagree with the dataset's,
  is read again from TFDS and rewritten; one that cannot be written is skipped.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  name = data_config.name
  builder = _tfds_builder(data_config)
  label = builder.info.features["label"] if "label" in builder.info.features else None
  num_classes = (label.num_classes if isinstance(label, tfds.features.ClassLabel) else 0)
  path = os.path.join(builder.data_dir, _decoded_arrays_file(data_config))
  sizes = {split: info.num_examples for split, info in builder.info.splits.items()}
  # A builder without metadata (tfds.testing.mock_data) lists no splits: the usual names
  # are read, and nothing is cached.
  split_names = list(sizes) or ["train", "validation", "test"]
  if sizes and os.path.exists(path):
    try:
      with np.load(path) as cached:
        arrays = {split: Split(cached[f"{split}.images"],
                               cached[f"{split}.labels"] if f"{split}.labels" in cached
                               else None, num_classes) for split in sizes}
      if {split: a.num_examples for split, a in arrays.items()} == sizes:
        return arrays
      logging.warning("%s holds other split sizes than %s %s: reading the TFDS files again.",
                      path, name, sizes)
    except Exception as error:  # pylint: disable=broad-except  # Any damage: read TFDS.
      logging.warning("%s does not load (%s: %s): reading the TFDS files again.", path,
                      type(error).__name__, error)

  image_shape = builder.info.features["image"].shape
  if None in image_shape[:2] and not data_config.image_size:
    raise DataError(f"The images of {name!r} differ in size: set "
                    "config.data.image_size=(height, width) to resize them (and "
                    "config.data.resize_method).")
  arrays = {}
  for split in split_names:
    load = functools.partial(tfds.load, name, split=split, download=False,
                             data_dir=data_config.tfds_data_dir or None)
    if sizes and not data_config.image_size:  # TFDS decodes the split as one batch.
      decoded = tfds.as_numpy(load(batch_size=-1))
      images = np.asarray(decoded["image"], np.uint8).reshape((-1,) + tuple(image_shape))
      labels = decoded["label"] if num_classes else None
    else:  # Image by image, resized (PIL, antialiased) if configured.
      images, labels = [], []
      for example in tfds.as_numpy(load()):
        image = np.asarray(example["image"], np.uint8)
        if data_config.image_size:
          image = image_files.resize_array(image, data_config.image_size,
                                           data_config.resize_method)
        images.append(image)
        labels.append(example["label"] if num_classes else 0)
      images = np.stack(images)
    if name == "binarized_mnist":
      images = images * np.uint8(255)  # 0/1 -> 0/255, so every dataset is scaled alike.
    arrays[split] = Split(images, np.asarray(labels, np.int32) if num_classes else None,
                          num_classes)
  if not sizes:
    return arrays
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


def configured_image_shape(config) -> tuple[int, int, int]:
  """The image shape without reading the images: config.data.image_shape where set (a
  trained run's config.json records it), else the TFDS dataset's, from its metadata (runs
  written before vae_jax recorded the shape; the benchmark's synthetic data)."""
  if config.data.image_shape:
    return tuple(config.data.image_shape)
  if config.data.name in config_schema.OWN_DATA:
    raise ValueError(f"config.data.name={config.data.name!r}: the image shape is known once "
                     "the images are read; set config.data.image_shape=(H, W, C).")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  shape = tfds.builder(config.data.name, data_dir=config.data.tfds_data_dir or None
                       ).info.features["image"].shape
  if config.data.image_size:
    shape = tuple(config.data.image_size) + tuple(shape[-1:])
  if None in shape:
    raise ValueError(f"The images of {config.data.name!r} differ in size: set "
                     "config.data.image_size=(H, W).")
  return tuple(shape)


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


class HostStream:
  """A training split too large for the devices' budget: it stays on the host, and each
  dispatch's batches are gathered there (the same rows of the same epoch permutation the
  device-resident path gathers, so training gives the same numbers) and sent to the
  devices, the next dispatch's while the current one runs.

  The order is fixed before the epoch starts, so a batch is numpy fancy indexing plus one
  transfer; one prefetch thread is all a loader (tf.data, grain) would add here.
  """

  def __init__(self, split: Split, sharding: jax.sharding.Sharding):
    self.split, self.sharding = split, sharding
    self.labels = (split.labels if split.labels is not None
                   else np.zeros(split.num_examples, np.int32))
    self._epoch = (None, None)  # (the device epoch indices, their host copy)
    self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    self._prefetched = None  # ((host copy's id, first row, count), future)

  def _gather(self, host_indices: np.ndarray, first_row: int, count: int):
    rows = host_indices[..., first_row:first_row + count, :]
    flat = rows.reshape(-1)
    # The chunk's own indices, at the rows the program reads (state.step % steps).
    positions = np.zeros(host_indices.shape, np.int32)
    positions[..., first_row:first_row + count, :] = np.arange(
        flat.size, dtype=np.int32).reshape(rows.shape)
    chunk = {"image": self.split.images[flat], "label": self.labels[flat]}
    return jax.device_put(chunk, self.sharding), jax.device_put(positions, self.sharding)

  def batches(self, epoch_indices: jax.Array, first_row: int, count: int):
    """(dataset, epoch indices) for the train program's `count` steps from the epoch's
    row `first_row`: the chunk of examples they use, and indices into it."""
    if self._epoch[0] is not epoch_indices:
      self._epoch = (epoch_indices, np.asarray(jax.device_get(epoch_indices)))
    host = self._epoch[1]
    key = (id(host), first_row, count)
    if self._prefetched is not None and self._prefetched[0] == key:
      result = self._prefetched[1].result()
    else:
      result = self._gather(host, first_row, count)
    following = first_row + count
    self._prefetched = ((id(host), following, count),
                        self._executor.submit(self._gather, host, following, count)
                        ) if following + count <= host.shape[-2] else None
    return result


@dataclasses.dataclass(frozen=True)
class DeviceData:
  """A group's data: host splits (for figures), the train split on the devices (or, over
  config.data.max_device_mb, `stream` from the host), device-resident eval splits."""
  splits: dict
  train: dict | None
  eval: dict  # "validation" and/or "test", the non-empty ones.
  steps_per_epoch: int
  num_steps: int
  stream: HostStream | None = None

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.splits["train"].images.shape[1:])

  @property
  def num_classes(self) -> int:
    return self.splits["train"].num_classes


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
  train_mb = splits["train"].images.nbytes / 2 ** 20
  stream = None
  if train_mb > config.data.max_device_mb:
    logging.info("The training split (%d images, %.0f MB) exceeds config.data.max_device_mb="
                 "%g: it stays on the host, and each dispatch's batches are sent to the "
                 "devices, the next one's while the current one runs.",
                 splits["train"].num_examples, train_mb, config.data.max_device_mb)
    stream = HostStream(splits["train"], replicated)
  return DeviceData(
      splits=splits, stream=stream,
      train=None if stream else to_device(splits["train"], replicated),
      eval={name: to_device(splits[name], replicated)
            for name in ("validation", "test") if splits[name].num_examples},
      steps_per_epoch=steps_per_epoch,
      num_steps=(config.train.num_steps
                 or config_schema.num_epochs(config) * steps_per_epoch))
