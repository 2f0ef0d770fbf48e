"""Data-pipeline throughput: pairs per second in-process and with grain worker processes.

  python -m experiments.benchmark_pipeline [--image_size=128] [--num_pairs=60] [--workers=1,2] \
      [--results=FILE.json]

Prints one JSON line per measurement: ``{"benchmark": "pipeline", "mode": "in_process" |
"grain_workers", "num_workers", "image_size", "pairs_per_second", "cpu_seconds_per_pair", ...}``.
``benchmark_pipeline(...)`` is the importable generator the lead's ``experiments/benchmark.py``
merges. Note: figures depend on the machine's load; ``cpu_seconds_per_pair`` (in-process) is the
per-core cost, ``1 / cpu_seconds_per_pair`` the per-core rate.
"""

from __future__ import annotations

import json
import os
import time
from typing import Iterator, Optional, Sequence

from absl import app, flags

from data_pipeline.config import PipelineConfig, pipeline_config_from_dict
from data_pipeline.pairs import PairSource

FLAGS = flags.FLAGS
def _grain_rate(config: PipelineConfig, num_workers: int, num_pairs: int) -> float:
  import grain  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
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
                       worker_counts: Sequence[int] = (1, 2)) -> Iterator[dict]:
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


def _define_flags() -> None:
  """Flags of the stand-alone command (not defined on import; see experiments.benchmark)."""
  flags.DEFINE_integer("image_size", 128, "H = W")
  flags.DEFINE_integer("num_pairs", 60, "pairs timed per measurement")
  flags.DEFINE_list("workers", ["1", "2"], "grain worker-process counts to measure")
  flags.DEFINE_string("face_model", "default", "default | ict | sfm | PATH")
  flags.DEFINE_string("results", None, "Also write the records, the load average and the face "
                      "model's sha256 to this JSON file (e.g. experiments/results/"
                      "benchmark_pipeline.json).")


def main(argv):
  del argv
  os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
  config = pipeline_config_from_dict(image_size=FLAGS.image_size, face_model=FLAGS.face_model)
  records = []
  loadavg_before = os.getloadavg()
  for record in benchmark_pipeline(config, FLAGS.num_pairs, [int(w) for w in FLAGS.workers]):
    print(json.dumps(record), flush=True)
    records.append(record)
  if FLAGS.results:
    from dff_jax import provenance  # pylint: disable=g-import-not-at-top
    by_mode = {(r["mode"] if r["mode"] == "in_process" else f"grain_{r['num_workers']}_workers"):
               r for r in records}
    provenance.write_results(FLAGS.results, dict(
        records=by_mode, loadavg_before=loadavg_before, loadavg_after=os.getloadavg(),
        environment=dict(OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS"))),
        {"face_model": provenance.face_model_path(FLAGS.face_model)})


if __name__ == "__main__":
  _define_flags()
  app.run(main)
