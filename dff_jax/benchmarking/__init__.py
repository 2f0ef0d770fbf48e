"""Helpers of the benchmark commands (``experiments.benchmark`` and its parts): the encoder
cases measured, the FLOPs and compiled memory of a call, and timing a call (wall and process CPU
seconds).
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, Mapping, Sequence, Tuple

import jax
import jax.numpy as jnp

from dff_jax import encoder as encoder_lib

# Encoder cases: DFFEncoder keyword arguments plus image_size and channels.
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
    "cpu_nonorm": dict(encoder_lib.PRESETS["cpu"], norm="none"),
    "cpu_bf16": dict(encoder_lib.PRESETS["cpu"], dtype=jnp.bfloat16),
    "paper_bf16": dict(encoder_lib.PRESETS["paper"], dtype=jnp.bfloat16),
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
