"""Speed benchmarks: one JSON object per line per measurement.

Command (from the repository root)::

  python -m experiments.benchmark --what=encoder

Every run first times a large float32 matmul (``what = "matmul_peak"``) to give the machine's
practical FLOP/s peak in the same conditions, then runs the requested benchmarks. Each line has
at least ``what``, ``batch_size``, ``items_per_second`` and ``compile_s``.

``--what=encoder``: forward (``mode = "forward"``) and forward+backward (``mode = "train"``, the
gradient of a descriptor loss with respect to the parameters, i.e. the encoder part of a train
step) of :class:`dff_jax.encoder.DFFEncoder` for the cases in ``--encoder_cases`` (see
:data:`ENCODER_CASES`) at each ``--batch_sizes``. Fields: ``case``, ``mode``, ``image_size``,
``channels``, ``features``, ``params``, ``step_s`` (median), ``items_per_second`` (images/s),
``gflop_per_item`` and ``achieved_gflops`` (from XLA's cost analysis of the compiled
computation), ``utilisation`` (of the matmul peak: the best 2048^2 float32 matmul seen so far
in the run, ``peak_gflops``), ``compile_s`` (lower + compile),
``cpu_s`` (median process CPU time per step, all threads: robust to other load on a shared
machine) and ``items_per_cpu_second``, ``temp_mb`` / ``argument_mb`` (compiled memory
analysis) and ``maxrss_mb`` (process peak so far).
Calls whose estimated time exceeds ``--max_run_s`` or whose temporaries exceed ``--max_temp_gb``
are reported with ``skipped`` (e.g. the paper-size train step at batch 32 on a 2-core CPU).

``--what=train_step``: the whole jitted DFF train step of ``--train_config`` (default
``experiments/configs/dff_cpu.py``) at each ``--batch_sizes`` (pairs), e.g.
``python -m experiments.benchmark --what=train_step --batch_sizes=4``: ``steps_per_second``,
``images_per_second`` (= ``items_per_second``), ``cpu_seconds_per_step``, ``flops_per_step``.

To add a benchmark: write ``def bench_name() -> Iterator[dict]`` and register it in
:data:`BENCHMARKS`.

Note: timings on a shared machine vary with other load; ``loadavg`` is recorded in each line.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import time
from typing import Any, Callable, Dict, Iterator, Mapping

from absl import app
from absl import flags

import jax
import jax.numpy as jnp

from dff_jax import encoder as encoder_lib
from dff_jax.benchmarking import ENCODER_CASES, memory_mb, time_call
from dff_jax.benchmarking import flops as compiled_flops

_WHAT = flags.DEFINE_list("what", ["encoder"], "Benchmarks to run (comma separated), from: "
                          "encoder, train_step.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "32"], "Batch sizes.")
_ENCODER_CASES = flags.DEFINE_list("encoder_cases", ["cpu_gray", "cpu_rgb", "paper"],
                                   "Encoder cases (keys of ENCODER_CASES).")
_MODES = flags.DEFINE_list("modes", ["forward", "train"], "forward and/or train.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per measurement (median reported).")
_MAX_RUN_S = flags.DEFINE_float(
    "max_run_s", 150.0, "Time budget per measurement: calls estimated (from their FLOPs at 25% "
    "of the matmul peak) to take longer are skipped; long calls get fewer repeats.")
_MAX_TEMP_GB = flags.DEFINE_float(
    "max_temp_gb", 8.0, "Skip a measurement whose compiled temporaries exceed this many GB.")
_MATMUL_SIZE = flags.DEFINE_integer("matmul_size", 2048, "Side of the square peak matmul.")

_PEAK_FLOPS: Dict[str, float] = {}


def _emit(record: Mapping[str, Any]) -> None:
  print(json.dumps(record), flush=True)


def _maxrss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux.


def _loadavg() -> float:
  return round(os.getloadavg()[0], 2)


def matmul_peak(size: int, repeats: int, emit: bool = True) -> float:
  """Times a float32 ``[size, size] @ [size, size]`` and emits / returns its FLOP/s.

  The peak is the *best* of the timed calls (the machine's capability, as little disturbed by
  other load as possible)."""
  key_a, key_b = jax.random.split(jax.random.key(0))
  a = jax.random.normal(key_a, (size, size), jnp.float32)
  b = jax.random.normal(key_b, (size, size), jnp.float32)
  start = time.perf_counter()
  compiled = jax.jit(jnp.dot).lower(a, b).compile()
  compile_s = time.perf_counter() - start
  seconds, cpu_seconds = time_call(lambda: compiled(a, b), max(repeats, 10), reduce=min)
  flops = 2.0 * size ** 3
  if emit:
    _emit({"what": "matmul_peak", "batch_size": 1, "size": size,
           "items_per_second": round(1.0 / seconds, 3), "compile_s": round(compile_s, 3),
           "step_s": round(seconds, 5), "cpu_s": round(cpu_seconds, 5),
           "achieved_gflops": round(flops / seconds / 1e9, 1),
           "gflop_per_cpu_s": round(flops / cpu_seconds / 1e9, 1),
           "devices": str(jax.devices()), "cpu_count": os.cpu_count(), "loadavg": _loadavg()})
  return flops / seconds


def bench_encoder() -> Iterator[Dict[str, Any]]:
  """Forward and forward+backward throughput of the DFF encoder cases."""
  for case_name in _ENCODER_CASES.value:
    if case_name not in ENCODER_CASES:
      raise ValueError(f"Unknown encoder case {case_name!r}; known: {sorted(ENCODER_CASES)}.")
    case = dict(ENCODER_CASES[case_name])
    size, channels = case.pop("image_size"), case.pop("channels")
    module = encoder_lib.DFFEncoder(**case)
    params = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, size, size, channels)))
    num_params = encoder_lib.count_params(params)

    def forward(p, images):
      return module.apply(p, images)

    def train(p, images, target):
      # Gradient of a descriptor loss: the encoder's share of a train step.
      def loss(q):
        return jnp.mean(jnp.sum(module.apply(q, images) * target, axis=-1))
      return jax.value_and_grad(loss)(p)

    for mode in _MODES.value:
      for batch_size in map(int, _BATCH_SIZES.value):
        # Re-measured before each measurement: load on a shared machine changes over time.
        peak = max(_PEAK_FLOPS["float32"], matmul_peak(_MATMUL_SIZE.value, 3, emit=False))
        _PEAK_FLOPS["float32"] = peak
        key = jax.random.key(batch_size)
        images = jax.random.normal(key, (batch_size, size, size, channels), jnp.float32)
        args = (params, images)
        fn = forward
        if mode == "train":
          target = jax.random.normal(key, (batch_size, size, size, module.descriptor_dim))
          args, fn = (params, images, target), train
        elif mode != "forward":
          raise ValueError(f"Unknown mode {mode!r}; use forward or train.")
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(*args).compile()
        compile_s = time.perf_counter() - start
        flops = compiled_flops(compiled)
        record = {"what": "encoder", "case": case_name, "mode": mode, "batch_size": batch_size,
                  "image_size": size, "channels": channels, "features": list(module.features),
                  "convs_per_level": module.convs_per_level,
                  "descriptor_dim": module.descriptor_dim, "upsample": module.upsample,
                  "norm": module.norm, "dtype": jnp.dtype(module.dtype).name,
                  "params": num_params, "compile_s": round(compile_s, 2),
                  "gflop_per_item": round(flops / batch_size / 1e9, 3), **memory_mb(compiled)}
        single_s = flops / (0.25 * peak)  # Pessimistic estimate of one call.
        temp_gb = record.get("temp_mb", 0.0) / 1024.0
        if single_s > _MAX_RUN_S.value or temp_gb > _MAX_TEMP_GB.value:
          record.update(items_per_second=None, skipped=(
              f"estimated {single_s:.0f} s per call (limit --max_run_s={_MAX_RUN_S.value:.0f}), "
              f"{temp_gb:.1f} GB temporaries (limit --max_temp_gb={_MAX_TEMP_GB.value:.0f})"))
          yield record
          continue
        # Long calls: skip the warm-up and time fewer repeats to stay within --max_run_s.
        warmup = single_s < 10.0
        repeats = max(1, min(_REPEATS.value, int(_MAX_RUN_S.value / single_s) - int(warmup)))
        call = functools.partial(compiled, *args)
        seconds, cpu_seconds = time_call(call, repeats, warmup)
        record["repeats"] = repeats
        record.update(step_s=round(seconds, 4), cpu_s=round(cpu_seconds, 4),
                      items_per_cpu_second=round(batch_size / cpu_seconds, 2),
                      items_per_second=round(batch_size / seconds, 2),
                      achieved_gflops=round(flops / seconds / 1e9, 1),
                      utilisation=round(flops / seconds / peak, 3),
                      peak_gflops=round(peak / 1e9, 1),
                      maxrss_mb=round(_maxrss_mb(), 1), loadavg=_loadavg())
        yield record


_TRAIN_CONFIG = flags.DEFINE_string(
    "train_config", "experiments/configs/dff_cpu.py",
    "--what=train_step: experiment config file (get_config()) whose train step is timed at each "
    "--batch_sizes (pairs per step; 2 images per pair).")


def bench_train_step() -> Iterator[Dict[str, Any]]:
  """The full jitted DFF train step (encoder + patch / InfoNCE loss + AdamW) on a synthetic
  batch: ``dff_jax.train.benchmark_train_step``; ``items_per_second`` is images/s."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  from dff_jax import train  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("train_config", _TRAIN_CONFIG.value)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for batch_size in map(int, _BATCH_SIZES.value):
    config = module.get_config()
    config.global_batch_size = batch_size
    result = train.benchmark_train_step(config, num_steps=_REPEATS.value)
    yield {"what": "train_step", "config": _TRAIN_CONFIG.value, "batch_size": batch_size,
           "items_per_second": round(result["images_per_second"], 3),
           "compile_s": round(result["compile_seconds"], 2),
           "gflop_per_item": round(result["flops_per_step"] / (2 * batch_size) / 1e9, 3),
           "loadavg": _loadavg(),
           **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}}


