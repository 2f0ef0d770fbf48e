"""Multi-view alignment evaluation: held-out sets of one identity rendered from several yaws,
single-view vs joint (shared identity) cascades and the oracle fits, similarity-aligned shape
errors by face region, and the pictures of the recovered shapes.

:func:`evaluate_multiview` is ``python -m experiments.eval_multiview`` as a function; the
protocol and the summary's layout are described in that command's docstring. Importing this
module does not import JAX.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List

RENDER_SETTINGS = dict(image_size=192, num_correspondences=4, face_size_range=(0.18, 0.27))
ERROR_SATURATION_MM = 8.0


# ----------------------------------------------------------------------------------------------
# Shapes: similarity-aligned vertex error and pictures (NumPy)
# ----------------------------------------------------------------------------------------------


def aligned_error(points, truth):
  """``(mean error mm, per-vertex error [N], aligned points [N, 3])`` of ``points [N, 3]``
  after the least-squares similarity onto ``truth [N, 3]`` (model mm)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dff_jax import geometry  # pylint: disable=g-import-not-at-top
  points = np.asarray(points, np.float64)
  truth = np.asarray(truth, np.float64)
  scale, rotation, translation = geometry.estimate_similarity(points, truth)
  aligned = geometry.apply_similarity(points, scale, rotation, translation)
  error = np.linalg.norm(aligned - truth, axis=1)
  return float(error.mean()), error, aligned


def render_shape(vertices, triangles, yaw_deg: float, size: int, errors=None):
  """A shaded picture ``[size, size, 3]`` uint8 of a mesh (model mm) turned by ``yaw_deg``
  (orthographic, light from the viewer, z-buffered); ``errors [N]`` (mm) tint it red."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from data_pipeline import rasterizer, shading  # pylint: disable=g-import-not-at-top
  from dff_jax import geometry  # pylint: disable=g-import-not-at-top
  vertices = np.asarray(vertices, np.float64)
  rotation = np.asarray(geometry.euler_to_matrix(0.0, np.radians(yaw_deg), 0.0), np.float64)
  camera = vertices @ rotation.T
  centre = (camera.max(0) + camera.min(0)) / 2
  extent = float(np.max(camera.max(0)[:2] - camera.min(0)[:2]))
  scale = 0.9 * size / max(extent, 1e-6)
  screen = np.stack([size / 2 + scale * (camera[:, 0] - centre[0]),
                     size / 2 - scale * (camera[:, 1] - centre[1]), camera[:, 2]], axis=1)
  raster = rasterizer.rasterize(screen, triangles, size, size)
  normals = shading.vertex_normals(camera, triangles)
  ids = np.maximum(raster.triangle_ids, 0)
  corner_normals = normals[triangles[ids]]  # [H, W, 3, 3]
  normal = np.einsum("hwk,hwkd->hwd", raster.barycentrics, corner_normals)
  normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-12)
  light = np.array([0.3, 0.4, 1.0]) / np.linalg.norm([0.3, 0.4, 1.0])
  intensity = 0.25 + 0.75 * np.clip(normal @ light, 0.0, 1.0)
  colour = np.broadcast_to(np.array([0.85, 0.85, 0.85]), normal.shape).copy()
  if errors is not None:
    corner_errors = np.asarray(errors, np.float64)[triangles[ids]]
    value = np.clip(np.einsum("hwk,hwk->hw", raster.barycentrics, corner_errors)
                    / ERROR_SATURATION_MM, 0.0, 1.0)[..., None]
    colour = (1 - value) * colour + value * np.array([0.95, 0.15, 0.1])
  picture = np.where((raster.triangle_ids >= 0)[..., None], colour * intensity[..., None], 1.0)
  return (np.clip(picture, 0, 1) * 255 + 0.5).astype(np.uint8)


def shapes_figure(panels: List[Dict[str, Any]], triangles, size: int = 160):
  """Rows of ``(label, vertices [N, 3], errors [N] or None)`` panels, each drawn frontal and in
  profile (yaw 90 degrees, nose to the image right); returns ``[H, W, 3]`` uint8."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import draw  # pylint: disable=g-import-not-at-top
  header = 14
  rows = []
  for row in panels:
    tiles = []
    for label, vertices, errors in row:
      pair = [render_shape(vertices, triangles, yaw, size, errors) for yaw in (0.0, 90.0)]
      tile = np.concatenate([np.full((header, 2 * size, 3), 255, np.uint8),
                             np.concatenate(pair, axis=1)], axis=0)
      draw.draw_text(tile, label, 4, 3, (0, 0, 0))
      tiles.append(np.pad(tile, ((0, 4), (0, 4), (0, 0)), constant_values=200))
    rows.append(np.concatenate(tiles, axis=1))
  return np.concatenate(rows, axis=0)


