r"""Compares face models: the embedded default against the Surrey Face Model (SFM), and draws one.

Called by ``python -m experiments.compare_face_models`` (:func:`compare_face_models`), which prints
the report:

* ``landmark_distance_ratio``: ``dff_jax.face_model.compare.landmark_distance_ratio(default, sfm)``
  (mean distance of the 50 fixed landmarks of the two similarity-aligned mean faces / outer-eye
  distance).
* ``fit_nme``: :func:`dff_jax.alignment.fit_landmarks` with the default model (default options)
  fitted to the 68 2D landmarks (jaw on the silhouette) of ``num_faces`` random SFM faces
  (identity ~N(0, 1), expression uniform in [0, expression_std], yaw uniform in [-60, 60] deg,
  pitch and roll uniform in [-10, 10] deg, seeded): mean reprojection NME, outer-eye-corner
  normalised (also per contour rule in ``fit_nme_by_contour``).
* with ``aflw_dir``: ``aflw_nme``, the mean reprojection NME (outer-eye-corner normalised) of
  the default and the SFM model fitted with ``contour="fixed"`` (AFLW2000-3D's 68 points are
  projected 3D landmarks with a fixed jaw line) to the first ``aflw_max_images`` annotations.

:func:`model_grid` draws the default model: columns = mean, identity components 1-3 at +2 and
-2 sigma, jaw open, smile, blink; top row from the front, bottom row at 60 degrees yaw.
:func:`synthesise_landmarks` and :func:`render_shaded` (NumPy) also serve the demo's landmark
fit. Image points are ``(x, y)`` pixels, pixel ``(i, j)`` centred at ``(j + 0.5, i + 0.5)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from dff_jax import geometry
from dff_jax.face_model import model as fm

SKIN_GREY = np.array([0.72, 0.62, 0.56])


# ----------------------------------------------------------------------------------------------
# Synthetic landmarks and rendering (NumPy)
# ----------------------------------------------------------------------------------------------


def synthesise_landmarks(model: fm.FaceModel, num_faces: int, seed: int,
                         max_yaw_deg: float = 60.0, max_pitch_roll_deg: float = 10.0,
                         eye_distance_px: float = 80.0, image_size: float = 256.0
                         ) -> Dict[str, np.ndarray]:
  """Random faces of ``model`` at random poses and their 68 2D landmarks (silhouette jaw).

  Identity ~N(0, 1); expression uniform in ``[0, expression_std]``; yaw uniform in
  ``[-max_yaw_deg, max_yaw_deg]``, pitch and roll uniform in ``[-max_pitch_roll_deg, ...]``;
  scale puts the mean face's outer eye corners ``eye_distance_px`` apart; the model origin at
  the image centre. Jaw landmarks by ``fm.landmark_vertex_ids_for_pose`` on the face's own mesh.

  Returns:
    dict of NumPy arrays: ``landmarks_px [N, 68, 2]`` float32 (image (x, y) pixels),
    ``vertex_ids [N, 68]``, ``shape_coefficients [N, Ki]``, ``expression_coefficients [N, Ke]``,
    ``yaw_rad, pitch_rad, roll_rad, scale [N]``, ``translation_px [N, 2]``.
  """
  rng = np.random.default_rng(seed)
  mean = np.asarray(model.mean_vertices, np.float64)
  ids = np.asarray(model.landmark_vertex_ids)
  scale = eye_distance_px / np.linalg.norm(mean[ids[36]] - mean[ids[45]])
  out: Dict[str, List[np.ndarray]] = {k: [] for k in (
      "landmarks_px", "vertex_ids", "shape_coefficients", "expression_coefficients", "yaw_rad",
      "pitch_rad", "roll_rad", "scale", "translation_px")}
  std = np.asarray(model.expression_std, np.float64)
  for _ in range(num_faces):
    shape = rng.normal(size=model.num_identity)
    expression = rng.uniform(0.0, 1.0, model.num_expression) * std
    yaw = np.radians(rng.uniform(-max_yaw_deg, max_yaw_deg))
    pitch, roll = np.radians(rng.uniform(-max_pitch_roll_deg, max_pitch_roll_deg, 2))
    rotation = geometry.euler_to_matrix(pitch, yaw, roll)
    vertices = np.asarray(fm.vertices(model, shape.astype(np.float32),
                                      expression.astype(np.float32)), np.float64)
    pose_ids = np.asarray(fm.landmark_vertex_ids_for_pose(model, rotation, vertices))
    translation = np.array([image_size / 2, image_size / 2])
    landmarks = geometry.weak_perspective_project(vertices[pose_ids], scale, rotation, translation)
    for key, value in (("landmarks_px", landmarks), ("vertex_ids", pose_ids),
                       ("shape_coefficients", shape), ("expression_coefficients", expression),
                       ("yaw_rad", yaw), ("pitch_rad", pitch), ("roll_rad", roll),
                       ("scale", scale), ("translation_px", translation)):
      out[key].append(np.asarray(value))
  result = {k: np.stack(v) for k, v in out.items()}
  for key in ("landmarks_px", "shape_coefficients", "expression_coefficients"):
    result[key] = result[key].astype(np.float32)
  return result


def render_shaded(vertices: np.ndarray, triangles: np.ndarray, scale: float,
                  rotation: np.ndarray, translation_px: np.ndarray, height: int, width: int,
                  background: int = 255) -> np.ndarray:
  """Grey Lambert render of a mesh under weak perspective (data_pipeline rasteriser).

  Args:
    vertices: ``[V, 3]`` model-space mesh (mm); triangles ``[T, 3]`` counter-clockwise.
    scale, rotation ``[3, 3]``, translation_px ``[2]``: the camera
      (``geometry.weak_perspective_project``).
    height, width: image size.

  Returns:
    ``[H, W, 3]`` uint8 image (light from the upper left front).
  """
  from data_pipeline import rasterizer  # pylint: disable=g-import-not-at-top
  v = np.asarray(vertices, np.float64)
  tris = np.asarray(triangles)
  xy = geometry.weak_perspective_project(v, scale, rotation, translation_px)
  depth = v @ np.asarray(rotation, np.float64)[2]
  raster = rasterizer.rasterize(np.concatenate([xy, depth[:, None]], axis=1), tris, height, width)
  normals = _vertex_normals(v, tris) @ np.asarray(rotation, np.float64).T
  light = np.array([-0.35, 0.45, 1.0])
  light /= np.linalg.norm(light)
  intensity = 0.22 + 0.78 * np.clip(normals @ light, 0.0, 1.0)
  tid = raster.triangle_ids
  covered = tid >= 0
  corners = intensity[tris[tid[covered]]]  # [P, 3]
  shade = np.sum(raster.barycentrics[covered] * corners, axis=-1)
  linear = shade[:, None] * SKIN_GREY[None, :]
  image = np.full((height, width, 3), background, np.uint8)
  image[covered] = (np.clip(linear, 0, 1) ** (1 / 2.2) * 255 + 0.5).astype(np.uint8)
  return image


def _vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
  """Area-weighted unit vertex normals ``[V, 3]`` (counter-clockwise triangles)."""
  p0, p1, p2 = (vertices[triangles[:, k]] for k in range(3))
  face_normals = np.cross(p1 - p0, p2 - p0)
  normals = np.zeros_like(vertices)
  for k in range(3):
    for d in range(3):
      normals[:, d] += np.bincount(triangles[:, k], weights=face_normals[:, d],
                                   minlength=len(vertices))
  return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def model_grid(model: fm.FaceModel, cell: int = 200) -> Tuple[np.ndarray, List[str]]:
  """The default-model figure: columns of faces, rows front / 60 degrees yaw.

  Returns:
    ``(image [H, W, 3] uint8, column labels)``.
  """
  from data_pipeline import draw  # pylint: disable=g-import-not-at-top
  ki, ke = model.num_identity, model.num_expression
  names = list(model.expression_names)
  columns: List[Tuple[str, np.ndarray, np.ndarray]] = [("mean", np.zeros(ki), np.zeros(ke))]
  for k in range(min(3, ki)):
    for sign in (2.0, -2.0):
      shape = np.zeros(ki)
      shape[k] = sign
      columns.append((f"identity {k + 1} {sign:+.0f} sigma", shape, np.zeros(ke)))

  def expression(*weights):
    e = np.zeros(ke)
    for name, w in weights:
      if name in names:
        e[names.index(name)] = w
    return e

  columns += [
      ("jaw open", np.zeros(ki), expression(("jawOpen", 0.8))),
      ("smile", np.zeros(ki), expression(("mouthSmile_L", 1.0), ("mouthSmile_R", 1.0),
                                         ("happiness", 1.0))),
      ("blink", np.zeros(ki), expression(("eyeBlink_L", 1.0), ("eyeBlink_R", 1.0))),
  ]
  mean = np.asarray(model.mean_vertices, np.float64)
  face = np.asarray(model.vertex_part) == fm.PART_FACE
  face = face if face.any() else np.ones(len(mean), bool)
  extent = np.ptp(mean[face, :2], axis=0).max()
  scale = 0.8 * cell / extent
  centre = mean[face].mean(axis=0)
  triangles = np.asarray(model.triangles)
  images = []
  for yaw_deg in (0.0, 60.0):
    rotation = geometry.euler_to_matrix(0.0, np.radians(yaw_deg), 0.0)
    offset = geometry.weak_perspective_project(centre[None], scale, rotation, np.zeros(2))[0]
    translation = np.array([cell / 2, cell / 2]) - offset
    for _, shape, expr in columns:
      vertices = np.asarray(fm.vertices(model, shape.astype(np.float32),
                                        expr.astype(np.float32)), np.float64)
      images.append(render_shaded(vertices, triangles, scale, rotation, translation, cell, cell))
  return draw.grid(images, columns=len(columns)), [c[0] for c in columns]


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------


def synthetic_fit_nme(model: fm.FaceModel, source: fm.FaceModel, num_faces: int, seed: int,
                      contours: Sequence[str] = ("nearest", "silhouette")) -> Dict[str, float]:
  """Mean reprojection NME (outer-eye-corner) of ``model`` fitted to ``source``'s landmarks."""
  from dff_jax import metrics  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import fitting  # pylint: disable=g-import-not-at-top
  faces = synthesise_landmarks(source, num_faces, seed)
  landmarks = faces["landmarks_px"]
  out = {}
  for contour in contours:
    result = fitting.fit_landmarks(model, landmarks, contour=contour)
    nme = metrics.nme(np.asarray(result.landmarks_px, np.float64),
                      landmarks.astype(np.float64), "inter_ocular")
    out[contour] = float(np.mean(nme))
  return out


