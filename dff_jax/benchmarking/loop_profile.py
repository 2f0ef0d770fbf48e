"""Where the alignment loop's time goes (``--what=loop_profile``): each part of one cascade stage
timed on its own at one batch size, with XLA's FLOP count, next to the whole loop.

The parts are the steps of :func:`dff_jax.alignment.cascade.apply_stage` for ``B`` faces
(``vmap``), each jitted alone on the inputs the previous part produced:

* ``features``: :func:`~dff_jax.alignment.cascade.stage_features`, the descriptor field read at
  the 68 landmarks (``field = "dense"``: bilinear gathers from ``[crop, crop, D]`` maps;
  ``"point"``: four pyramid levels gathered and the point head evaluated, the head shared by the
  batch as an encoder's fields share it, :func:`dff_jax.descriptor_fields.vmap_faces`);
* ``regress``: the stage's linear regressors (``[68 D + 1] x [68 D + 1, 142]`` per face);
* ``contour``: the pose's jaw vertex choice; ``rows``: gathering their mean and basis rows;
* ``normal_equations``: the shape fit's Jacobian and ``J^T W J``, ``J^T W t``;
* ``cholesky_solve``: the ``M``-square Cholesky factorisation and solve (``M = Ki + Ke``, or
  ``fit_modes``: :func:`~dff_jax.alignment.cascade.with_fit_modes`);
* ``project``: re-projection and visibility of the 68 landmarks.

One record per part (``what = "loop_profile"``, ``part``, ``ms_per_batch``, ``share`` of the sum
of parts, ``gflop_per_batch``, ``gflops``, ``fit_modes``, ``matmul_dtype``: the point head's
product operands); with point fields then ``part =
"features_per_face_head"``, the same read with a plain ``vmap`` (every face's head applied as a
product of its own), timed in turns with ``features`` (``features_ms_per_batch``,
``ratio_to_features``: its time over that one's); then ``part = "loop"``: the whole jitted
``K``-stage loop (:func:`~dff_jax.alignment.cascade.align_crops`), faces/s. On a shared machine
compare parts within one run.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, Iterator, Optional

import jax
import jax.numpy as jnp

from dff_jax import benchmarking
from dff_jax import descriptor_fields
from dff_jax.alignment import cascade
from dff_jax.benchmarking import align as align_bench
from dff_jax.face_model import load_face_model
from dff_jax.face_model import model as face_model_lib

FIELDS = ("dense", "point")


def random_fields(key: jax.Array, field: str, batch_size: int, crop_size: int,
                  descriptor_dim: int, pyramid=(16, 32, 64, 128), head_hidden: int = 128,
                  head_dtype: str = "float32") -> Any:
  """Random descriptor fields of a batch: unit dense maps ``[B, S, S, D]`` or point fields with
  the given pyramid widths (levels ``[B, S / 2**l, S / 2**l, C_l]``), a random head and the
  head's operand dtype (:class:`dff_jax.descriptor_fields.PointField`)."""
  if field not in FIELDS:
    raise ValueError(f"unknown field {field!r}; use one of {FIELDS}")
  keys = jax.random.split(key, len(pyramid) + 2)
  if field == "dense":
    maps = jax.random.normal(keys[0], (batch_size, crop_size, crop_size, descriptor_dim))
    return maps / jnp.linalg.norm(maps, axis=-1, keepdims=True)
  levels = tuple(jax.nn.relu(jax.random.normal(keys[l], (batch_size, crop_size // 2**l,
                                                         crop_size // 2**l, width)))
                 for l, width in enumerate(pyramid))
  width = sum(pyramid)
  head = {"hidden_kernel": jax.random.normal(keys[-2], (width, head_hidden)) / width ** 0.5,
          "hidden_bias": jnp.zeros((head_hidden,)),
          "out_kernel": jax.random.normal(keys[-1], (head_hidden, descriptor_dim)) / head_hidden**0.5,
          "out_bias": jnp.zeros((descriptor_dim,))}
  return descriptor_fields.PointField(levels=levels,
                                      head=descriptor_fields.broadcast_head(head, (batch_size,)),
                                      shared_head=True, head_dtype=head_dtype)


def _per_face_head_record(features: Callable, fields: Any, states: Any,
                          repeats: int) -> Dict[str, Any]:
  """Part ``features`` (``features``: its compiled read, the shared head read once) and the same
  read with every face's head applied separately (a plain ``vmap`` over the broadcast head, as
  before :func:`dff_jax.descriptor_fields.vmap_faces`), timed in turns (``repeats`` each,
  medians)."""
  args = (fields, states.landmarks_px, states.visibility)
  calls = {"shared": features,
           "per_face": jax.jit(jax.vmap(cascade.stage_features)).lower(*args).compile()}
  times = {name: [] for name in calls}
  for call in calls.values():
    jax.block_until_ready(call(*args))
  for _ in range(repeats):
    for name, call in calls.items():
      start = time.perf_counter()
      jax.block_until_ready(call(*args))
      times[name].append(time.perf_counter() - start)
  shared, per_face = (statistics.median(times[name]) for name in ("shared", "per_face"))
  return {"what": "loop_profile", "part": "features_per_face_head", "field": "point",
          "ms_per_batch": round(1e3 * per_face, 3), "features_ms_per_batch": round(1e3 * shared, 3),
          "ratio_to_features": round(per_face / shared, 3)}


def bench_loop_profile(batch_size: int = 64, num_stages: int = 5, crop_size: int = 128,
                       descriptor_dim: int = 64, field: str = "dense",
                       face_model: str = "default", repeats: int = 10,
                       seed: int = 0, fit_modes: Optional[int] = None,
                       matmul_dtype: Optional[str] = None) -> Iterator[Dict[str, Any]]:
  """Times the parts of one stage and the whole loop; yields one record per part.

  Args:
    batch_size: faces per call.
    num_stages: K of the whole loop.
    crop_size: crop side (pixels).
    descriptor_dim: D.
    field: ``"dense"`` maps or ``"point"`` fields (:mod:`dff_jax.descriptor_fields`).
    face_model: :func:`dff_jax.face_model.load_face_model` spec.
    repeats: timed calls per part (median).
    seed: PRNG seed of the random fields and regressors.
    fit_modes: directions the shape fit solves for (:func:`dff_jax.alignment.cascade.
      with_fit_modes`; ``None``: all coefficients); every record names it.
    matmul_dtype: operand dtype of the point head's products (``None``: float32); every
      record names it.
  """
  model = load_face_model(face_model)
  alignment_model = cascade.with_fit_modes(cascade.make_alignment_model(model), fit_modes)
  config = cascade.CascadeConfig(num_stages=num_stages, crop_size=crop_size)
  key_params, key_fields = jax.random.split(jax.random.key(seed))
  params = align_bench.random_cascade_params(
      key_params, num_stages, descriptor_dim, align_bench.centred_initial_pose(model, crop_size))
  matmul_dtype = matmul_dtype or "float32"
  fields = random_fields(key_fields, field, batch_size, crop_size, descriptor_dim,
                         head_dtype=matmul_dtype)
  state = cascade.initial_state(alignment_model, params, config)
  states = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (batch_size,) + x.shape), state)
  stage = (params.landmark_weights[0], params.pose_weights[0], params.pose_std[0])
  am = alignment_model
  vmap = jax.vmap

  parts = []
  features = descriptor_fields.vmap_faces(cascade.stage_features)
  parts.append(("features", features, (fields, states.landmarks_px, states.visibility)))
  feats = jax.jit(features)(fields, states.landmarks_px, states.visibility)
  regress = vmap(lambda f, s: cascade.regress(stage, s, f))
  parts.append(("regress", regress, (feats, states)))
  landmarks, pose = jax.jit(regress)(feats, states)
  rotation = jax.jit(vmap(cascade.pose_rotation))(pose)
  contour = vmap(lambda r: face_model_lib.landmark_vertex_ids_for_pose(am.face_model, r))
  parts.append(("contour", contour, (rotation,)))
  ids = jax.jit(contour)(rotation)
  rows = vmap(lambda i: cascade.fit_rows(am, i))
  parts.append(("rows", rows, (ids,)))
  mean, basis = jax.jit(rows)(ids)
  normal = vmap(lambda *a: cascade.shape_normal_equations(am, *a, config.shape_regularisation))
  parts.append(("normal_equations", normal,
                (mean, basis, landmarks, pose, rotation, states.visibility)))
  matrix, rhs = jax.jit(normal)(mean, basis, landmarks, pose, rotation, states.visibility)
  solve = vmap(cascade.solve_normal_equations)
  parts.append(("cholesky_solve", solve, (matrix, rhs)))
  coefficients = jax.jit(solve)(matrix, rhs)
  project = vmap(lambda p, r, i, m, b, c: cascade._project_rows(  # pylint: disable=protected-access
      am, p, r, i, m, b, c, config.visibility_threshold))
  parts.append(("project", project, (pose, rotation, ids, mean, basis, coefficients)))

  records, compiled_parts = [], {}
  for name, function, args in parts:
    compiled = compiled_parts[name] = jax.jit(function).lower(*args).compile()
    seconds, _ = benchmarking.time_call(lambda: compiled(*args), repeats)  # pylint: disable=cell-var-from-loop
    flops = benchmarking.flops(compiled)
    records.append({"what": "loop_profile", "part": name, "field": field,
                    "batch_size": batch_size, "fit_modes": fit_modes,
                    "matmul_dtype": matmul_dtype, "ms_per_batch": round(1e3 * seconds, 3),
                    "gflop_per_batch": round(flops / 1e9, 4),
                    "gflops": round(flops / seconds / 1e9, 2)})
  total = sum(r["ms_per_batch"] for r in records)
  for record in records:
    yield {**record, "share": round(record["ms_per_batch"] / total, 3),
           "loadavg": benchmarking.loadavg()}
  if field == "point":
    yield {**_per_face_head_record(compiled_parts["features"], fields, states, repeats),
           "batch_size": batch_size, "loadavg": benchmarking.loadavg()}

  loop = jax.jit(lambda am_, p, f: cascade.align_crops(am_, p, f, config))
  start = time.perf_counter()
  compiled = loop.lower(am, params, fields).compile()
  compile_s = time.perf_counter() - start
  seconds, _ = benchmarking.time_call(lambda: compiled(am, params, fields), repeats)
  yield {"what": "loop_profile", "part": "loop", "field": field, "batch_size": batch_size,
         "num_stages": num_stages, "fit_modes": fit_modes, "matmul_dtype": matmul_dtype,
         "ms_per_batch": round(1e3 * seconds, 3),
         "items_per_second": round(batch_size / seconds, 1),
         "stage_parts_ms": round(total, 3), "compile_s": round(compile_s, 2),
         "gflop_per_batch": round(benchmarking.flops(compiled) / 1e9, 4),
         "loadavg": benchmarking.loadavg()}
