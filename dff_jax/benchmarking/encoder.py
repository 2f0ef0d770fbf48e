"""Encoder benchmarks (``--what=encoder`` and ``--what=train_step``).

``bench_encoder``: forward (``mode = "forward"``) and forward+backward (``mode = "train"``, the
gradient of a descriptor loss with respect to the parameters, i.e. the encoder part of a train
step) of :class:`dff_jax.encoder.DFFEncoder` for the cases of
:data:`dff_jax.benchmarking.ENCODER_CASES` at each batch size. Fields: ``case``, ``mode``,
``image_size``, ``channels``, ``features``, ``params``, ``step_s`` (median),
``items_per_second`` (images/s), ``conv`` (how the 3x3 convolutions are computed:
:func:`dff_jax.convolution.conv3x3_algorithm`), ``gflop_per_item`` and ``achieved_gflops`` (the
network's work as defined: XLA's cost analysis of the same call with every convolution direct,
``conv = "xla"``, so that a cheaper algorithm shows as a higher rate, not as less work),
``gflop_per_item_computed`` (XLA's count of what the timed call computes: fewer with Winograd's
convolutions), ``utilisation`` (``achieved_gflops`` over the matmul peak: the best float32
``jnp.dot`` seen so far in the run, ``peak_gflops``; for a case with bfloat16 products,
``matmul_dtype``, also ``utilisation_bf16`` over the best bfloat16 one, ``peak_gflops_bf16``),
``compile_s`` (lower + compile),
``cpu_s`` (median process CPU time per step, all threads: robust to other load on a shared
machine) and ``items_per_cpu_second``, ``temp_mb`` / ``argument_mb`` (compiled memory
analysis) and ``maxrss_mb`` (process peak so far). Calls whose estimated time exceeds
``max_run_s`` or whose temporaries exceed ``max_temp_gb`` are reported with ``skipped`` (e.g. the
paper-size train step at batch 32 on a 2-core CPU).

``bench_train_step``: the whole jitted DFF train step of a config file at each batch size
(pairs): ``steps_per_second``, ``images_per_second`` (= ``items_per_second``),
``cpu_seconds_per_step``, ``flops_per_step`` (:func:`dff_jax.benchmarking.train_step.benchmark_train_step`).
"""

from __future__ import annotations

import functools
import importlib.util
import time
from typing import Any, Dict, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp

from dff_jax import benchmarking
from dff_jax import descriptor_fields
from dff_jax import encoder as encoder_lib

MODES = ("forward", "train")


