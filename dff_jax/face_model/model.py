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
    contour_candidates: ``[17, M]`` int32, for each jaw landmark 0..16 a row of M vertex ids from
      its frontal position (column 0 == ``landmark_vertex_ids[:17]``) outwards towards the ear
      along the face surface at roughly the same height; the chin row repeats one vertex.
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
