"""The benchmarks of ``python -m experiments.benchmark --what=...``, as library functions.

Each benchmark is a generator of JSON-able records (one per measurement), registered in
:data:`BENCHMARKS` (``what`` -> ``"module:function"`` under this package, imported when run):

* ``encoder`` / ``train_step`` (:mod:`.encoder`): the DFF encoder forward and forward+backward,
  its achieved GFLOP/s as a fraction of the float32 matmul peak measured in the same run; the
  whole jitted DFF train step.
* ``align`` (:mod:`.align`): the alignment cascade, the loop alone (faces/s) and end to end.
* ``pipeline`` (:mod:`.pipeline`): synthetic pairs per second, in-process and with grain workers.
* ``stream`` (:mod:`.stream`): the streaming align command over a folder (ms per face), the
  jitted call alone on the same batches, and dlib's predictor on the same boxes when ``dlib`` is
  importable (a ratio; optional).
* ``remat`` (:mod:`.remat`): compiled memory of differentiating the pipeline, with and without
  rematerialisation.
* ``aligner`` (:mod:`.aligner`): the public ``dff_jax.Aligner.align``, with and without detection.
* ``loop_profile`` (:mod:`.loop_profile`): each part of one cascade stage timed alone (where the
  loop's time goes), then the whole loop, on dense maps or point fields.

:func:`run_benchmarks` times the matmul peak first (record ``what = "matmul_peak"``), then runs
the requested benchmarks; every record names the device it ran on (:func:`device_fields`).
Nothing here assumes a CPU: timings block on the device's results
(``jax.block_until_ready``), memory figures come from XLA's compiled memory analysis where the
backend gives one, and host figures (``cpu_s``, ``loadavg``, ``maxrss_mb``) describe the calling
process.

This module also holds the helpers the benchmarks share: the encoder cases measured, the FLOPs
and compiled memory of a call, timing a call (wall and process CPU seconds).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import resource
import statistics
import time
from typing import Any, Callable, Dict, Iterable, Iterator, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from dff_jax import encoder as encoder_lib

# Encoder cases: DFFEncoder keyword arguments plus image_size and channels.
_DFF_POINT = dict(encoder_lib.PRESETS["cpu"], features=(16, 32, 64, 128), head="point",
                  head_hidden=128)

ENCODER_CASES: Mapping[str, Mapping[str, Any]] = {
    "cpu_gray": dict(encoder_lib.PRESETS["cpu"]),
    "cpu_rgb": dict(encoder_lib.PRESETS["cpu"], channels=3),
    "paper": dict(encoder_lib.PRESETS["paper"]),
    # Lighter candidates for CPU training.
    "cpu_small": dict(encoder_lib.PRESETS["cpu"], features=(16, 32, 64, 96)),
    # The encoder of experiments/configs/dff_cpu.py.
    "dff_cpu": dict(encoder_lib.PRESETS["cpu"], features=(16, 32, 64, 128)),
    "cpu_medium": dict(encoder_lib.PRESETS["cpu"], features=(24, 48, 96, 128)),
    "cpu_1conv": dict(encoder_lib.PRESETS["cpu"], convs_per_level=1),
    "cpu_small_1conv": dict(encoder_lib.PRESETS["cpu"], features=(16, 32, 64, 128),
                            convs_per_level=1),
    "cpu_3level": dict(encoder_lib.PRESETS["cpu"], features=(32, 64, 128)),
    "cpu_nearest": dict(encoder_lib.PRESETS["cpu"], upsample="nearest"),
    # The point-head encoder of experiments/configs/dff_point.py (its forward is the pyramid;
    # the head runs where the cascade reads it).
    "dff_point": _DFF_POINT,
    # The fast pair's encoder before the students below: the same network on 96-px crops.
    "dff_point_fast": dict(_DFF_POINT, image_size=96),
    # The same two with every 3x3 convolution XLA's own (conv = "xla"; the others choose per
    # layer, dff_jax.convolution.conv3x3_algorithm).
    "dff_point_xla_conv": dict(_DFF_POINT, conv="xla"),
    "dff_point_fast_xla_conv": dict(_DFF_POINT, image_size=96, conv="xla"),
    # experiments/configs/finetune_student_l0.py's student: one convolution at the finest level
    # (the fast pair's encoder since f811fec).
    "dff_point_fast_l0": dict(_DFF_POINT, image_size=96, convs_per_level=(1, 2, 2, 2)),
    # experiments/configs/finetune_student_l1.py's student: one convolution at the two finest.
    "dff_point_fast_l1": dict(_DFF_POINT, image_size=96, convs_per_level=(1, 1, 2, 2)),
    # The same with bfloat16 operands in its products (align --matmul_dtype=bfloat16).
    "dff_point_fast_l1_bf16": dict(_DFF_POINT, image_size=96, convs_per_level=(1, 1, 2, 2),
                                   matmul_dtype="bfloat16"),
    "cpu_nonorm": dict(encoder_lib.PRESETS["cpu"], norm="none"),
    "cpu_bf16": dict(encoder_lib.PRESETS["cpu"], dtype=jnp.bfloat16),
    "paper_bf16": dict(encoder_lib.PRESETS["paper"], dtype=jnp.bfloat16),
}

# what -> "module:function" (module under dff_jax.benchmarking). Add new benchmarks here: a
# generator of records whose keyword arguments are the options it takes (see run_benchmarks).
BENCHMARKS: Mapping[str, str] = {
    "encoder": "encoder:bench_encoder",
    "train_step": "encoder:bench_train_step",
    "align": "align:bench_align",
    "pipeline": "pipeline:bench_pipeline",
    "stream": "stream:bench_stream",
    "remat": "remat:bench_remat",
    "aligner": "aligner:bench_aligner",
    "loop_profile": "loop_profile:bench_loop_profile",
}


def flops(compiled) -> float:
  """The FLOPs XLA's cost analysis gives for a compiled call (``0.0`` when it does not say)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", 0.0))