# ----------------------------------------------------------------------------------------------
# The evaluation
# ----------------------------------------------------------------------------------------------


def _statistics(values) -> Dict[str, Any]:
  import numpy as np  # pylint: disable=g-import-not-at-top
  values = np.asarray(values, np.float64)
  return dict(mean=float(np.mean(values)), median=float(np.median(values)),
              std=float(np.std(values)), count=int(values.size))


def _face_regions(model):
  """``{"face": ids, "inner_face": ids}`` vertex ids: the model's face part
  (``vertex_part == PART_FACE``; for ICT-like models the whole head skin) and the inner face
  (its triangles in front of the ears, chin to upper forehead, as the overlay outline of
  :func:`dff_jax.alignment.draw.mesh_outline_structure`)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import draw  # pylint: disable=g-import-not-at-top
  from dff_jax.face_model import model as face_model_lib  # pylint: disable=g-import-not-at-top
  face = np.nonzero(np.asarray(model.vertex_part) == face_model_lib.PART_FACE)[0]
  inner = np.unique(draw.mesh_outline_structure(model).triangles)
  return {"face": face, "inner_face": inner}


def _region_triangles(model, ids):
  """Triangles ``[T, 3]`` of the model with all corners in ``ids``, re-indexed into ``ids``."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  remap = np.full(np.asarray(model.mean_vertices).shape[0], -1, np.int64)
  remap[ids] = np.arange(len(ids))
  triangles = remap[np.asarray(model.triangles)]
  return triangles[np.all(triangles >= 0, axis=1)]


