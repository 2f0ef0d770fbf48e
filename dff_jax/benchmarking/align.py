"""Speed of the alignment cascade (``--what=align``): the loop alone, and images + boxes in ->
results out.

One record per (mode, batch size), ``what = "align"``, with at least ``mode``, ``batch_size``,
``items_per_second`` (faces/s), ``ms_per_item`` and ``compile_s`` (lower + compile of the jitted
function):

* ``mode = "loop"``: :func:`dff_jax.alignment.cascade.align_crops` on given descriptor maps
  ``[B, crop, crop, D]`` (default 128 x 128 x 64), the default face model (60 identity + 53
  expression coefficients), ``K = 5`` stages, random regressors: the alignment loop alone.
* ``mode = "end_to_end"``: :func:`dff_jax.alignment.cascade.align_images` on uint8-range images
  ``[B, 256, 256, 3]`` and face boxes: crop, the DFF encoder (``encoder_preset``, default the
  ``"cpu"`` preset of :mod:`dff_jax.encoder`, grey input, random init), the cascade and the
  mapping back to image pixels, in one jitted function.

Other fields: ``step_s`` / ``cpu_s`` (median wall / process-CPU seconds per call),
``items_per_cpu_second``, ``gflop_per_item`` (XLA cost analysis), ``num_stages``,
``crop_size``, ``descriptor_dim``, ``num_coefficients``, ``loadavg``, ``maxrss_mb``.

Targets on a 2-core CPU (the issue): loop >= 20,000 faces/s at batch 64, end to end <= 10 ms per
face at batch 64, compile <= 20 s.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dff_jax import benchmarking
from dff_jax import encoder as encoder_lib
from dff_jax.alignment import cascade
from dff_jax.face_model import load_face_model

MODES = ("loop", "end_to_end")


def centred_initial_pose(model, crop_size: int, fill: float = 0.6) -> np.ndarray:
  """``[6]`` pose putting the mean face's 68 landmarks, frontal, in the middle ``fill`` of the
  crop (crop frame: scale px/mm, pitch, yaw, roll, tx, ty)."""
  points = np.asarray(model.mean_vertices)[np.asarray(model.landmark_vertex_ids)]
  scale = fill * crop_size / np.ptp(points[:, 0])
  centre = points.mean(axis=0)
  return np.array([scale, 0.0, 0.0, 0.0, crop_size / 2 - scale * centre[0],
                   crop_size / 2 + scale * centre[1]], np.float32)


def random_cascade_params(key: jax.Array, num_stages: int, descriptor_dim: int,
                          initial_pose: np.ndarray) -> cascade.CascadeParams:
  """Random regressors of realistic size that move the face by about a pixel per stage."""
  feature_dim = cascade.NUM_LANDMARKS * descriptor_dim + 1
  key_w, key_v = jax.random.split(key)
  std = 0.05 / np.sqrt(cascade.NUM_LANDMARKS)  # Unit descriptors: ||f|| ~ sqrt(68).
  return cascade.CascadeParams(
      landmark_weights=std * jax.random.normal(key_w, (num_stages, feature_dim,
                                                       2 * cascade.NUM_LANDMARKS)),
      pose_weights=std * jax.random.normal(key_v, (num_stages, feature_dim, cascade.POSE_DIM)),
      pose_std=jnp.tile(jnp.asarray([[0.01, 0.02, 0.02, 0.02, 1.0, 1.0]]), (num_stages, 1)),
      initial_pose=jnp.asarray(initial_pose))


def _record(mode: str, batch_size: int, compiled, compile_s: float, seconds: float,
            cpu_seconds: float, **extra) -> Dict[str, Any]:
  return {"what": "align", "mode": mode, "batch_size": batch_size,
          "items_per_second": round(batch_size / seconds, 1),
          "ms_per_item": round(1e3 * seconds / batch_size, 4),
          "compile_s": round(compile_s, 2), "step_s": round(seconds, 5),
          "cpu_s": round(cpu_seconds, 5),
          "items_per_cpu_second": round(batch_size / cpu_seconds, 1),
          "gflop_per_item": round(benchmarking.flops(compiled) / batch_size / 1e9, 4), **extra,
          "maxrss_mb": round(benchmarking.maxrss_mb(), 1), "loadavg": benchmarking.loadavg()}


def bench_align(batch_sizes: Sequence[int] = (1, 8, 64), align_modes: Sequence[str] = MODES,
                num_stages: int = 5, crop_size: int = 128, descriptor_dim: int = 64,
                image_size: int = 256, encoder_preset: str = "cpu",
                face_model: str = "default", repeats: int = 3,
                seed: int = 0) -> Iterator[Dict[str, Any]]:
  """Times the cascade; yields one JSON-able record per (mode, batch size).

  Args:
    batch_sizes: faces per call.
    align_modes: ``"loop"`` (descriptor maps in) and / or ``"end_to_end"`` (images + boxes in).
    num_stages: K.
    crop_size: crop side (pixels) the descriptors cover.
    descriptor_dim: D of the random descriptor maps (loop mode; end to end uses the encoder's).
    image_size: side of the square test images (end to end).
    encoder_preset: :data:`dff_jax.encoder.PRESETS` key of the DFF encoder (end to end).
    face_model: :func:`dff_jax.face_model.load_face_model` spec.
    repeats: timed calls per measurement (median reported).
    seed: PRNG seed of the random inputs and parameters.

  Yields:
    Dicts with ``what = "align"``, ``mode``, ``batch_size``, ``items_per_second`` (faces/s),
    ``ms_per_item``, ``compile_s`` and the fields listed in the module docstring.
  """
  unknown = [m for m in align_modes if m not in MODES]
  if unknown:
    raise ValueError(f"unknown align modes {unknown}; use some of {MODES}")
  batch_sizes = [int(b) for b in batch_sizes]
  model = load_face_model(face_model)
  alignment_model = cascade.make_alignment_model(model)
  config = cascade.CascadeConfig(num_stages=num_stages, crop_size=crop_size)
  pose = centred_initial_pose(model, crop_size)
  key_params, key_maps, key_encoder, key_images = jax.random.split(jax.random.key(seed), 4)
  common = {"num_stages": num_stages, "crop_size": crop_size,
            "num_coefficients": model.num_identity + model.num_expression,
            "num_vertices": model.num_vertices}

  if "loop" in align_modes:
    params = random_cascade_params(key_params, num_stages, descriptor_dim, pose)
    loop = jax.jit(lambda am, p, maps: cascade.align_crops(am, p, maps, config))
    for batch_size in batch_sizes:
      maps = jax.random.normal(key_maps, (batch_size, crop_size, crop_size, descriptor_dim))
      maps = maps / jnp.linalg.norm(maps, axis=-1, keepdims=True)
      start = time.perf_counter()
      compiled = loop.lower(alignment_model, params, maps).compile()
      compile_s = time.perf_counter() - start
      seconds, cpu_seconds = benchmarking.time_call(
          lambda: compiled(alignment_model, params, maps), repeats)  # pylint: disable=cell-var-from-loop
      yield _record("loop", batch_size, compiled, compile_s, seconds, cpu_seconds,
                    descriptor_dim=descriptor_dim, **common)
      del maps

  if "end_to_end" in align_modes:
    preset = dict(encoder_lib.PRESETS[encoder_preset])
    channels = preset.pop("channels")
    preset.pop("image_size")
    module = encoder_lib.encoder_from_config(preset)
    encoder_params = jax.jit(module.init)(key_encoder,
                                          jnp.zeros((1, crop_size, crop_size, channels)))
    params = random_cascade_params(key_params, num_stages, module.descriptor_dim, pose)

    def end_to_end(encoder_params, params, alignment_model, images, boxes):
      def describe(crops):  # [B, crop, crop, 3] in [0, 255] -> [B, crop, crop, D].
        return module.apply(encoder_params,
                            encoder_lib.preprocess_images(crops, channels=channels))
      return cascade.align_images(describe, alignment_model, params, images, boxes, config)

    end_to_end = jax.jit(end_to_end)
    rng = np.random.default_rng(seed)
    for batch_size in batch_sizes:
      images = jax.random.randint(key_images, (batch_size, image_size, image_size, 3), 0, 256,
                                  jnp.int32).astype(jnp.uint8)
      side = rng.uniform(0.4, 0.6, (batch_size, 1)) * image_size
      centre = image_size / 2 + rng.uniform(-0.1, 0.1, (batch_size, 2)) * image_size
      boxes = jnp.asarray(np.concatenate([centre - side / 2, centre + side / 2], axis=1),
                          jnp.float32)
      args = (encoder_params, params, alignment_model, images, boxes)
      start = time.perf_counter()
      compiled = end_to_end.lower(*args).compile()
      compile_s = time.perf_counter() - start
      seconds, cpu_seconds = benchmarking.time_call(lambda: compiled(*args), repeats)  # pylint: disable=cell-var-from-loop
      yield _record("end_to_end", batch_size, compiled, compile_s, seconds, cpu_seconds,
                    descriptor_dim=module.descriptor_dim, image_size=image_size,
                    encoder_preset=encoder_preset, features=list(module.features),
                    encoder_params=encoder_lib.count_params(encoder_params), **common)