def memory_mb(compiled) -> Dict[str, float]:
  """The compiled call's temporaries, arguments and outputs in MB (``{}`` where the backend does
  not say)."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # Not available on every backend.
    return {}
  if stats is None:
    return {}
  mb = 1024.0 ** 2
  return {"temp_mb": round(stats.temp_size_in_bytes / mb, 1),
          "argument_mb": round(stats.argument_size_in_bytes / mb, 1),
          "output_mb": round(stats.output_size_in_bytes / mb, 1)}


def time_call(fn: Callable[[], Any], repeats: int, warmup: bool = True,
              reduce: Callable[[Sequence[float]], float] = statistics.median) -> Tuple[float, float]:
  """``(median wall s, median process CPU s)`` (or another ``reduce``) of ``fn()`` (blocked
  until ready), after one warm-up call unless ``warmup`` is False. CPU time (all threads of this
  process) is less sensitive to other load on a shared machine than wall time; on an idle
  machine ``cpu_s ~ wall_s * cores used``."""
  if warmup:
    jax.block_until_ready(fn())
  times, cpu_times = [], []
  for _ in range(repeats):
    start, cpu_start = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
    cpu_times.append(time.process_time() - cpu_start)
  return reduce(times), reduce(cpu_times)


def loadavg() -> float:
  """The host's 1-minute load average (other load on a shared machine)."""
  return round(os.getloadavg()[0], 2)