def bench_encoder(encoder_cases: Sequence[str] = ("cpu_gray", "cpu_rgb", "paper"),
                  modes: Sequence[str] = MODES, batch_sizes: Sequence[int] = (1, 32),
                  repeats: int = 3, max_run_s: float = 150.0, max_temp_gb: float = 8.0,
                  peak: Optional[benchmarking.PeakFlops] = None,
                  processes: Sequence[int] = (1,)) -> Iterator[Dict[str, Any]]:
  """Forward and forward+backward throughput of the DFF encoder cases (module docstring).

  With a count ``N > 1`` in ``processes`` each forward measurement is also made in ``N`` worker
  processes at once, each pinned to its share of the cores (:mod:`dff_jax.cpu_processes`, as
  ``align --processes`` runs): ``processes = N``, ``items_per_second`` and ``achieved_gflops``
  summed over the workers (each times ``max(repeats, 10)`` calls after all have compiled),
  ``utilisation`` of this process's matmul peak (all cores), ``step_s_by_process``; ``conv``,
  ``gflop_per_item`` and ``gflop_per_item_computed`` as in one process.

  Args:
    encoder_cases: keys of :data:`dff_jax.benchmarking.ENCODER_CASES`.
    modes: ``"forward"`` and / or ``"train"``.
    batch_sizes: images per call.
    repeats: timed calls per measurement (median reported; fewer for long calls).
    max_run_s: time budget per measurement: calls estimated (from their FLOPs at 25% of the
      matmul peak) to take longer are skipped; long calls get fewer repeats.
    max_temp_gb: skip a measurement whose compiled temporaries exceed this many GB.
    peak: the run's matmul peak (re-measured before each measurement; a new one by default).
  """
  peak = peak or benchmarking.PeakFlops()
  bf16_peak = benchmarking.PeakFlops(peak.size, "bfloat16")
  unknown = [c for c in encoder_cases if c not in benchmarking.ENCODER_CASES]
  if unknown:
    raise ValueError(f"unknown encoder case(s) {unknown}; known: "
                     f"{sorted(benchmarking.ENCODER_CASES)}")
  bad_modes = [m for m in modes if m not in MODES]
  if bad_modes:
    raise ValueError(f"unknown mode(s) {bad_modes}; use forward or train")
  if any(int(b) < 1 for b in batch_sizes) or int(repeats) < 1:
    raise ValueError(f"--batch_sizes and --repeats must be >= 1, got {list(batch_sizes)}, "
                     f"{repeats}")
  for case_name in encoder_cases:
    module, params, size, channels = _case(case_name)
    num_params = encoder_lib.count_params(params)

    def forward(p, images, module=module):
      return module.apply(p, images)

    def train(p, images, target, module=module):
      # Gradient of a descriptor loss: the encoder's share of a train step. A point-head
      # encoder is read, as in training, at 2048 pixel centres per image only.
      def loss(q):
        out = module.apply(q, images)
        if isinstance(out, descriptor_fields.PointField):
          height, width = out.image_shape
          centres = descriptor_fields.pixel_centres(height, width)[::max(1, height * width
                                                                            // 2048)]
          values, _ = descriptor_fields.query_batch(
              out, jnp.broadcast_to(centres, (images.shape[0],) + centres.shape))
          return jnp.mean(jnp.sum(values * target[:, :len(centres)], axis=-1))
        return jnp.mean(jnp.sum(out * target.reshape(out.shape), axis=-1))
      return jax.value_and_grad(loss)(p)

    for mode in modes:
      for batch_size in map(int, batch_sizes):
        for count in (n for n in map(int, processes) if n > 1 and mode == "forward"):
          record = in_processes(case_name, batch_size, count, max(repeats, 10), peak.refresh())
          yield {**record, **_bf16_utilisation(module, record, bf16_peak)}
        peak_flops = peak.refresh()  # Load on a shared machine changes over time.
        key = jax.random.key(batch_size)
        images = jax.random.normal(key, (batch_size, size, size, channels), jnp.float32)
        args, fn = (params, images), forward
        if mode == "train":
          target = jax.random.normal(key, (batch_size, size * size, module.descriptor_dim))
          args, fn = (params, images, target), train
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(*args).compile()
        compile_s = time.perf_counter() - start
        count = _direct_flops(fn, module, args)
        record = {"what": "encoder", "case": case_name, "mode": mode, "batch_size": batch_size,
                  "image_size": size, "channels": channels, "features": list(module.features),
                  "convs_per_level": module.convs_per_level,
                  "descriptor_dim": module.descriptor_dim, "upsample": module.upsample,
                  "norm": module.norm, "dtype": jnp.dtype(module.dtype).name,
                  "conv": module.conv, "matmul_dtype": module.matmul_dtype or "float32",
                  "params": num_params, "compile_s": round(compile_s, 2),
                  "gflop_per_item": round(count / batch_size / 1e9, 3),
                  "gflop_per_item_computed": round(benchmarking.flops(compiled) / batch_size
                                                   / 1e9, 3),
                  **benchmarking.memory_mb(compiled)}
        single_s = count / (0.25 * peak_flops)  # Pessimistic estimate of one call.
        temp_gb = record.get("temp_mb", 0.0) / 1024.0
        if single_s > max_run_s or temp_gb > max_temp_gb:
          record.update(items_per_second=None, skipped=(
              f"estimated {single_s:.0f} s per call (limit --max_run_s={max_run_s:.0f}), "
              f"{temp_gb:.1f} GB temporaries (limit --max_temp_gb={max_temp_gb:.0f})"))
          yield record
          continue
        # Long calls: skip the warm-up and time fewer repeats to stay within max_run_s.
        warmup = single_s < 10.0
        count_repeats = max(1, min(repeats, int(max_run_s / single_s) - int(warmup)))
        seconds, cpu_seconds = benchmarking.time_call(
            functools.partial(compiled, *args), count_repeats, warmup)
        record["repeats"] = count_repeats
        record.update(step_s=round(seconds, 4), cpu_s=round(cpu_seconds, 4),
                      items_per_cpu_second=round(batch_size / cpu_seconds, 2),
                      items_per_second=round(batch_size / seconds, 2),
                      achieved_gflops=round(count / seconds / 1e9, 1),
                      utilisation=round(count / seconds / peak_flops, 3),
                      peak_gflops=round(peak_flops / 1e9, 1),
                      maxrss_mb=round(benchmarking.maxrss_mb(), 1),
                      loadavg=benchmarking.loadavg())
        yield {**record, **_bf16_utilisation(module, record, bf16_peak)}


def _bf16_utilisation(module: encoder_lib.DFFEncoder, record: Dict[str, Any],
                      bf16_peak: benchmarking.PeakFlops) -> Dict[str, Any]:
  """For an encoder with bfloat16 products: ``utilisation_bf16`` (the record's
  ``achieved_gflops`` over the best bfloat16 matmul of the run, re-measured now) and
  ``peak_gflops_bf16``; nothing for float32 encoders."""
  if module.matmul_dtype != "bfloat16" or record.get("achieved_gflops") is None:
    return {}
  peak_flops = bf16_peak.refresh()
  return {"utilisation_bf16": round(record["achieved_gflops"] * 1e9 / peak_flops, 3),
          "peak_gflops_bf16": round(peak_flops / 1e9, 1)}


def _direct_flops(fn, module: encoder_lib.DFFEncoder, args: Sequence[Any]) -> float:
  """FLOPs of ``fn(*args, module=...)`` with ``module``'s convolutions all direct (``conv =
  "xla"``), from XLA's cost analysis: the network's work as defined, whichever algorithm the
  timed call uses."""
  direct = functools.partial(fn, module=module.clone(conv="xla"))
  return benchmarking.flops(jax.jit(direct).lower(*args).compile())


def _case(case_name: str):
  """``(module, random params, image size, channels)`` of an encoder case of
  :data:`dff_jax.benchmarking.ENCODER_CASES`."""
  case = dict(benchmarking.ENCODER_CASES[case_name])
  size, channels = case.pop("image_size"), case.pop("channels")
  module = encoder_lib.encoder_from_config(case)
  params = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, size, size, channels)))
  return module, params, size, channels


