"""Meshes and shardings of the trainers: one code path for one CPU core, 8 fake devices and a
multi-host pod (the ``Mesh`` part of :mod:`dff_jax.train`'s description).

A ``("data", "fsdp")`` mesh over all devices; the batch is split over both axes; parameters and
optimizer state are replicated or each leaf is split along its largest axis that divides by the
``fsdp`` size; per-process numpy batches become global ``jax.Array`` s.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


def create_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """``("data", "fsdp")`` mesh over all devices.

  ``config.sharding.params == "replicated"``: shape ``(devices, 1)``, pure data parallelism.
  ``"fsdp"``: ``config.sharding.fsdp`` devices per parameter-sharding group (0 or 1 = all
  devices), the rest data parallel. The batch is split over both axes either way.
  """
  num_devices = jax.device_count()
  fsdp = int(config.sharding.get("fsdp", 0) or 0)
  if config.sharding.params == "replicated":
    fsdp = 1
  elif fsdp <= 1:
    fsdp = num_devices  # "fsdp" without a group size: shard over all devices.
  if num_devices % fsdp:
    raise ValueError(f"config.sharding.fsdp={fsdp} does not divide the {num_devices} devices.")
  auto = (jax.sharding.AxisType.Auto,) * 2
  return jax.make_mesh((num_devices // fsdp, fsdp), ("data", "fsdp"), axis_types=auto)


def _leaf_spec(shape: Tuple[int, ...], fsdp: int) -> P:
  """Shard the largest axis that divides by ``fsdp`` over "fsdp"; replicate small leaves."""
  if fsdp == 1 or int(np.prod(shape)) < 1024:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % fsdp == 0:
      spec = [None] * len(shape)
      spec[axis] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                    abstract_state: Any) -> Any:
  """A ``NamedSharding`` per leaf of the state: replicated or fsdp (``config.sharding.params``)."""
  mode = config.sharding.params
  if mode not in ("replicated", "fsdp"):
    raise ValueError(f"config.sharding.params must be 'replicated' or 'fsdp', got {mode!r}.")
  fsdp = mesh.shape["fsdp"] if mode == "fsdp" else 1
  return jax.tree.map(lambda x: NamedSharding(mesh, _leaf_spec(tuple(x.shape), fsdp)),
                      abstract_state)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device of the mesh."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def compiler_options(config: ml_collections.ConfigDict) -> Optional[Dict[str, Any]]:
  """XLA options of every jit: ``config.xla_fast_compile`` turns off LLVM optimisation
  (``xla_backend_optimization_level=0``), which cuts CPU compile time ~8x (tiny nets, tests)
  at some cost in run time."""
  if config.get("xla_fast_compile", False):
    return {"xla_backend_optimization_level": 0}
  return None


def to_global_batch(local_batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh
                    ) -> Dict[str, jax.Array]:
  """Per-process numpy batch (this process's rows) -> global ``jax.Array`` s over the mesh."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}