def maxrss_mb() -> float:
  """This process's peak resident memory so far (MB; Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def children_cpu_s() -> float:
  """CPU seconds (user + system) of this process's finished and joined child processes (worker
  processes of a benchmark)."""
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def device_fields() -> Dict[str, Any]:
  """``device_kind``, ``platform`` and ``device_count`` of the first JAX device (what every
  record names)."""
  device = jax.devices()[0]
  return {"device_kind": device.device_kind, "platform": device.platform,
          "device_count": jax.device_count()}


def matmul_peak(size: int = 2048, repeats: int = 3, dtype: str = "float32"
                ) -> Tuple[float, Dict[str, Any]]:
  """Times a ``[size, size] @ [size, size]`` product (``jnp.dot``) on the default device, its
  operands in ``dtype`` (``"float32"``, or ``"bfloat16"`` accumulated in float32: the peak of
  an encoder with ``matmul_dtype="bfloat16"``).

  The peak is the *best* of at least 10 timed calls (the machine's capability, as little
  disturbed by other load as possible).

  Returns:
    ``(FLOP/s, record)``, the record with ``what = "matmul_peak"``, ``achieved_gflops``, ...
  """
  key_a, key_b = jax.random.split(jax.random.key(0))
  a = jax.random.normal(key_a, (size, size), jnp.float32).astype(dtype)
  b = jax.random.normal(key_b, (size, size), jnp.float32).astype(dtype)
  start = time.perf_counter()
  product = functools.partial(jnp.dot, preferred_element_type=jnp.float32)
  compiled = jax.jit(product).lower(a, b).compile()
  compile_s = time.perf_counter() - start
  seconds, cpu_seconds = time_call(lambda: compiled(a, b), max(repeats, 10), reduce=min)
  count = 2.0 * size ** 3
  record = {"what": "matmul_peak", "batch_size": 1, "size": size, "dtype": dtype,
            "items_per_second": round(1.0 / seconds, 3), "compile_s": round(compile_s, 3),
            "step_s": round(seconds, 5), "cpu_s": round(cpu_seconds, 5),
            "achieved_gflops": round(count / seconds / 1e9, 1),
            "gflop_per_cpu_s": round(count / cpu_seconds / 1e9, 1),
            "devices": str(jax.devices()), "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(), "loadavg": loadavg()}
  return count / seconds, record


def cpu_model() -> Optional[str]:
  """The host CPU's model name (Linux ``/proc/cpuinfo``; ``None`` elsewhere). The machines this
  project is measured on change between sessions (an AMD EPYC, an Intel Xeon), so timings
  compare only within one model."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
      for line in cpuinfo:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return None


class PeakFlops:
  """The best matmul FLOP/s seen so far in a run, operands in ``dtype`` (float32 unless said;
  re-measured on demand: load on a shared machine changes over time)."""

  def __init__(self, size: int = 2048, dtype: str = "float32"):
    self.size = int(size)
    self.dtype = dtype
    self.best = 0.0

  def measure(self, repeats: int = 3) -> Dict[str, Any]:
    """Times the matmul; keeps the best FLOP/s; returns its record."""
    value, record = matmul_peak(self.size, repeats, self.dtype)
    self.best = max(self.best, value)
    return record

  def refresh(self) -> float:
    """Re-measures (quietly) and returns the best FLOP/s so far."""
    self.measure(3)
    return self.best


def benchmark_function(what: str) -> Callable[..., Iterator[Dict[str, Any]]]:
  """The generator registered for ``what`` in :data:`BENCHMARKS`.

  Raises:
    ValueError: unknown ``what``.
  """
  if what not in BENCHMARKS:
    raise ValueError(f"unknown benchmark {what!r}; known: {sorted(BENCHMARKS)}")
  module, function = BENCHMARKS[what].split(":")
  return getattr(importlib.import_module(f"{__name__}.{module}"), function)


# Options that must be whole numbers >= 1 (or >= the value given), when given.
_AT_LEAST = {"repeats": 1, "num_stages": 1, "crop_size": 1, "descriptor_dim": 1, "image_size": 1,
             "num_pairs": 1, "num_images": 1, "batch_size": 1, "workers": 1, "writers": 1,
             "prefetch_batches": 1, "remat_batch_size": 1, "remat_repeats": 1,
             "fit_modes": 1}