def _forward(case_name: str, batch_size: int):
  """``(compiled forward, its arguments, (FLOPs per call with direct convolutions, FLOPs the
  call computes))`` of an encoder case at a batch size (random weights and images, as
  :func:`bench_encoder` times them)."""
  module, params, size, channels = _case(case_name)
  images = jax.random.normal(jax.random.key(batch_size), (batch_size, size, size, channels),
                             jnp.float32)

  def forward(p, x, module=module):
    return module.apply(p, x)
  compiled = jax.jit(forward).lower(params, images).compile()
  counts = (_direct_flops(forward, module, (params, images)), benchmarking.flops(compiled))
  return compiled, (params, images), counts


def _forward_worker(cores, case_name: str, batch_size: int, repeats: int, ready, results) -> None:
  """One worker of :func:`in_processes`: pinned, compiles, waits for the others, times."""
  from dff_jax import cpu_processes  # pylint: disable=g-import-not-at-top
  cpu_processes.pin(cores)
  try:
    compiled, args, counts = _forward(case_name, batch_size)
    jax.block_until_ready(compiled(*args))
    ready.wait(timeout=600)
    seconds, _ = benchmarking.time_call(functools.partial(compiled, *args), repeats,
                                        warmup=False)
    results.put((seconds, counts, None))
  except BaseException as error:  # pylint: disable=broad-except
    ready.abort()
    results.put((None, None, " ".join(str(error).split()) or type(error).__name__))


