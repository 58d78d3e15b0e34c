"""Data parallelism: the mesh, replication, per-example keys, and padded batches of a split.

One 1-D mesh over every device, axis "batch". Parameters are replicated; batches are
split along "batch". Example i of a global batch draws its randomness from
fold_in(key, i), with i its index in the batch (training) or in the split (evaluation),
so no result depends on how many devices share the work.
"""

from collections.abc import Iterator

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

BATCH_AXIS = "batch"


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh over all devices (or `devices`), axis "batch": the data-parallel axis."""
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(np.asarray(devices), (BATCH_AXIS,))


def num_batch_shards(mesh: jax.sharding.Mesh) -> int:
  return mesh.shape[BATCH_AXIS]


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading axis split over the mesh's "batch" axis."""
  return NamedSharding(mesh, P(BATCH_AXIS))


def replicate(tree, mesh: jax.sharding.Mesh):
  """Places a pytree on every device of the mesh, sharded as the jitted steps return it."""
  return jax.device_put(tree, replicated(mesh))


def example_keys(rng: jax.Array, indices: jax.Array) -> jax.Array:
  """fold_in(rng, i) for each index i: one key per example, from its index alone."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, indices)


def padded_batches(num_examples: int, batch_size: int, mesh: jax.sharding.Mesh | None = None
                   ) -> Iterator[tuple[jax.Array | np.ndarray, jax.Array | np.ndarray, int]]:
  """(indices, mask, count) for consecutive batches covering a split of `num_examples`.

  Every batch has the same size -- `batch_size` rounded up to a multiple of the mesh's
  devices -- so one compiled program serves them all: the last batch is padded with
  index 0 and `mask` False there; `count` is its number of real examples. With a
  `mesh`, indices (int32) and mask are placed split over its "batch" axis; without,
  they are numpy arrays.
  """
  shards = num_batch_shards(mesh) if mesh is not None else 1
  batch_size = -(-batch_size // shards) * shards
  for start in range(0, num_examples, batch_size):
    indices = np.arange(start, start + batch_size)
    mask = indices < num_examples
    indices = np.where(mask, indices, 0).astype(np.int32)
    if mesh is not None:
      indices, mask = jax.device_put((indices, mask), batch_sharded(mesh))
    yield indices, mask, min(batch_size, num_examples - start)
