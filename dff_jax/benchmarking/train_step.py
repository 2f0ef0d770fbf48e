"""The jitted DFF train step timed on a synthetic batch (``--what=train_step``; no data
pipeline)."""

from __future__ import annotations

import time
from typing import Dict

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from dff_jax import train as train_lib
from dff_jax.training import sharding as sharding_lib


def synthetic_batch(config: ml_collections.ConfigDict, batch_size: int, num_vertices: int,
                    seed: int = 0) -> Dict[str, np.ndarray]:
  """A random batch with the shapes and dtypes of :func:`dff_jax.training.data.select_fields` (for benchmarks): a
  centred disc of face pixels with random vertex ids in ``[0, num_vertices)``."""
  rng = np.random.default_rng(seed)
  size, k = int(config.data.image_size), int(config.data.num_correspondences)
  yy, xx = np.mgrid[:size, :size]
  face = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2
  vertex_ids = rng.integers(0, num_vertices, (batch_size, 2, size, size)).astype(np.int32)
  vertex_ids = np.where(face, vertex_ids, -1)
  points = rng.uniform(0.3 * size, 0.7 * size, (batch_size, 2, k, 2)).astype(np.float32)
  return {"images": rng.integers(0, 256, (batch_size, 2, size, size, 3), dtype=np.uint8),
          "vertex_ids": vertex_ids, "points_a_px": points[:, 0], "points_b_px": points[:, 1],
          "valid": np.ones((batch_size, k), bool)}


def benchmark_train_step(config: ml_collections.ConfigDict, num_steps: int = 10,
                         num_vertices: int = 4096) -> Dict[str, float]:
  """Times the jitted train step on a synthetic batch (no data pipeline).

  Returns ``{"compile_seconds", "seconds_per_step", "steps_per_second", "images_per_second",
  "pairs_per_second", "global_batch_size", "image_size", "num_devices", "flops_per_step",
  "cpu_seconds_per_step"}`` (``flops_per_step`` from XLA's cost analysis, -1 if unavailable;
  ``cpu_seconds_per_step`` is process CPU time over all threads, less sensitive than wall time
  to other load on a shared machine). An image is one view; a pair is two.
  """
  mesh = sharding_lib.create_mesh(config)
  state, shardings = train_lib.create_sharded_state(config, mesh)
  batch_size = int(config.global_batch_size)
  if train_lib.uses_patch_loss(config):
    table = np.random.default_rng(0).integers(
        0, int(config.loss.num_patches), (int(config.loss.num_segmentations), num_vertices))
  else:
    table = np.zeros((1, 1))
  patch_table = jax.device_put(table.astype(np.int32), NamedSharding(mesh, P()))
  train, _ = train_lib.make_jitted_steps(config, mesh, shardings)
  local = synthetic_batch(config, batch_size // jax.process_count(), num_vertices)
  batch = sharding_lib.to_global_batch(local, mesh)
  start = time.time()
  compiled = train.lower(state, batch, patch_table).compile()
  flops = -1.0
  try:
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    flops = float(analysis.get("flops", -1.0))
  except Exception:  # pylint: disable=broad-except
    pass
  state, metrics = train(state, batch, patch_table)
  jax.block_until_ready(metrics)
  compile_seconds = time.time() - start
  start, cpu_start = time.time(), time.process_time()
  for _ in range(num_steps):
    state, metrics = train(state, batch, patch_table)
  jax.block_until_ready((state, metrics))
  seconds = (time.time() - start) / num_steps
  cpu_seconds = (time.process_time() - cpu_start) / num_steps
  return {"compile_seconds": compile_seconds, "seconds_per_step": seconds,
          "steps_per_second": 1.0 / seconds, "images_per_second": 2 * batch_size / seconds,
          "pairs_per_second": batch_size / seconds, "global_batch_size": batch_size,
          "image_size": int(config.data.image_size), "num_devices": jax.device_count(),
          "flops_per_step": flops, "cpu_seconds_per_step": cpu_seconds}