def aflw_fit_nme(models: Dict[str, fm.FaceModel], aflw_dir: str, max_images: int
                 ) -> Dict[str, object]:
  """Reprojection NME of each model fitted with ``contour="fixed"`` to AFLW2000-3D annotations.

  Returns:
    ``{"num_images": N, name: mean inter-ocular NME, ..., "by_yaw": {name: {bin: {...}}}}``;
    ``by_yaw`` gives per |yaw| bin ([0, 30), [30, 60), [60, 90+] degrees, the annotation's pose in
    our convention) the inter-ocular and the bbox (sqrt(w * h) of the landmark box) NME.
  """
  from data_pipeline import readers  # pylint: disable=g-import-not-at-top
  from dff_jax import metrics  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import fitting  # pylint: disable=g-import-not-at-top
  pairs = readers.list_aflw2000(aflw_dir)[:max_images]
  annotations = [readers.read_aflw2000(_mat_of(pair)) for pair in pairs]
  landmarks = np.stack([a.landmarks_px for a in annotations]).astype(np.float64)
  yaw_deg = np.abs(np.degrees([a.yaw_rad for a in annotations]))
  box = np.sqrt(np.prod(landmarks.max(axis=1) - landmarks.min(axis=1), axis=-1))
  bins = {"[0,30)": (0, 30), "[30,60)": (30, 60), "[60,90]": (60, 1000)}
  out: Dict[str, object] = {"num_images": len(pairs), "by_yaw": {}}
  for name, model in models.items():
    result = fitting.fit_landmarks(model, landmarks.astype(np.float32), contour="fixed")
    fitted = np.asarray(result.landmarks_px, np.float64)
    nme = np.asarray(metrics.nme(fitted, landmarks, "inter_ocular"))
    nme_box = np.mean(np.linalg.norm(fitted - landmarks, axis=-1), axis=-1) / box
    out[name] = float(np.mean(nme))
    out["by_yaw"][name] = {
        label: {"n": int(np.sum(sel)), "nme_inter_ocular": float(np.mean(nme[sel])),
                "nme_bbox": float(np.mean(nme_box[sel]))}
        for label, (lo, hi) in bins.items()
        for sel in [(yaw_deg >= lo) & (yaw_deg < hi)] if np.any(sel)}
  return out