def evaluate_multiview(out_dir: str | Path, features: str = "sift", cascade_path=None,
                       checkpoint=None, num_sets: int = 40, views=(2, 4, 8),
                       seed: int = 50_000, num_pictures: int = 3, regularisations=None,
                       oracle_noise_px=(0.0, 2.0, 5.0), shared_expression: bool = False,
                       write_every: int = 5, log=print) -> Dict[str, Any]:
  """``python -m experiments.eval_multiview`` as a function: runs the evaluation described in
  that command's docstring; writes ``out_dir/summary.json`` and ``out_dir/shapes.png``.

  Args:
    out_dir: output folder.
    features, cascade_path, checkpoint: the cascade (see :func:`dff_jax.alignment.runner.
      resolve_aligner`; default the shipped ``cascade_<features>.npz``).
    num_sets: identities; views: set sizes; seed: pipeline seed.
    num_pictures: sets drawn in ``shapes.png``.
    regularisations: shape-fit lambdas (mm^2) to run every method with (default: the
      cascade's own ``shape_regularisation``); each replaces ``config.shape_regularisation``
      for the single-view and the joint cascades alike.
    oracle_noise_px: for the "oracle" section, Gaussian noise (image px, per coordinate) added
      to the TRUE landmarks, fitted under the TRUE poses (per-view fit vs joint fit, no
      cascade): what the joint fit gains when the landmarks and poses are good.
    shared_expression: also run the joint cascade with one expression per set.
    write_every: rewrite ``summary.json`` (partial, ``num_sets_done``) every this many sets.

  Returns:
    The summary dict (see ``experiments/eval_multiview.py``'s docstring).

  Raises:
    FileNotFoundError / ValueError: missing cascade / checkpoint, bad arguments.
  """
  import dataclasses  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from data_pipeline import faces as faces_lib  # pylint: disable=g-import-not-at-top
  from data_pipeline import pairs  # pylint: disable=g-import-not-at-top
  from data_pipeline.config import pipeline_config_from_dict  # pylint: disable=g-import-not-at-top
  from dff_jax import descriptor_fields  # pylint: disable=g-import-not-at-top
  from dff_jax import file_io, geometry, image_io, metrics, provenance  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import cascade, multiview, runner, training  # pylint: disable=g-import-not-at-top
  from dff_jax.face_model import model as face_model_lib  # pylint: disable=g-import-not-at-top

  views = sorted({int(v) for v in views})
  if not views or views[0] < 1:
    raise ValueError(f"--views must be positive set sizes, got {views}")
  if num_sets < 1:
    raise ValueError(f"--num_sets must be >= 1, got {num_sets}")
  spec = runner.resolve_aligner(cascade_path, features, checkpoint)
  aligner = runner.load_aligner(spec, cache=False)
  model, am, params, base_config = (aligner.face_model, aligner.alignment_model, aligner.params,
                                    aligner.config)
  if not regularisations:
    regularisations = [base_config.shape_regularisation]
  regularisations = [float(r) for r in regularisations]
  if min(regularisations) <= 0:
    raise ValueError(f"--regularisations must be positive, got {regularisations}")
  configs = {lam: dataclasses.replace(base_config, shape_regularisation=lam)
             for lam in regularisations}
  size = base_config.crop_size
  max_views = max(views[-1], 2)
  data_config = pipeline_config_from_dict(dict(RENDER_SETTINGS, num_views=max_views,
                                               face_model=spec.face_model), seed=int(seed))
  source = pairs.PairSource(data_config)
  jitter = faces_lib.BoxJitter()
  describe = training.make_crop_and_describe(aligner.describer, size)
  single = jax.jit(cascade.align_crops, static_argnames=("config",))
  joint = jax.jit(multiview.run_multiview_cascade,
                  static_argnames=("config", "share_expression", "prior_per_view"))
  single_fit = jax.jit(jax.vmap(cascade.refit, in_axes=(None, 0, 0, 0, None)),
                       static_argnums=(4,))
  joint_fit = jax.jit(multiview.joint_refit,
                      static_argnames=("config", "share_expression", "prior_per_view"))

  regions = _face_regions(model)
  num_identity = model.num_identity
  zero_expression = np.zeros(model.num_expression, np.float32)

  def region_vertices(shape, expression=None):
    expression = zero_expression if expression is None else expression
    points = np.asarray(face_model_lib.vertices(model, np.asarray(shape, np.float32),
                                                np.asarray(expression, np.float32)))
    return {name: points[ids] for name, ids in regions.items()}

  def errors(shape, expression, truth):
    points = region_vertices(shape, expression)
    return {name: aligned_error(points[name], truth[name]) for name in regions}

  def pad_identity(shape):
    out = np.zeros(num_identity, np.float32)
    out[:min(num_identity, len(shape))] = shape[:num_identity]
    return out

  joint_variants = [("joint", False, False), ("joint_prior_per_view", False, True)]
  if shared_expression:
    joint_variants.append(("joint_shared_expression", True, False))
  methods = ["single", "single_averaged"] + [name for name, _, _ in joint_variants]
  oracle_methods = ["single"] + [name for name, _, _ in joint_variants]
  records: Dict[Any, Any] = {}

  def record(key, name, value):
    records.setdefault(key, {}).setdefault(name, []).append(value)

  def _build_summary(done):
    def summarise(key):
      return {name: _statistics(values) for name, values in records[key].items()}

    results = {}
    for lam in regularisations:
      per_lambda = {}
      for num_views in views:
        entry = {name: summarise((lam, num_views, name)) for name in methods}
        entry["mean_shape"] = summarise("mean_shape")
        single_errors = np.asarray(records[(lam, num_views, "single")]["identity_face"])
        for name, _, _ in joint_variants:
          joint_errors = np.asarray(records[(lam, num_views, name)]["identity_face"])
          entry[f"{name}_better_fraction"] = float(np.mean(joint_errors < single_errors))
        per_lambda[f"V={num_views}"] = entry
      results[f"lambda={lam:g}"] = per_lambda
    oracle = {}
    for noise in oracle_noise_px:
      for lam in regularisations:
        oracle[f"noise={float(noise):g}px lambda={lam:g}"] = {
            f"V={num_views}": {name: summarise(("oracle", float(noise), lam, num_views, name))
                               for name in oracle_methods}
            for num_views in views}
    summary = dict(
        features=spec.features, cascade=str(spec.cascade_path), face_model=model.name,
        num_sets=int(num_sets), num_sets_done=int(done), views=views, seed=int(seed),
        render=dict(RENDER_SETTINGS, num_views=max_views),
        box_protocol="jittered detector-like box around each view's true landmarks "
                     "(data_pipeline.faces.BoxJitter defaults)",
        metrics={
            "identity_<region>": "mean distance (mm) over the region's vertices between the "
                                 "recovered neutral face (identity only) and the true neutral "
                                 "face, after a least-squares similarity (rotation, translation, "
                                 "scale); single: mean over the V views' own fits",
            "shape_<region>": "the same with each view's recovered / true expression (mean over "
                              "views)",
            "regions": {"face": f"vertex_part == PART_FACE ({len(regions['face'])} vertices)",
                        "inner_face": "face triangles in front of the ears, chin to upper "
                                      f"forehead ({len(regions['inner_face'])} vertices)"},
            "nme": "landmark NME per view, normaliser sqrt(w*h) of the true landmarks' bounding "
                   "box, all 68 points",
            "<joint method>_better_fraction": "fraction of sets whose identity_face error is "
                                              "below single's",
            "oracle": "no cascade: the TRUE landmarks plus Gaussian noise (image px per "
                      "coordinate) fitted under the TRUE poses, per view vs jointly",
        },
        cascade_config=dict(num_stages=base_config.num_stages, crop_size=size,
                            shape_regularisation=base_config.shape_regularisation),
        regularisations=regularisations, seconds=round(time.time() - start, 1),
        results=results, oracle=oracle,
        models=provenance.model_files({"cascade": spec.cascade_path, "encoder": spec.checkpoint}))
    return summary

  def write_summary(done):
    summary = _build_summary(done)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    file_io.write_json_atomic(out / "summary.json", summary)
    if pictures:
      triangles = _region_triangles(model, regions["face"])
      image_io.write_png_atomic(out / "shapes.png", shapes_figure(pictures, triangles))
    return summary

  pictures = []
  start = time.time()
  for index in range(int(num_sets)):
    sample = source[index]
    landmarks = sample["landmarks_px"].astype(np.float32)  # [Vmax, 68, 2]
    boxes = np.stack([faces_lib.jitter_box(np.random.default_rng((seed, index, v, 7)),
                                           faces_lib.landmark_box(landmarks[v]), jitter)
                      for v in range(max_views)])
    crop_boxes = training.crop_boxes_for(boxes, base_config)
    maps = describe(sample["images"], crop_boxes)  # fields (dense maps or point fields), [Vmax]
    true_shape = pad_identity(sample["shape_coefficients"])
    true_expression = sample["expression_coefficients"]
    truth_neutral = region_vertices(true_shape)
    truth_posed = region_vertices(true_shape, true_expression)

    def nme(points_crop, v):
      points = np.asarray(geometry.crop_to_image(np.asarray(points_crop), crop_boxes[v], size))
      return float(metrics.nme(points, landmarks[v], "bbox"))

    def add_shape_errors(key, identity, expressions, num_views):
      """identity [Ki] or [V, Ki] (per view), expressions [V, Ke]."""
      identity = np.asarray(identity)
      per_view = identity.ndim == 2
      neutral = ([errors(identity[v], None, truth_neutral) for v in range(num_views)]
                 if per_view else [errors(identity, None, truth_neutral)])
      posed = [errors(identity[v] if per_view else identity, expressions[v], truth_posed)
               for v in range(num_views)]
      for region in regions:
        record(key, f"identity_{region}", np.mean([e[region][0] for e in neutral]))
        record(key, f"shape_{region}", np.mean([e[region][0] for e in posed]))
      return neutral

    mean_neutral = errors(np.zeros(num_identity), None, truth_neutral)
    mean_posed = errors(np.zeros(num_identity), None, truth_posed)
    for region in regions:
      record("mean_shape", f"identity_{region}", mean_neutral[region][0])
      record("mean_shape", f"shape_{region}", mean_posed[region][0])

    row = [("TRUTH", truth_neutral["face"], None)]
    for lam, config in configs.items():
      singles = jax.device_get(single(am, params, maps, config))
      single_nme = [nme(singles.landmarks_px[v], v) for v in range(max_views)]
      for num_views in views:
        key = (lam, num_views)
        neutral = add_shape_errors(key + ("single",), singles.shape_coefficients[:num_views],
                                   singles.expression_coefficients, num_views)
        for v in range(num_views):
          record(key + ("single",), "nme", single_nme[v])
        add_shape_errors(key + ("single_averaged",),
                         np.mean(singles.shape_coefficients[:num_views], axis=0),
                         singles.expression_coefficients, num_views)
        subset = descriptor_fields.map_faces(lambda x, n=num_views: x[:n], maps)
        for name, share, per_view in joint_variants:
          states, _ = joint(am, params, subset, config, share_expression=share,
                            prior_per_view=per_view)
          states = jax.device_get(states)
          joint_neutral = add_shape_errors(key + (name,), states.shape_coefficients[0],
                                           states.expression_coefficients, num_views)
          for v in range(num_views):
            record(key + (name,), "nme", nme(states.landmarks_px[v], v))
          if num_views == views[-1] and index < num_pictures and not share:
            best = joint_neutral[0]["face"]
            label = "JOINT PPV" if per_view else "JOINT"
            row.append((f"{label} V={num_views} L={lam:g} {best[0]:.2f} MM", best[2], best[1]))
        if num_views == views[-1] and index < num_pictures:
          first = neutral[0]["face"]
          row.append((f"SINGLE VIEW 0 L={lam:g} {first[0]:.2f} MM", first[2], first[1]))

    # Oracle: true landmarks (+ noise) and true poses, per-view fits vs the joint fit.
    pose = np.concatenate([np.stack([sample[k] for k in faces_lib.POSE_KEYS], axis=1),
                           sample["translation_px"]], axis=1).astype(np.float32)
    weights = jnp.asarray(sample["landmarks_visible"], jnp.float32)
    noise_rng = np.random.default_rng((seed, index, 11))
    for noise in oracle_noise_px:
      noisy = jnp.asarray(landmarks + noise * noise_rng.normal(size=landmarks.shape), jnp.float32)
      for lam, config in configs.items():
        fits = jax.device_get(single_fit(am, noisy, jnp.asarray(pose), weights, config))
        for num_views in views:
          key = ("oracle", float(noise), lam, num_views)
          add_shape_errors(key + ("single",), fits.shape_coefficients[:num_views],
                           fits.expression_coefficients, num_views)
          for name, share, per_view in joint_variants:
            fit = jax.device_get(joint_fit(am, noisy[:num_views], jnp.asarray(pose[:num_views]),
                                           weights[:num_views], config, share_expression=share,
                                           prior_per_view=per_view))
            add_shape_errors(key + (name,), fit.shape_coefficients[0],
                             fit.expression_coefficients, num_views)
    if index < num_pictures:
      pictures.append(row)
    last = records[(regularisations[0], views[-1], "joint")]["identity_face"][-1]
    last_single = records[(regularisations[0], views[-1], "single")]["identity_face"][-1]
    log(f"set {index + 1}/{num_sets}: {time.time() - start:.0f} s; lambda={regularisations[0]:g} "
        f"V={views[-1]} identity error joint {last:.2f} mm, single {last_single:.2f} mm, mean "
        f"shape {mean_neutral['face'][0]:.2f} mm")
    if write_every and (index + 1) % write_every == 0 and index + 1 < num_sets:
      write_summary(index + 1)

  return write_summary(num_sets)
