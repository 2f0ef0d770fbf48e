"""Face models for the pipeline and the sampling of face and view parameters (NumPy only).

* :func:`pipeline_face_model` loads (and caches per process) the configured face model through
  ``dff_jax.face_model.load_face_model``.
* :class:`PreparedModel` keeps the flattened bases the pipeline multiplies by every sample.
* :func:`sample_face_parameters` (one per sample: identity, expression, albedo, appearance) and
  :func:`sample_view_parameters` (one per view: pose, scale, translation) draw from a
  ``np.random.Generator``; the caller seeds it with ``(seed, index)``.

Frames: model space mm (x subject's left, y up, z to viewer); angles in radians; translation in
image pixels (x, y), pixel-centre convention of DESIGN.md section 3.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Dict, Optional

import numpy as np

from dff_jax import geometry
from dff_jax.face_model import model as fm

from data_pipeline import decimate
from data_pipeline.config import PipelineConfig

# ----------------------------------------------------------------------------------------------
# Face models
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def pipeline_face_model(spec: str) -> fm.FaceModel:
  """The face model named by a config (``"default"``, ``"ict"``, ``"sfm"`` or a path), loaded by
  ``dff_jax.face_model.load_face_model`` and cached per process.

  Raises:
    ValueError: the model cannot be loaded (unknown spec, missing or bad file).
  """
  from dff_jax.face_model import loaders  # pylint: disable=g-import-not-at-top
  try:
    return loaders.load_face_model(spec)
  except (FileNotFoundError, OSError) as error:
    raise ValueError(f"face model {spec!r} cannot be loaded: {error}") from error


def landmark_vertex_ids_for_pose(model: fm.FaceModel, rotation: np.ndarray,
                                 vertices: Optional[np.ndarray] = None) -> np.ndarray:
  """``[68]`` int64 landmark vertex ids for a pose: the jaw contour follows the silhouette
  (``dff_jax.face_model.landmark_vertex_ids_for_pose`` on this face's ``vertices [V, 3]``)."""
  return np.asarray(fm.landmark_vertex_ids_for_pose(model, rotation, vertices), dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class PreparedModel:
  """Per-process precomputation for fast per-sample evaluation of the rendered mesh.

  The rendered mesh may use a subset of the model's vertices (decimation); per-sample work runs
  on that compact set of ``U`` vertices.

  Attributes:
    model: the face model.
    num_identity_used: identity modes used (``min(Ki, max_identity_modes)``).
    used_vertices: ``[U]`` int64 model vertex ids of the rendered mesh (sorted).
    compact_of: ``[V]`` int64 compact index of each model vertex, -1 if not rendered.
    basis: ``[num_identity_used + Ke, U * 3]`` float32, stacked identity and expression bases.
    mean: ``[U * 3]`` float32 flattened mean.
    triangles: ``[T, 3]`` int64 rendered triangles over compact indices.
    model_triangles: ``[T, 3]`` int64 the same triangles over model vertex ids.
    eye_distance_mm: outer-eye-corner distance of the mean face (landmarks 36, 45).
    arkit: whether expressions are ARKit-like blendshape weights in [0, 1] (ICT).
  """

  model: fm.FaceModel
  num_identity_used: int
  used_vertices: np.ndarray
  compact_of: np.ndarray
  basis: np.ndarray
  mean: np.ndarray
  triangles: np.ndarray
  model_triangles: np.ndarray
  eye_distance_mm: float
  arkit: bool

  def vertices(self, shape_coefficients: np.ndarray, expression_coefficients: np.ndarray):
    """``[U, 3]`` float32 model-space positions (mm) of the rendered vertices for ``[Ki]`` /
    ``[Ke]`` coefficients (identity coefficients beyond ``num_identity_used`` are ignored)."""
    used = self.num_identity_used
    out = self.mean + np.asarray(shape_coefficients[:used], np.float32) @ self.basis[:used]
    expression = np.asarray(expression_coefficients, np.float32)
    active = np.nonzero(expression)[0]  # ARKit-like expressions are sparse
    if active.size:
      out += expression[active] @ self.basis[used + active]
    return out.reshape(-1, 3)

  def full_vertices(self, compact_vertices: np.ndarray) -> np.ndarray:
    """``[V, 3]`` float64 model-sized array with the rendered vertices filled in (others 0)."""
    full = np.zeros((self.model.num_vertices, 3))
    full[self.used_vertices] = compact_vertices
    return full


@functools.lru_cache(maxsize=4)
def prepared_model(spec: str, max_identity_modes: int,
                   render_max_triangles: int = 0) -> PreparedModel:
  """Cached :class:`PreparedModel` for a face-model spec."""
  return prepare_model(pipeline_face_model(spec), max_identity_modes, render_max_triangles)


def prepared_for(config: PipelineConfig) -> PreparedModel:
  """The cached :class:`PreparedModel` of a pipeline config."""
  return prepared_model(config.face_model, config.max_identity_modes, config.render_max_triangles)


def render_triangles(config: PipelineConfig) -> np.ndarray:
  """``[T', 3]`` int64 triangles the pipeline renders for ``config`` (over the model's vertex
  ids): what ``triangle_ids`` / ``points_triangle_ids`` of its samples index."""
  return prepared_for(config).model_triangles


def prepare_model(model: fm.FaceModel, max_identity_modes: int = 0,
                  render_max_triangles: int = 0) -> PreparedModel:
  """:class:`PreparedModel` of any FaceModel (e.g. a hand-built test mesh); with
  ``render_max_triangles > 0`` and a larger mesh, the rendered triangles are decimated
  (:mod:`data_pipeline.decimate`, landmarks and contour candidates kept)."""
  triangles = np.asarray(model.triangles, np.int64)
  if 0 < render_max_triangles < triangles.shape[0]:
    protected = np.concatenate([np.asarray(model.landmark_vertex_ids).ravel(),
                                np.asarray(model.contour_candidates).ravel()])
    triangles = decimate.decimated_triangles(model.mean_vertices, triangles, render_max_triangles,
                                             protected).astype(np.int64)
  ki = model.num_identity
  used = ki if max_identity_modes <= 0 else min(ki, max_identity_modes)
  v = model.num_vertices
  used_vertices = np.unique(triangles)
  compact_of = np.full(v, -1, np.int64)
  compact_of[used_vertices] = np.arange(used_vertices.size)
  u = used_vertices.size
  basis = np.concatenate([
      np.asarray(model.identity_basis[:used], np.float32)[:, used_vertices].reshape(used, u * 3),
      np.asarray(model.expression_basis, np.float32)[:, used_vertices].reshape(
          model.num_expression, u * 3)])
  mean = np.asarray(model.mean_vertices, np.float32)
  lm = np.asarray(model.landmark_vertex_ids)
  eye = float(np.linalg.norm(mean[lm[36]] - mean[lm[45]]))
  return PreparedModel(model=model, num_identity_used=used, used_vertices=used_vertices,
                       compact_of=compact_of, basis=np.ascontiguousarray(basis),
                       mean=mean[used_vertices].reshape(-1), triangles=compact_of[triangles],
                       model_triangles=triangles, eye_distance_mm=eye,
                       arkit="jawOpen" in model.expression_names)


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------


def _sample_expression(rng: np.random.Generator, prepared: PreparedModel,
                       config: PipelineConfig) -> np.ndarray:
  model = prepared.model
  ke = model.num_expression
  if ke == 0:
    return np.zeros(0, np.float32)
  if prepared.arkit:
    names = model.expression_names
    active = rng.random(ke) < 0.12
    weights = np.where(active, rng.uniform(0.0, 0.8, ke), 0.0)
    for name in ("jawOpen", "mouthClose", "jawForward", "jawLeft", "jawRight"):
      if name in names:
        weights[names.index(name)] = 0.0
    open_mouth = rng.random() < config.jaw_open_probability
    jaw_weight = rng.uniform(0.15, 0.7)
    if open_mouth:
      weights[names.index("jawOpen")] = jaw_weight
    return (weights * config.expression_scale).astype(np.float32)
  std = np.asarray(model.expression_std, np.float32)
  return (rng.normal(size=ke) * std * config.expression_scale).astype(np.float32)


def sample_face_parameters(rng: np.random.Generator, prepared: PreparedModel,
                           config: PipelineConfig) -> Dict[str, np.ndarray]:
  """Identity, expression, albedo and appearance of one face (shared by all its views).

  Returns:
    dict with ``shape_coefficients [Ki]``, ``expression_coefficients [Ke]``,
    ``albedo_coefficients [Ka]`` (float32) and ``appearance [16]`` float32 (random numbers in
    [0, 1) consumed by :func:`data_pipeline.shading.face_albedo`: skin tone, lips, brows, hair,
    irises).
  """
  model = prepared.model
  shape = np.zeros(model.num_identity, np.float32)
  shape[:prepared.num_identity_used] = (
      rng.normal(size=prepared.num_identity_used) * config.identity_std)
  expression = _sample_expression(rng, prepared, config)
  albedo_coefficients = rng.normal(size=model.num_albedo).astype(np.float32)
  appearance = rng.random(16).astype(np.float32)
  return dict(shape_coefficients=shape, expression_coefficients=expression,
              albedo_coefficients=albedo_coefficients, appearance=appearance)


def sample_view_parameters(rng: np.random.Generator, config: PipelineConfig,
                           prepared: PreparedModel, vertices: np.ndarray,
                           landmark_ids: np.ndarray) -> Dict[str, np.ndarray]:
  """Pose, scale and translation of one view.

  The scale makes the outer-eye-corner distance of the mean face ``face_size_range`` times the
  image side; the translation puts the centre of the projected landmarks at the image centre plus
  a uniform jitter (sub-pixel, continuous).

  Args:
    vertices: ``[V, 3]`` model-space vertices of this face (mm).
    landmark_ids: ``[68]`` frontal landmark vertex ids.

  Returns:
    dict of float64 scalars ``yaw_rad, pitch_rad, roll_rad, scale`` (pixels per mm),
    ``translation_px [2]`` and ``rotation [3, 3]``.
  """
  c = config
  if c.yaw_distribution == "uniform":
    yaw_deg = rng.uniform(-c.max_yaw_deg, c.max_yaw_deg)
  else:
    yaw_deg = float(np.clip(rng.normal() * c.yaw_std_deg, -c.max_yaw_deg, c.max_yaw_deg))
  pitch_deg = rng.uniform(-c.max_pitch_deg, c.max_pitch_deg)
  roll_deg = rng.uniform(-c.max_roll_deg, c.max_roll_deg)
  size = c.image_size
  fraction = rng.uniform(*c.face_size_range)
  scale = fraction * size / prepared.eye_distance_mm
  yaw, pitch, roll = np.deg2rad([yaw_deg, pitch_deg, roll_deg])
  rotation = geometry.euler_to_matrix(pitch, yaw, roll)
  projected = geometry.weak_perspective_project(
      vertices[landmark_ids], np.float64(scale), rotation, np.zeros(2))
  centre = 0.5 * (projected.min(axis=0) + projected.max(axis=0))
  jitter = rng.uniform(-c.translation_jitter, c.translation_jitter, size=2) * size
  translation = np.array([size / 2, size / 2]) - centre + jitter
  return dict(yaw_rad=np.float64(yaw), pitch_rad=np.float64(pitch), roll_rad=np.float64(roll),
              scale=np.float64(scale), translation_px=translation, rotation=rotation)


def screen_points(vertices: np.ndarray, view: Dict[str, np.ndarray]) -> np.ndarray:
  """``[V, 3]`` float64 ``(x_px, y_px, z_mm)``: image position by
  ``dff_jax.geometry.weak_perspective_project`` and camera depth (larger nearer)."""
  v = np.asarray(vertices, np.float64)
  xy = geometry.weak_perspective_project(v, view["scale"], view["rotation"], view["translation_px"])
  z = v @ view["rotation"][2]
  return np.concatenate([xy, z[:, None]], axis=1)