# List options: each value a whole number >= 1; the list must not be empty when given.
_COUNT_LISTS = ("batch_sizes", "grain_workers", "processes")
# List options of names: not empty when given, each value one of these (resolved when checked).
_NAME_LISTS = {"encoder_cases": lambda: sorted(ENCODER_CASES),
               "modes": lambda: list(importlib.import_module(f"{__name__}.encoder").MODES),
               "align_modes": lambda: list(importlib.import_module(f"{__name__}.align").MODES)}


def check_options(whats: Sequence[str], options: Optional[Mapping[str, Any]] = None,
                  matmul_size: int = 2048, repeats: Optional[int] = None) -> None:
  """Checks the benchmarks and their options before anything is loaded, compiled or timed.

  Args:
    whats, options, matmul_size, repeats: as :func:`run_benchmarks` takes them (``None``
      options: the benchmark's own default, not checked).

  Raises:
    ValueError / FileNotFoundError: a one-line message naming the flag and what to give (an
      empty or unknown ``--what``, a count below 1, an empty list, an unknown name, a limit that
      is not a positive number, a missing file or folder).
  """
  import math  # pylint: disable=g-import-not-at-top
  from pathlib import Path  # pylint: disable=g-import-not-at-top
  whats = list(whats)
  if not whats:
    raise ValueError(f"--what is empty: name at least one benchmark of {sorted(BENCHMARKS)}")
  unknown = [w for w in whats if w not in BENCHMARKS]
  if unknown:
    raise ValueError(f"--what: unknown benchmark(s) {unknown}; known: {sorted(BENCHMARKS)}")
  options = {k: v for k, v in dict(options or {}).items() if v is not None}
  if repeats is not None:
    options["repeats"] = repeats
  if int(matmul_size) < 1:
    raise ValueError(f"--matmul_size must be >= 1 (the side of the peak matmul), got "
                     f"{matmul_size}")
  for name, low in _AT_LEAST.items():
    if name in options and int(options[name]) < low:
      raise ValueError(f"--{name} must be >= {low}, got {options[name]}")
  for name in _COUNT_LISTS:
    if name in options:
      values = list(options[name])
      if not values:
        raise ValueError(f"--{name} is empty: give one or more whole numbers >= 1, "
                         "comma-separated")
      bad = [v for v in values if int(v) < 1]
      if bad:
        raise ValueError(f"--{name} must hold whole numbers >= 1, got {bad}")
  for name, known in _NAME_LISTS.items():
    if name in options:
      values, allowed = list(options[name]), known()
      if not values:
        raise ValueError(f"--{name} is empty: give some of {allowed}, comma-separated")
      bad = [v for v in values if v not in allowed]
      if bad:
        raise ValueError(f"--{name}: unknown {bad}; use some of {allowed}")
  if "overlays" in options and not list(options["overlays"]):
    raise ValueError("--overlays is empty: give true and/or false")
  for name in ("max_run_s", "max_temp_gb"):
    if name in options and not (math.isfinite(float(options[name])) and options[name] > 0):
      raise ValueError(f"--{name} must be a positive number, got {options[name]}")
  if "encoder_preset" in options and options["encoder_preset"] not in encoder_lib.PRESETS:
    raise ValueError(f"--encoder_preset: unknown {options['encoder_preset']!r}; use one of "
                     f"{sorted(encoder_lib.PRESETS)}")
  if "train_step" in whats and "train_config" in options:
    if not Path(options["train_config"]).is_file():
      raise FileNotFoundError(f"--train_config={options['train_config']}: no such file; give a "
                              "config file such as experiments/configs/dff_cpu.py")
  if "aligner" in whats:
    if not options.get("images"):
      raise ValueError("--what=aligner needs --images=DIR|GLOB|LIST (the photos to align)")
    from dff_jax.alignment import streaming  # pylint: disable=g-import-not-at-top
    streaming.list_images(str(options["images"]))  # FileNotFoundError: names --images
  if "stream" in whats and "data_dir" in options:
    from dff_jax.benchmarking import stream  # pylint: disable=g-import-not-at-top
    defaults = inspect.signature(stream.bench_stream).parameters
    settings = {k: options.get(k, defaults[k].default)
                for k in ("num_images", "image_size", "seed")}
    stream.check_data_dir(options["data_dir"], **settings)
  if "stream" in whats and options.get("dlib_predictor"):
    _check_dlib_predictor(options["dlib_predictor"])


