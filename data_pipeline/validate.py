"""Independent check of generated samples: exact correspondences, no occluded matches, determinism.

  python -m data_pipeline.validate --num_pairs=20 [--face_model=default|sfm|PATH] [--image_size=128]
  python -m data_pipeline.validate --num_pairs=20 --real_fits=/work/runs/real_fits_train.npz

Prints one JSON object:

* ``max_reprojection_error_px``: every valid correspondence is re-derived from the geometry
  alone: its surface point (``points_triangle_ids``, ``points_barycentrics``) on the mesh of the
  sample's coefficients (``dff_jax.face_model.model.vertices`` of the full model), projected with
  the sample's pose by ``dff_jax.geometry.euler_to_matrix`` + ``weak_perspective_project``, and
  compared with ``points_a_px`` / ``points_b_px`` (must be <= 0.5);
* ``occluded_matches``: valid correspondences whose surface point is not the front-most
  front-facing surface at its exact image position in view A or B, by a brute-force test against
  every triangle (no rasteriser code involved; must be 0);
* ``deterministic``: regenerating each sample in a fresh source gives byte-identical arrays;
* ``pairs_per_second``: generation speed in this process (wall clock), and CPU seconds per pair;
* counts (pairs, valid correspondences per pair, visible landmarks).
"""

from __future__ import annotations

import json
import time
from typing import Dict, Optional

from absl import app, flags
import numpy as np

from dff_jax import geometry
from dff_jax.face_model import model as fm

from data_pipeline import params
from data_pipeline.config import pipeline_config_from_dict
from data_pipeline.pairs import PairSource, generate_sample

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_pairs", 20, "samples to check")
flags.DEFINE_string("face_model", "default", "default | ict | sfm | PATH")
flags.DEFINE_integer("image_size", 128, "H = W")
flags.DEFINE_integer("num_views", 2, "views per sample")
flags.DEFINE_integer("num_correspondences", 256, "K")
flags.DEFINE_integer("seed", 0, "pipeline seed")
flags.DEFINE_integer("start", 0, "first index")
flags.DEFINE_string("real_fits", None, "validate real-face pairs (data_pipeline.real_faces."
                    "RealPairSource) over this fit cache instead of synthetic pairs")
flags.DEFINE_string("real_lifts", None, "with --real_fits: its lift cache "
                    "(experiments.lift_real_faces), read instead of lifting every face")


def brute_force_front_depth(screen: np.ndarray, triangles: np.ndarray, points_px: np.ndarray,
                            chunk: int = 64) -> np.ndarray:
  """Max depth ``[N]`` of front-facing triangles containing each exact image point (-inf none).

  Args:
    screen: ``[V, 3]`` (x_px, y_px, z_mm) projected vertices (larger z nearer).
    triangles: ``[T, 3]`` counter-clockwise (front) triangles.
    points_px: ``[N, 2]`` image points.
  """
  p = screen[triangles]  # [T, 3, 3]
  e1 = p[:, 1, :2] - p[:, 0, :2]
  e2 = p[:, 2, :2] - p[:, 0, :2]
  det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
  front = det < -1e-12  # clockwise in the y-down image = counter-clockwise from the front
  p, e1, e2, det = p[front], e1[front], e2[front], det[front]
  out = np.full(points_px.shape[0], -np.inf)
  for s in range(0, points_px.shape[0], chunk):
    q = points_px[s:s + chunk, None, :] - p[None, :, 0, :2]  # [n, T, 2]
    u = (q[..., 0] * e2[:, 1] - q[..., 1] * e2[:, 0]) / det
    v = (e1[:, 0] * q[..., 1] - e1[:, 1] * q[..., 0]) / det
    eps = 1e-9
    inside = (u >= -eps) & (v >= -eps) & (u + v <= 1 + eps)
    z = p[:, 0, 2] + u * (p[:, 1, 2] - p[:, 0, 2]) + v * (p[:, 2, 2] - p[:, 0, 2])
    out[s:s + chunk] = np.max(np.where(inside, z, -np.inf), axis=1)
  return out


