"""Memory and speed of differentiating the whole alignment pipeline, with and without remat
(``--what=remat``).

One record per measurement (``what = "remat"``) for the full pipeline of
:func:`dff_jax.training.finetune.pipeline_loss` (images ``[B, 192, 192, 3]`` and boxes -> crop
128 -> DFF encoder (the ``dff_cpu`` case of :data:`dff_jax.benchmarking.ENCODER_CASES`, random
init) -> 5-stage cascade on the default face model (random regressors) -> landmark loss):

* ``part = "pipeline"`` (as above) and ``part = "cascade"`` (the cascade alone on fixed
  descriptor maps ``[B, 128, 128, 64]``, gradients w.r.t. the maps and the regressors);
* ``mode = "forward"``: the loss alone;
* ``mode = "backward"``: ``jax.value_and_grad`` with respect to the encoder parameters and the
  regressors, ``remat = False`` (every stage's residuals kept) or ``True`` (``jax.checkpoint``
  per stage, recomputed in the backward pass); ``remat_encoder = True`` also rematerialises
  every conv block of the encoder (``DFFEncoder(remat=True)``: ``nn.remat`` per block, its
  inner activations recomputed instead of stored).

Fields: ``what``, ``part``, ``mode``, ``remat``, ``remat_encoder``, ``batch_size``,
``items_per_second`` (faces/s), ``step_s`` / ``cpu_s`` (median wall / process CPU seconds per
call), ``compile_s``, ``temp_mb`` / ``argument_mb`` / ``output_mb`` (XLA's compiled memory
analysis, :func:`dff_jax.benchmarking.memory_mb`), ``total_mb`` (their sum), and for backward
records ``temp_ratio`` / ``total_ratio`` (over the forward record of the same part). The issue's
target: backward memory at most 3x forward with remat.

Note: the memory figures are XLA's static buffer assignment of the compiled computation, not a
measured peak RSS; timings on a shared machine vary with other load (``loadavg``).
"""

from __future__ import annotations

import functools
import time
from typing import Any, Dict, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from dff_jax import benchmarking
from dff_jax import encoder as encoder_lib
from dff_jax import geometry
from dff_jax import sampling
from dff_jax.alignment import cascade
from dff_jax.face_model import load_face_model
from dff_jax.training import finetune

IMAGE_SIZE = 192


def _inputs(batch_size: int, config: cascade.CascadeConfig, descriptor_dim: int,
            alignment_model: cascade.AlignmentModel):
  """Random images, centred boxes, random regressors, landmark truth near the start state."""
  key = jax.random.key(0)
  k_img, k_w, k_v, k_lm = jax.random.split(key, 4)
  images = jax.random.uniform(k_img, (batch_size, IMAGE_SIZE, IMAGE_SIZE, 3), maxval=255.0)
  centre = IMAGE_SIZE / 2
  offsets = jnp.linspace(-8.0, 8.0, batch_size)[:, None]
  boxes = jnp.concatenate([centre - 40.0 + offsets, centre - 40.0 + offsets,
                           centre + 40.0 + offsets, centre + 40.0 + offsets], axis=1)
  model = alignment_model.face_model
  points = np.asarray(model.mean_vertices)[np.asarray(model.landmark_vertex_ids)]
  size = config.crop_size
  scale = 0.55 * size / np.ptp(points[:, 0])
  centre_mm = points.mean(0)
  initial_pose = np.array([scale, 0.0, 0.0, 0.0, size / 2 - scale * centre_mm[0],
                           size / 2 + scale * centre_mm[1]], np.float32)
  params = cascade.zero_params(config.num_stages, descriptor_dim, initial_pose)
  params = params.replace(
      landmark_weights=0.02 * jax.random.normal(k_w, params.landmark_weights.shape),
      pose_weights=0.02 * jax.random.normal(k_v, params.pose_weights.shape),
      pose_std=jnp.tile(jnp.asarray([[0.002, 0.02, 0.02, 0.02, 0.3, 0.3]]),
                        (config.num_stages, 1)))
  start = cascade.initial_state(alignment_model, params, config)
  crop_boxes = geometry.square_box(boxes, config.box_scale)
  truth = geometry.crop_to_image(jnp.broadcast_to(start.landmarks_px, (batch_size, 68, 2)),
                                 crop_boxes, size)
  truth = truth + 2.0 * jax.random.normal(k_lm, truth.shape)
  visible = jnp.ones((batch_size, 68), bool)
  return images, boxes, params, truth, visible


def cascade_crop(image, box, config: cascade.CascadeConfig):
  """One face's crop ``[S, S, 3]`` exactly as :func:`cascade.align_images` cuts it."""
  return sampling.crop_image(image, geometry.square_box(box, config.box_scale), config.crop_size)