def bench_align() -> Iterator[Dict[str, Any]]:
  """The alignment cascade: the loop alone (given descriptor maps) and end to end (images and
  boxes in), at each ``--batch_sizes`` (see :mod:`experiments.benchmark_align`)."""
  from experiments import benchmark_align  # pylint: disable=g-import-not-at-top
  yield from benchmark_align.benchmark_align(
      batch_sizes=[int(b) for b in _BATCH_SIZES.value], repeats=_REPEATS.value)


def bench_pipeline() -> Iterator[Dict[str, Any]]:
  """Synthetic pairs per second at 128 px, in-process and with 1 and 2 grain workers
  (see :mod:`experiments.benchmark_pipeline`)."""
  from experiments import benchmark_pipeline  # pylint: disable=g-import-not-at-top
  for record in benchmark_pipeline.benchmark_pipeline(num_pairs=60, worker_counts=(1, 2)):
    yield {"what": "pipeline", "batch_size": 1,
           "items_per_second": record.get("pairs_per_second"), "compile_s": 0.0, **record}


def bench_stream() -> Iterator[Dict[str, Any]]:
  """``experiments.align`` streaming a folder of 1,000 face images (decode, align, write) against
  the jitted call alone on the same batches, at batch 64 (see :mod:`experiments.benchmark_stream`;
  the images are rendered once and cached under the temporary folder)."""
  from experiments import benchmark_stream  # pylint: disable=g-import-not-at-top
  yield from benchmark_stream.bench_stream()


def bench_remat() -> Iterator[Dict[str, Any]]:
  """Memory of differentiating the whole pipeline (encoder + cascade + loss), forward vs backward,
  without and with rematerialisation (see :mod:`experiments.benchmark_remat`)."""
  from experiments import benchmark_remat  # pylint: disable=g-import-not-at-top
  yield from benchmark_remat.bench_remat()


# name -> generator of records. Add new benchmarks here.
BENCHMARKS: Dict[str, Callable[[], Iterator[Dict[str, Any]]]] = {
    "encoder": bench_encoder,
    "train_step": bench_train_step,
    "align": bench_align,
    "pipeline": bench_pipeline,
    "stream": bench_stream,
    "remat": bench_remat,
}


def main(argv):
  del argv
  unknown = [w for w in _WHAT.value if w not in BENCHMARKS]
  if unknown:
    raise app.UsageError(f"Unknown --what {unknown}; known: {sorted(BENCHMARKS)}.")
  _PEAK_FLOPS["float32"] = matmul_peak(_MATMUL_SIZE.value, _REPEATS.value)
  for what in _WHAT.value:
    for record in BENCHMARKS[what]():
      _emit(record)


if __name__ == "__main__":
  app.run(main)