def in_processes(case_name: str, batch_size: int, processes: int, repeats: int,
                 peak_flops: float) -> Dict[str, Any]:
  """The forward pass of an encoder case in ``processes`` pinned worker processes at once (see
  :func:`bench_encoder`); ``peak_flops``: this process's matmul peak (all cores).

  Raises:
    ValueError: a worker failed (its message).
  """
  from dff_jax import cpu_processes  # pylint: disable=g-import-not-at-top
  context = cpu_processes.context()
  ready, results = context.Barrier(processes), context.Queue()
  workers = [context.Process(target=_forward_worker, daemon=True,
                             args=(cores, case_name, batch_size, repeats, ready, results))
             for cores in cpu_processes.core_groups(processes)]
  for worker in workers:
    worker.start()
  outcomes = [results.get(timeout=900) for _ in workers]
  for worker in workers:
    worker.join(timeout=30)
  errors = [error for _, _, error in outcomes if error]
  if errors:
    raise ValueError(f"encoder benchmark in {processes} processes: {errors[0]}")
  rate = sum(batch_size / seconds for seconds, _, _ in outcomes)
  flop_rate = sum(direct / seconds for seconds, (direct, _), _ in outcomes)
  direct, computed = outcomes[0][1]
  return {"what": "encoder", "case": case_name, "mode": "forward", "batch_size": batch_size,
          "processes": processes, "repeats": repeats,
          "conv": benchmarking.ENCODER_CASES[case_name].get("conv", "auto"),
          "matmul_dtype": benchmarking.ENCODER_CASES[case_name].get("matmul_dtype", "float32"),
          "gflop_per_item": round(direct / batch_size / 1e9, 3),
          "gflop_per_item_computed": round(computed / batch_size / 1e9, 3),
          "step_s_by_process": [round(seconds, 6) for seconds, _, _ in outcomes],
          "items_per_second": round(rate, 2), "achieved_gflops": round(flop_rate / 1e9, 1),
          "utilisation": round(flop_rate / peak_flops, 3),
          "peak_gflops": round(peak_flops / 1e9, 1), "loadavg": benchmarking.loadavg()}


def bench_train_step(train_config: str = "experiments/configs/dff_cpu.py",
                     batch_sizes: Sequence[int] = (1, 32),
                     repeats: int = 3) -> Iterator[Dict[str, Any]]:
  """The full jitted DFF train step (encoder + patch / InfoNCE loss + AdamW) of the config file
  ``train_config`` (``get_config()``) on a synthetic batch of each ``batch_sizes`` pairs (2
  images per pair); ``items_per_second`` is images/s."""
  from dff_jax.benchmarking import train_step  # pylint: disable=g-import-not-at-top  # Heavy.
  spec = importlib.util.spec_from_file_location("train_config", train_config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for batch_size in map(int, batch_sizes):
    config = module.get_config()
    config.global_batch_size = batch_size
    result = train_step.benchmark_train_step(config, num_steps=repeats)
    yield {"what": "train_step", "config": train_config, "batch_size": batch_size,
           "items_per_second": round(result["images_per_second"], 3),
           "compile_s": round(result["compile_seconds"], 2),
           "gflop_per_item": round(result["flops_per_step"] / (2 * batch_size) / 1e9, 3),
           "loadavg": benchmarking.loadavg(),
           **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}}