def _mat_of(pair) -> Path:
  """The ``.mat`` annotation of an AFLW2000-3D (image, annotation) pair."""
  for path in pair:
    if Path(path).suffix.lower() == ".mat":
      return Path(path)
  raise ValueError(f"no .mat file in {pair}")


def compare_face_models(face_model: str = "default", sfm: str = "sfm", num_faces: int = 200,
                        seed: int = 0,
                        out_png: str | Path = "out/compare_face_models/default_model_grid.png",
                        aflw_dir: str | None = None, aflw_max_images: int = 300
                        ) -> Dict[str, Any]:
  """The report of the module docstring; writes the model grid PNG to ``out_png``.

  Args:
    face_model, sfm: :func:`dff_jax.alignment.fit_files.load_model` specs of the model compared
      (and drawn) and of the reference.
    num_faces, seed: the random reference faces of ``fit_nme``.
    out_png: the grid picture.
    aflw_dir, aflw_max_images: optional AFLW2000-3D folder and how many annotations to fit.

  Raises:
    FileNotFoundError, ValueError: a model cannot be loaded (nothing is written then).
  """
  from dff_jax import image_io  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import fitting  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment.fit_files import load_model  # pylint: disable=g-import-not-at-top
  from dff_jax.face_model import compare  # pylint: disable=g-import-not-at-top
  model = load_model(face_model)
  reference = load_model(sfm)
  by_contour = synthetic_fit_nme(model, reference, num_faces, seed)
  report: Dict[str, Any] = {
      "face_model": model.name,
      "reference": reference.name,
      "landmark_distance_ratio": compare.landmark_distance_ratio(model, reference),
      "fit_nme": by_contour[fitting.DEFAULT_CONTOUR],
      "fit_nme_by_contour": by_contour,
      "num_faces": num_faces,
      "seed": seed,
  }
  if aflw_dir:
    report["aflw_nme"] = aflw_fit_nme({model.name: model, reference.name: reference}, aflw_dir,
                                      aflw_max_images)
  grid, labels = model_grid(model)
  Path(out_png).parent.mkdir(parents=True, exist_ok=True)
  image_io.write_png_atomic(Path(out_png), grid)
  report["grid_png"] = str(out_png)
  report["grid_columns"] = labels
  report["grid_rows"] = ["yaw 0 deg", "yaw 60 deg"]
  return report