def bench_remat(remat_batch_size: int = 8, remat_repeats: int = 2, crop_size: int = 128,
                num_stages: int = 5, encoder_case: str = "dff_cpu") -> Iterator[Dict[str, Any]]:
  """Forward vs backward of the full pipeline, without and with per-stage remat (see the module
  docstring); yields one JSON-able record per measurement.

  Args:
    remat_batch_size: faces per call.
    remat_repeats: timed calls per measurement (median).
    crop_size, num_stages: the cascade's crop side and stage count.
    encoder_case: key of :data:`dff_jax.benchmarking.ENCODER_CASES`.
  """
  batch_size, repeats = int(remat_batch_size), int(remat_repeats)
  case = dict(benchmarking.ENCODER_CASES[encoder_case])
  case.pop("image_size")
  channels = case.pop("channels")
  module = encoder_lib.encoder_from_config(case)
  encoder_params = jax.jit(module.init)(
      jax.random.key(1), jnp.zeros((1, crop_size, crop_size, channels)))["params"]
  num_params = encoder_lib.count_params(encoder_params)

  def make_apply(module):
    def apply(params, crops):
      return module.apply({"params": params}, encoder_lib.preprocess_images(crops, channels))
    return apply

  apply = make_apply(module)
  apply_remat_blocks = make_apply(module.clone(remat=True))

  config = cascade.CascadeConfig(num_stages=num_stages, crop_size=crop_size)
  alignment_model = cascade.make_alignment_model(load_face_model("default"))
  images, boxes, cascade_params, truth, visible = _inputs(
      batch_size, config, module.descriptor_dim, alignment_model)
  trained, fixed = finetune.split_cascade(cascade_params)
  params = {"encoder": encoder_params, "cascade": trained}

  # The cascade alone gets fixed descriptor maps (the encoder's output for these images).
  maps = jax.jit(jax.vmap(lambda image, box: apply(encoder_params, cascade_crop(
      image, box, config)[None])[0]))(images, boxes)

  cases = [("cascade", "forward", False, False), ("cascade", "backward", False, False),
           ("cascade", "backward", True, False),
           ("pipeline", "forward", False, False), ("pipeline", "backward", False, False),
           ("pipeline", "backward", True, False), ("pipeline", "backward", True, True)]
  forward_records: Dict[str, Dict[str, Any]] = {}
  for part, mode, remat, remat_encoder in cases:
    encoder_apply = apply_remat_blocks if remat_encoder else apply
    pipeline = finetune.Pipeline(apply=encoder_apply, config=config, remat=remat)
    if part == "pipeline":
      def loss(params, images, pipeline=pipeline):
        return finetune.pipeline_loss(pipeline, params, fixed, alignment_model, images, boxes,
                                      truth, visible)[0]
      args = (params, images)
    else:
      def loss(trained, maps, remat=remat):
        states = cascade.align_crops(alignment_model, finetune.join_cascade(trained, fixed),
                                     maps, config, remat=remat)
        predicted = cascade.state_to_image(states, geometry.square_box(boxes, config.box_scale),
                                           config.crop_size).landmarks_px
        return finetune.landmark_loss(predicted, truth, visible)[0]
      args = (trained, maps)

    fn = loss if mode == "forward" else jax.value_and_grad(loss, argnums=(0, 1))
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    memory = benchmarking.memory_mb(compiled)
    step_s, cpu_s = benchmarking.time_call(functools.partial(compiled, *args), repeats)
    record = {"what": "remat", "part": part, "mode": mode, "remat": remat,
              "remat_encoder": remat_encoder, "batch_size": batch_size,
              "items_per_second": round(batch_size / step_s, 3),
              "step_s": round(step_s, 3), "cpu_s": round(cpu_s, 3),
              "compile_s": round(compile_s, 2), "crop_size": crop_size,
              "num_stages": num_stages, "encoder_case": encoder_case,
              "encoder_params": num_params, "descriptor_dim": module.descriptor_dim, **memory}
    if memory:
      record["total_mb"] = round(memory["temp_mb"] + memory["argument_mb"]
                                 + memory["output_mb"], 1)
    forward = forward_records.get(part)
    if mode == "forward":
      forward_records[part] = record
    elif forward and memory and forward.get("temp_mb"):
      record["temp_ratio"] = round(record["temp_mb"] / forward["temp_mb"], 2)
      record["total_ratio"] = round(record["total_mb"] / forward["total_mb"], 2)
    record["loadavg"] = benchmarking.loadavg()
    yield record
