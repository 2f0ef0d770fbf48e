"""The ``FaceModel`` container and its pure 3DMM math, shared by NumPy and JAX.

This module never imports JAX: the data pipeline uses it with NumPy arrays, the alignment code
with JAX arrays (see :mod:`dff_jax.array_api`). :func:`register_pytree` makes ``FaceModel`` a JAX
pytree; :mod:`dff_jax.face_model.jax_support` calls it on import.

Frame: model space, millimetres, x to the subject's left, y up, z towards the viewer (DESIGN.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Tuple

import numpy as np

from dff_jax.array_api import einsum, namespace

Array = Any

NUM_LANDMARKS = 68
# Per-vertex part labels (``FaceModel.vertex_part``); models without parts use PART_FACE.
PART_NAMES = ("face", "head_neck", "mouth_socket", "eyeball_left", "eyeball_right")
PART_FACE, PART_HEAD_NECK, PART_MOUTH_SOCKET, PART_EYEBALL_LEFT, PART_EYEBALL_RIGHT = range(5)
# iBUG-68 jaw contour: 0-7 on the subject's right (image left in a frontal view), 8 the chin,
# 9-16 on the subject's left.
RIGHT_JAW_LANDMARKS = tuple(range(0, 8))
LEFT_JAW_LANDMARKS = tuple(range(9, 17))
JAW_LANDMARKS = RIGHT_JAW_LANDMARKS + (8,) + LEFT_JAW_LANDMARKS
# iBUG-68 left-right permutation: landmark i of a mirrored face is landmark MIRROR_LANDMARKS[i]
# of the face itself (jaw 0 <-> 16, brows, eyes, nose wings, mouth; the midline maps to itself).
MIRROR_LANDMARKS = (tuple(range(16, -1, -1)) + tuple(range(26, 16, -1)) + (27, 28, 29, 30)
                    + (35, 34, 33, 32, 31) + (45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40)
                    + (54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66,
                       65))


@dataclasses.dataclass(frozen=True, eq=False)
class FaceModel:
  """A linear 3D morphable face model (identity + expression + albedo).

  All arrays are NumPy (after loading) or JAX (inside jit); V vertices, T triangles.

  Attributes:
    mean_vertices: ``[V, 3]`` float32, mean face, model space (mm).
    identity_basis: ``[Ki, V, 3]`` float32, identity offsets scaled by their standard deviation,
      so identity coefficients are ~N(0, 1).
    expression_basis: ``[Ke, V, 3]`` float32, expression offsets (mm per unit coefficient).
    expression_std: ``[Ke]`` float32, prior standard deviation of each expression coefficient
      (zero-mean Gaussian prior used by the fitting regulariser; the data pipeline samples
      expressions on this scale too).
    triangles: ``[T, 3]`` int32 vertex ids, counter-clockwise seen from the front.
    vertex_part: ``[V]`` int32 index into ``PART_NAMES``.
    landmark_vertex_ids: ``[68]`` int32 iBUG-68 (0-based) -> vertex id, the frontal-view
      positions; contour points move with the pose (see ``contour_candidates``).
    landmark_3d_vertex_ids: ``[68]`` int32 the fixed vertices of the 3D-landmark convention
      (AFLW2000-3D: the fitted shape's 68 landmark vertices projected, hidden ones included):
      ``landmark_vertex_ids`` with the jaw (0-16) moved onto the model's jaw line at the same
      heights (:func:`dff_jax.face_model.contour.jaw_line_at_landmark_heights`); equal to
      ``landmark_vertex_ids`` for a model without a jaw line.
    contour_candidates: ``[17, M]`` int32, for each jaw landmark 0..16 a row of M vertex ids from
      its frontal position (column 0 == ``landmark_vertex_ids[:17]``) along the face surface at
      roughly the same height (a "parallel"), marching inwards across the cheek towards the nose,
      the way the silhouette of the cheek turned away from the camera moves as the yaw grows
      (see :mod:`dff_jax.face_model.contour`); the chin row repeats one vertex.
    albedo_mean: ``[V, 3]`` float32 linear RGB reflectance in [0, 1].
    albedo_basis: ``[Ka, V, 3]`` float32 albedo offsets, coefficients ~N(0, 1).
    name: short name ("ict_default", "sfm", ...); static metadata.
    expression_names: names of the expression coefficients; static metadata.
  """

  mean_vertices: Array
  identity_basis: Array
  expression_basis: Array
  expression_std: Array
  triangles: Array
  vertex_part: Array
  landmark_vertex_ids: Array
  landmark_3d_vertex_ids: Array
  contour_candidates: Array
  albedo_mean: Array
  albedo_basis: Array
  name: str = "face_model"
  expression_names: Tuple[str, ...] = ()

  @property
  def num_vertices(self) -> int:
    return self.mean_vertices.shape[0]

  @property
  def num_identity(self) -> int:
    return self.identity_basis.shape[0]

  @property
  def num_expression(self) -> int:
    return self.expression_basis.shape[0]

  @property
  def num_albedo(self) -> int:
    return self.albedo_basis.shape[0]

  def replace(self, **changes) -> "FaceModel":
    return dataclasses.replace(self, **changes)


DATA_FIELDS = tuple(f.name for f in dataclasses.fields(FaceModel)
                    if f.name not in ("name", "expression_names"))
META_FIELDS = ("name", "expression_names")


def register_pytree() -> None:
  """Registers ``FaceModel`` as a JAX pytree (array fields are leaves). Idempotent."""
  import jax  # pylint: disable=g-import-not-at-top  (only JAX users pay for the import)
  if getattr(register_pytree, "_done", False):
    return
  jax.tree_util.register_dataclass(
      FaceModel, data_fields=list(DATA_FIELDS), meta_fields=list(META_FIELDS))
  register_pytree._done = True


# ----------------------------------------------------------------------------------------------
# Pure 3DMM math (NumPy or JAX, batched over leading dims of the coefficients)
# ----------------------------------------------------------------------------------------------


def vertices(model: FaceModel, shape_coefficients: Array,
             expression_coefficients: Array) -> Array:
  """Mesh vertices for the given coefficients.

  Args:
    model: the face model.
    shape_coefficients: ``[..., Ki]`` identity coefficients (~N(0, 1)).
    expression_coefficients: ``[..., Ke]`` expression coefficients.

  Returns:
    ``[..., V, 3]`` float32 vertices, model space (mm).
  """
  return (model.mean_vertices
          + einsum("...k,kvd->...vd", shape_coefficients, model.identity_basis)
          + einsum("...k,kvd->...vd", expression_coefficients, model.expression_basis))


def albedo(model: FaceModel, albedo_coefficients: Array) -> Array:
  """Per-vertex linear RGB albedo ``[..., V, 3]`` in [0, 1] for ``[..., Ka]`` coefficients."""
  xp = namespace(albedo_coefficients, model.albedo_mean)
  colours = model.albedo_mean + einsum("...k,kvd->...vd", albedo_coefficients, model.albedo_basis)
  return xp.clip(colours, 0.0, 1.0)


def gather_vertices(points: Array, vertex_ids: Array) -> Array:
  """``points[..., vertex_ids, :]`` for ``points [..., V, 3]`` and ``vertex_ids [N]`` or
  ``[..., N]`` (batched ids gather per batch element). Returns ``[..., N, 3]``."""
  xp = namespace(points, vertex_ids)
  if vertex_ids.ndim == 1:
    return points[..., vertex_ids, :]
  return xp.take_along_axis(points, vertex_ids[..., :, None], axis=-2)


def landmarks_3d(model: FaceModel, shape_coefficients: Array, expression_coefficients: Array,
                 vertex_ids: Array | None = None) -> Array:
  """3D positions of selected vertices (by default the 68 frontal landmarks), computed from the
  basis rows of those vertices only (cheap: no full mesh).

  Args:
    model: the face model.
    shape_coefficients: ``[..., Ki]`` identity coefficients.
    expression_coefficients: ``[..., Ke]`` expression coefficients.
    vertex_ids: ``[N]`` int vertex ids shared by the batch, or ``[..., N]`` per batch element
      (e.g. :func:`landmark_vertex_ids_for_pose`); default ``model.landmark_vertex_ids``.

  Returns:
    ``[..., N, 3]`` float32 points, model space (mm).
  """
  if vertex_ids is None:
    vertex_ids = model.landmark_vertex_ids
  xp = namespace(shape_coefficients, expression_coefficients, vertex_ids, model.mean_vertices)
  mean = xp.take(model.mean_vertices, vertex_ids, axis=0)    # [..., N, 3]
  identity = xp.take(model.identity_basis, vertex_ids, axis=1)  # [Ki, ..., N, 3]
  expression = xp.take(model.expression_basis, vertex_ids, axis=1)
  return (mean + einsum("...k,k...nd->...nd", shape_coefficients, identity)
          + einsum("...k,k...nd->...nd", expression_coefficients, expression))


def contour_vertex_ids(model: FaceModel, rotation: Array, vertices_mm: Array | None = None) -> Array:
  """Jaw-landmark (iBUG 0..16) vertex ids for a head pose ("landmark marching", 3DDFA/HPEN).

  Rule: on the side of the face turned away from the camera, each jaw landmark moves along its
  row of ``model.contour_candidates`` to the candidate that is outermost in the image (largest
  projection on the image direction of the model's x axis pointing away from the face centre);
  that candidate lies on the silhouette (the self-occluding outline of the cheek). On the side
  facing the camera, and on both sides at exactly zero yaw, the frontal vertex (column 0) is kept.
  The side turned away is the one whose model x axis points away from the camera
  (sign of ``rotation[..., 2, 0]``), so roll and pitch are handled too. No Python branching on
  array values: jit/vmap-able, static shapes.

  Args:
    model: the face model (``contour_candidates [17, M]`` int32).
    rotation: ``[..., 3, 3]`` model -> camera rotation (see :mod:`dff_jax.geometry`).
    vertices_mm: optional ``[..., V, 3]`` (or ``[V, 3]``) current mesh (model space, mm); default
      the mean shape.

  Returns:
    ``[..., 17]`` int32 vertex ids of the jaw landmarks for this pose.
  """
  xp = namespace(rotation, model.contour_candidates, vertices_mm)
  candidates = model.contour_candidates                       # [17, M]
  if vertices_mm is None:
    points = xp.take(model.mean_vertices, candidates, axis=0)  # [17, M, 3]
  else:                                                        # [(...,) 17, M, 3]
    points = xp.take(vertices_mm, candidates, axis=vertices_mm.ndim - 2)
  camera_xy = einsum("...ij,...rmj->...rmi", rotation[..., :2, :], points)  # [..., 17, M, 2]
  # Image direction of the model's +x axis (the subject's left) in camera x, y.
  x_axis = rotation[..., :2, 0]                               # [..., 2]
  x_axis = x_axis / xp.maximum(xp.sqrt(xp.sum(x_axis**2, axis=-1, keepdims=True)), 1e-9)
  outward = einsum("...rmi,...i->...rm", camera_xy, x_axis)    # [..., 17, M]
  # Rows 0..7 (subject's right) are outermost at the smallest value; rows 9..16 at the largest.
  side = xp.asarray(np.array([-1.0] * 8 + [0.0] + [1.0] * 8, dtype=np.float32))
  best = xp.argmax(outward * side[:, None], axis=-1)          # [..., 17]
  best_ids = xp.take_along_axis(
      xp.broadcast_to(candidates, best.shape + candidates.shape[-1:]), best[..., None],
      axis=-1)[..., 0]
  # Camera z of the model +x axis: negative -> the subject's left side is turned away.
  away_z = rotation[..., 2, 0][..., None]                     # [..., 1]
  turned_away = ((side > 0) & (away_z < 0)) | ((side < 0) & (away_z > 0))  # [..., 17]
  frontal = xp.broadcast_to(candidates[:, 0], best_ids.shape)
  return xp.where(turned_away, best_ids, frontal).astype(np.int32)


def landmark_vertex_ids_for_pose(model: FaceModel, rotation: Array,
                                 vertices_mm: Array | None = None) -> Array:
  """All 68 landmark vertex ids for a pose: ``landmark_vertex_ids`` with the jaw (0..16)
  replaced by :func:`contour_vertex_ids`. Args as there; returns ``[..., 68]`` int32."""
  xp = namespace(rotation, model.landmark_vertex_ids, vertices_mm)
  jaw = contour_vertex_ids(model, rotation, vertices_mm)
  rest = xp.broadcast_to(model.landmark_vertex_ids[17:], jaw.shape[:-1] + (NUM_LANDMARKS - 17,))
  return xp.concatenate([jaw, rest.astype(np.int32)], axis=-1)
