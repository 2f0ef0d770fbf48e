"""Data-pipeline throughput (``--what=pipeline``): synthetic pairs per second in-process and with
grain worker processes.

One record per measurement: ``{"what": "pipeline", "benchmark": "pipeline", "mode":
"in_process" | "grain_workers", "num_workers", "image_size", "pairs_per_second" (=
``items_per_second``), "cpu_seconds_per_pair", ...}``. ``cpu_seconds_per_pair`` (in-process) is
the per-core cost, ``1 / cpu_seconds_per_pair`` the per-core rate. The pipeline is NumPy on the
host: these figures do not depend on the JAX device.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Iterator, Optional, Sequence

from data_pipeline.config import PipelineConfig, pipeline_config_from_dict
from data_pipeline.pairs import PairSource


def _grain_rate(config: PipelineConfig, num_workers: int, num_pairs: int) -> float:
  import grain  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():  # grain's workers read absl flags.
    flags.FLAGS.mark_as_parsed()
  source = PairSource(config)
  ds = (grain.MapDataset.source(source)
        .to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4))
        .mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                  per_worker_buffer_size=4)))
  iterator = iter(ds)
  for _ in range(2 * num_workers):  # start-up: spawn, imports, model load
    next(iterator)
  start = time.perf_counter()
  for _ in range(num_pairs):
    next(iterator)
  rate = num_pairs / (time.perf_counter() - start)
  del iterator
  return rate


def benchmark_pipeline(config: Optional[PipelineConfig] = None, num_pairs: int = 60,
                       worker_counts: Sequence[int] = (1, 2)) -> Iterator[Dict[str, Any]]:
  """Yields JSON-able throughput records: in-process first, then one per grain worker count."""
  config = config or PipelineConfig()
  base = dict(benchmark="pipeline", image_size=config.image_size, num_views=config.num_views,
              num_correspondences=config.num_correspondences, face_model=str(config.face_model),
              cpu_count=os.cpu_count(), load_average_1min=os.getloadavg()[0])
  source = PairSource(config)
  source[10_000_000 % config.num_examples]  # warm-up: model load, caches
  wall, cpu = time.perf_counter(), time.process_time()
  for i in range(num_pairs):
    source[i]
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  yield dict(base, mode="in_process", num_workers=0, num_pairs=num_pairs,
             pairs_per_second=round(num_pairs / wall, 2),
             cpu_seconds_per_pair=round(cpu / num_pairs, 4),
             pairs_per_cpu_second=round(num_pairs / cpu, 2))
  for workers in worker_counts:
    rate = _grain_rate(config, int(workers), num_pairs)
    yield dict(base, mode="grain_workers", num_workers=int(workers), num_pairs=num_pairs,
               pairs_per_second=round(rate, 2))


def bench_pipeline(image_size: int = 128, num_pairs: int = 60,
                   grain_workers: Sequence[int] = (1, 2),
                   face_model: str = "default") -> Iterator[Dict[str, Any]]:
  """:func:`benchmark_pipeline` at ``image_size`` px with ``face_model``, its records with
  ``what``, ``batch_size``, ``items_per_second`` (pairs/s) and ``compile_s`` added. Sets
  ``OPENBLAS_NUM_THREADS=1`` unless set (per-core figures; grain's workers inherit it)."""
  os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
  config = pipeline_config_from_dict(image_size=int(image_size), face_model=face_model)
  for record in benchmark_pipeline(config, int(num_pairs), [int(w) for w in grain_workers]):
    yield {"what": "pipeline", "batch_size": 1,
           "items_per_second": record.get("pairs_per_second"), "compile_s": 0.0, **record}


def write_results(path: str, records: Sequence[Dict[str, Any]], face_model: str,
                  loadavg_before) -> None:
  """Writes the pipeline records (by mode: ``in_process``, ``grain_<N>_workers``), the load
  average before and after and the face model's sha256 to ``path``
  (:func:`dff_jax.provenance.write_results`; e.g. ``experiments/results/benchmark_pipeline.json``).
  """
  from dff_jax import provenance  # pylint: disable=g-import-not-at-top
  by_mode = {(r["mode"] if r["mode"] == "in_process" else f"grain_{r['num_workers']}_workers"):
             r for r in records if r.get("what") == "pipeline"}
  provenance.write_results(path, dict(
      records=by_mode, loadavg_before=loadavg_before, loadavg_after=os.getloadavg(),
      environment=dict(OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS"))),
      {"face_model": provenance.face_model_path(face_model)})