def _check_dlib_predictor(path: str) -> None:
  """``--dlib_predictor``: an existing file; when dlib is importable (it is optional), a dlib
  68-point shape-predictor model (loaded once: about a second).

  Raises:
    FileNotFoundError / ValueError: one line naming the file.
  """
  from pathlib import Path  # pylint: disable=g-import-not-at-top
  if not Path(path).is_file():
    raise FileNotFoundError(f"--dlib_predictor={path}: no such file; give dlib's 68-point "
                            "model shape_predictor_68_face_landmarks.dat or leave it out")
  try:
    import dlib  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return
  from dff_jax.evaluation import dlib_baseline  # pylint: disable=g-import-not-at-top
  dlib_baseline.check_68_points(dlib_baseline.load(path))


def run_benchmarks(whats: Iterable[str], options: Optional[Mapping[str, Any]] = None,
                   matmul_size: int = 2048, repeats: Optional[int] = None,
                   check: bool = True) -> Iterator[Dict[str, Any]]:
  """The matmul peak, then every benchmark of ``whats``; yields their records.

  Args:
    whats: keys of :data:`BENCHMARKS`, run in this order.
    options: keyword options; each benchmark gets those its function takes (``None`` values are
      left out: the benchmark's own default applies). ``peak`` (a :class:`PeakFlops`) is added.
    matmul_size: side of the square float32 peak matmul.
    repeats: timed calls of the peak matmul (at least 10; default 3 -> 10).
    check: :func:`check_options` first (``False``: the caller has checked them).

  Yields:
    Records with at least ``what`` plus :func:`device_fields`.

  Raises:
    ValueError / FileNotFoundError: an unknown benchmark or a bad option (:func:`check_options`,
      before anything runs).
  """
  whats = list(whats)
  if check:
    check_options(whats, options, matmul_size, repeats)
  functions = [(what, benchmark_function(what)) for what in whats]
  options = {k: v for k, v in dict(options or {}).items() if v is not None}
  peak = PeakFlops(matmul_size)
  options["peak"] = peak
  device = device_fields()
  yield {**peak.measure(repeats or 3), **device}
  for _, function in functions:
    accepted = inspect.signature(function).parameters
    for record in function(**{k: v for k, v in options.items() if k in accepted}):
      yield {**record, **device}


def write_results(path: str, records: Sequence[Dict[str, Any]], loadavg_before,
                  cascade: Optional[str] = None, checkpoint: Optional[str] = None) -> None:
  """Writes ``{"records": [...], "loadavg_before", "loadavg_after"}`` and the provenance (git
  commit, command, sha256 of the cascade and encoder measured: those given, else the shipped
  default pair where a record names it) to ``path`` (:func:`dff_jax.provenance.write_results`).
  ``cascade`` may be a shipped cascade's name (``--cascade=fast``): its file is recorded."""
  from dff_jax import provenance  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import runner  # pylint: disable=g-import-not-at-top
  cascades = {r["cascade"] for r in records if r.get("cascade")}
  measured = cascade or (cascades.pop() if len(cascades) == 1 else None)
  models = {"cascade": runner.named_cascade_path(measured) if measured else None,
            "checkpoint": checkpoint}
  provenance.write_results(path, dict(records=list(records), loadavg_before=loadavg_before,
                                      loadavg_after=os.getloadavg()), models)
