"""Host batches -> global `jax.Array`s sharded over the mesh, a few batches ahead."""

import collections
import itertools
from typing import Iterable, Iterator

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from reskd_jax.data import shard_check


def make_global_batch(local_batch, mesh: jax.sharding.Mesh, spec: PartitionSpec):
  """Assembles each leaf's per-host slice into a global jax.Array sharded as `spec` on `mesh`."""
  sharding = NamedSharding(mesh, spec)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def prefetch_to_mesh(iterator: Iterable, mesh: jax.sharding.Mesh, size: int = 2,
                     axis: str = "data") -> Iterator:
  """Yields global batches sharded over `mesh` axis `axis` (leading dim), `size` ahead.

  `iterator` yields per-host batches (dicts of NumPy arrays); a tf.data.Dataset
  is turned into its NumPy iterator. Transfers are asynchronous, so keeping
  `size` batches in flight overlaps them with the running step.
  """
  if axis not in mesh.axis_names:
    raise ValueError(f"mesh has no axis {axis!r} (axes: {mesh.axis_names})")
  if hasattr(iterator, "as_numpy_iterator"):  # a tf.data.Dataset
    iterator = iterator.as_numpy_iterator()
  iterator = shard_check.name_damaged_shards(iterator)
  spec = PartitionSpec(axis)
  queue = collections.deque()

  def enqueue(n):
    for batch in itertools.islice(iterator, n):
      queue.append(make_global_batch(batch, mesh, spec))

  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(1)