def check_sample(model: fm.FaceModel, sample: Dict[str, np.ndarray], tolerance_mm: float,
                 triangles: Optional[np.ndarray] = None) -> Dict[str, float]:
  """Reprojection error and occluded valid matches of one sample (views 0 and 1).

  Args:
    model: the face model the sample was generated from.
    sample: the sample dict.
    tolerance_mm: depth tolerance of the occlusion test.
    triangles: ``[T, 3]`` the rendered mesh's triangles (``points_triangle_ids`` index them;
      default ``model.triangles``).
  """
  verts = np.asarray(fm.vertices(model, sample["shape_coefficients"].astype(np.float64),
                                 sample["expression_coefficients"].astype(np.float64)), np.float64)
  tris = np.asarray(model.triangles if triangles is None else triangles, np.int64)
  valid = np.nonzero(sample["valid"])[0]
  tri = sample["points_triangle_ids"][valid].astype(np.int64)
  bary = sample["points_barycentrics"][valid].astype(np.float64)
  surface = np.einsum("nv,nvd->nd", bary, verts[tris[tri]])  # [N, 3] model space
  max_error = 0.0
  occluded = np.zeros(valid.size, bool)
  for view, key in ((0, "points_a_px"), (1, "points_b_px")):
    rotation = geometry.euler_to_matrix(np.float64(sample["pitch_rad"][view]),
                                        np.float64(sample["yaw_rad"][view]),
                                        np.float64(sample["roll_rad"][view]))
    scale = np.float64(sample["scale"][view])
    translation = sample["translation_px"][view].astype(np.float64)
    projected = geometry.weak_perspective_project(surface, scale, rotation, translation)
    if valid.size:
      error = np.linalg.norm(projected - sample[key][valid].astype(np.float64), axis=1)
      max_error = max(max_error, float(error.max()))
    screen = np.concatenate([geometry.weak_perspective_project(verts, scale, rotation, translation),
                             (verts @ rotation[2])[:, None]], axis=1)
    depth = surface @ rotation[2]
    front = brute_force_front_depth(screen, tris, projected)
    occluded |= front > depth + tolerance_mm
  return dict(max_reprojection_error_px=max_error, occluded_matches=int(occluded.sum()),
              valid=int(valid.size))


def arrays_identical(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> bool:
  """Same keys, dtypes, shapes and bytes."""
  if a.keys() != b.keys():
    return False
  return all(np.asarray(a[k]).dtype == np.asarray(b[k]).dtype
             and np.asarray(a[k]).shape == np.asarray(b[k]).shape
             and np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes() for k in a)


def validate(config, num_pairs: int, start: int = 0, real_fits: Optional[str] = None,
             real_lifts: Optional[str] = None) -> Dict[str, object]:
  """Generates ``num_pairs`` samples and returns the JSON-able report of the module docstring
  (with ``real_fits``: real-face pairs, whose geometric checks cover the pairs with a surface
  correspondence, ``photo_render`` and ``render_render``; ``photo_warp`` pairs are exact by
  construction and checked for determinism only)."""
  if real_fits:
    from data_pipeline import real_faces  # pylint: disable=g-import-not-at-top
    from data_pipeline import real_views  # pylint: disable=g-import-not-at-top
    real_config = real_faces.RealFacesConfig(fits=real_fits, pipeline=config,
                                             lifts=real_lifts or "")

    def make_source():
      return real_views.RealPairSource(real_config)
  else:
    def make_source():
      return PairSource(config)
  source = make_source()
  _ = source[start]  # load the model outside the timing
  wall, cpu = time.perf_counter(), time.process_time()
  samples = [source[start + i] for i in range(num_pairs)]
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  model = params.pipeline_face_model(config.face_model)
  triangles = params.render_triangles(config)
  max_error, occluded, valid_counts, lm_visible = 0.0, 0, [], []
  for sample in samples:
    if real_fits and int(sample["kind"]) == 2:
      continue
    result = check_sample(model, sample, config.depth_tolerance_mm, triangles)
    max_error = max(max_error, result["max_reprojection_error_px"])
    occluded += result["occluded_matches"]
    valid_counts.append(result["valid"])
    if "landmarks_visible" in sample:
      lm_visible.append(float(sample["landmarks_visible"].mean()))
  fresh = make_source()
  deterministic = all(arrays_identical(s, fresh[start + i]) for i, s in enumerate(samples[:5]))
  if not real_fits:
    deterministic &= arrays_identical(samples[0], generate_sample(config, start))
  return dict(
      num_pairs=num_pairs, face_model=str(config.face_model), image_size=config.image_size,
      num_views=config.num_views, num_correspondences=config.num_correspondences,
      max_reprojection_error_px=max_error, occluded_matches=int(occluded),
      deterministic=bool(deterministic),
      pairs_per_second=num_pairs / wall, cpu_seconds_per_pair=cpu / num_pairs,
      mean_valid_correspondences=float(np.mean(valid_counts)),
      min_valid_correspondences=int(np.min(valid_counts)),
      landmarks_visible_fraction=float(np.mean(lm_visible)) if lm_visible else None,
      real_fits=real_fits, real_lifts=real_lifts,
      ok=bool(max_error <= 0.5 and occluded == 0 and deterministic))


def main(argv):
  del argv
  config = pipeline_config_from_dict(
      seed=FLAGS.seed, face_model=FLAGS.face_model, image_size=FLAGS.image_size,
      num_views=FLAGS.num_views, num_correspondences=FLAGS.num_correspondences)
  print(json.dumps(validate(config, FLAGS.num_pairs, FLAGS.start, FLAGS.real_fits,
                            FLAGS.real_lifts), indent=2))


if __name__ == "__main__":
  app.run(main)
