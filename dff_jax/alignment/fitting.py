"""Pose and 3DMM shape from 68 2D landmarks: closed-form, batched, jit-able, differentiable.

The fit alternates, a fixed number of times (``lax.fori_loop``, static count), as eos's
``fit_shape_and_pose`` does (Huber et al., "A Multiresolution 3D Morphable Face Model and Fitting
Framework", VISAPP 2016):

1. re-select the 17 jaw-contour correspondences for the current pose and shape (see ``contour``);
2. :func:`estimate_pose_weak_perspective`: affine camera by weighted linear least squares, then
   the nearest scaled rotation (eos ``estimate_orthographic_projection_linear``, after Hartley &
   Zisserman, "Multiple View Geometry", 2nd ed., algorithm 7.2 for the affine camera);
3. identity + expression coefficients by Tikhonov-regularised linear least squares under that
   rotation (eos ``fit_shape_to_landmarks_linear``; Blanz & Vetter style prior; the paper's
   per-stage shape fit, ``paper.md`` "Alignment" step 4), solved jointly with the scale and
   translation (still one linear solve, see :func:`_fit_scale_translation_shape_single`): this
   removes the slow zig-zag between the pose scale and the size-like identity modes, so noise-free
   landmarks are reproduced exactly after ~10-30 passes. :func:`fit_shape_linear` is the same
   solve with the whole pose given (the alignment cascade's per-stage shape fit).

Defaults (``DEFAULT_*``): lambda = 1 mm^2, 10 passes, ``contour="nearest"``. Measured with them
(``python -m experiments.compare_face_models --aflw_dir=../shared/datasets/aflw2000_3d_dev``):
reprojection NME (outer-eye-corner) 0.025 on 300 AFLW2000-3D annotations with the default model
(``contour="fixed"``), 0.040 with the SFM; 0.023 fitting the default model to 200 random SFM faces
(yaw in [-60, 60] degrees, silhouette jaw).

Frames (DESIGN.md section 3): model space in millimetres, x to the subject's left, y up, z
towards the viewer; image points ``(x, y)`` in pixels, x right, y down, pixel ``(i, j)`` centred
at ``(j + 0.5, i + 0.5)``; camera ``dff_jax.geometry.weak_perspective_project``, Euler angles
``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)`` (``dff_jax.geometry.euler_to_matrix``).

Length: a little over 500 lines, one algorithm (pose, contour, shape alternation and its
closed-form pieces) with the rationale of each step beside it.

Units of the regulariser: shape residuals are measured in model millimetres (pixel residuals
divided by the current scale), so ``regularisation`` is a landmark noise variance in mm^2 relative
to the prior (identity ~N(0, 1), expression ~N(0, expression_std^2)) and does not depend on the
image size. Landmark ``weights`` multiply each landmark's squared residual in both the pose and
the shape step; zero means "not seen" (e.g. self-occluded at large yaw): the prior keeps the
shape solve well posed, and the pose needs at least four non-coplanar landmarks with weight > 0.

Every public function takes one face (``landmarks_px [68, 2]``) or leading batch dims
(``[..., 68, 2]``, vmapped); the model is shared (not batched). Use :func:`fit_landmarks` on
untrusted input: it validates outside jit and raises ``ValueError`` with a readable message.

Note: weak perspective ignores the perspective distortion of close-up photos; the pose step is
the linear (algebraic) estimate, not the maximum-likelihood one, so with noisy landmarks the pose
is slightly biased, which the alternation with the shape partly absorbs.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dff_jax import geometry
from dff_jax.array_api import einsum
from dff_jax.face_model import model as face_model_lib

from dff_jax.face_model import jax_support  # noqa: F401  (registers FaceModel as a pytree)

Array = Any
FaceModel = face_model_lib.FaceModel

NUM_LANDMARKS = face_model_lib.NUM_LANDMARKS
NUM_JAW = 17
CONTOUR_MODES = ("fixed", "silhouette", "nearest")
DEFAULT_REGULARISATION = 1.0
DEFAULT_NUM_ITERATIONS = 10
DEFAULT_CONTOUR = "nearest"
# iBUG-68 outer eye corners (inter-ocular NME normaliser).
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 36, 45


class FitResult(NamedTuple):
  """Result of :func:`fit_shape_and_pose` (a pytree; every field has the input's batch dims ``...``).

  Attributes:
    scale: ``[...]`` float32, pixels per millimetre.
    rotation: ``[..., 3, 3]`` float32, model space -> camera space.
    pitch_rad, yaw_rad, roll_rad: ``[...]`` float32 Euler angles of ``rotation``
      (``geometry.matrix_to_euler``).
    translation_px: ``[..., 2]`` float32, image position (x, y) of the model origin, pixels.
    shape_coefficients: ``[..., Ki]`` float32 identity coefficients (~N(0, 1) prior).
    expression_coefficients: ``[..., Ke]`` float32 expression coefficients.
    landmarks_px: ``[..., 68, 2]`` float32 fitted 3D landmarks reprojected with the final pose
      (image (x, y) pixels), the jaw re-selected for that pose by the fit's contour rule.
    landmark_vertex_ids: ``[..., 68]`` int32 model vertex of each reprojected landmark.
  """
  scale: Array
  rotation: Array
  pitch_rad: Array
  yaw_rad: Array
  roll_rad: Array
  translation_px: Array
  shape_coefficients: Array
  expression_coefficients: Array
  landmarks_px: Array
  landmark_vertex_ids: Array


# ----------------------------------------------------------------------------------------------
# Batching helper
# ----------------------------------------------------------------------------------------------


def _vmap_leading(fn, core_ndims: Tuple[Optional[int], ...], args: Tuple[Array, ...],
                  batch_ndim: int):
  """Applies single-example ``fn(*args)`` over ``batch_ndim`` leading dims by nested vmap.

  ``core_ndims[i]`` is the unbatched rank of ``args[i]`` (None: not batched, e.g. the model).
  """
  for _ in range(batch_ndim):
    axes = tuple(None if n is None else 0 for n in core_ndims)
    fn = jax.vmap(fn, in_axes=axes)
  return fn(*args)


def _broadcast_batch(arrays, core_ndims):
  """Broadcasts the leading (batch) dims of ``arrays`` together; returns (arrays, batch_shape)."""
  shapes = [a.shape[:a.ndim - n] for a, n in zip(arrays, core_ndims)]
  batch = jnp.broadcast_shapes(*shapes)
  out = [jnp.broadcast_to(a, batch + a.shape[a.ndim - n:]) for a, n in zip(arrays, core_ndims)]
  return out, batch


# ----------------------------------------------------------------------------------------------
# Pose
# ----------------------------------------------------------------------------------------------


def _nearest_scaled_rotation_rows(m: Array) -> Tuple[Array, Array]:
  """Nearest pair of orthonormal rows to a 2x3 matrix (polar factor), differentiably.

  ``m = Q U`` with ``Q = sqrt(m m^T)`` (2x2 SPD) and ``U`` with orthonormal rows; for a 2x2 SPD
  ``S`` with ``d = sqrt(det S)``, ``sqrt(S) = (S + d I) / sqrt(tr S + 2 d)`` in closed form, so no
  SVD (whose gradient is unstable for close singular values) is needed.

  Returns:
    ``(rows [2, 3], mean_singular_value [])``.
  """
  s = m @ m.T
  det = jnp.maximum(s[0, 0] * s[1, 1] - s[0, 1] * s[1, 0], 1e-20)
  d = jnp.sqrt(det)
  tau = jnp.sqrt(s[0, 0] + s[1, 1] + 2.0 * d)
  a = s + d * jnp.eye(2, dtype=m.dtype)  # = tau * Q
  det_a = a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]
  inv_a = jnp.array([[a[1, 1], -a[0, 1]], [-a[1, 0], a[0, 0]]], dtype=m.dtype) / det_a
  rows = tau * jnp.matmul(inv_a, m, precision="highest")
  return rows, tau / 2.0


def _estimate_pose_single(points_3d: Array, points_px: Array, weights: Array):
  w = weights / jnp.maximum(jnp.sum(weights), 1e-12)
  mean_3d = jnp.sum(w[:, None] * points_3d, axis=0)
  mean_px = jnp.sum(w[:, None] * points_px, axis=0)
  centred_3d = points_3d - mean_3d
  centred_px = points_px - mean_px
  # Affine camera: centred_px ~= centred_3d @ A^T, A [2, 3], by weighted least squares.
  gram = einsum("n,ni,nj->ij", w, centred_3d, centred_3d)
  gram = gram + (1e-6 * jnp.trace(gram) / 3.0 + 1e-12) * jnp.eye(3, dtype=gram.dtype)
  cross = einsum("n,ni,nj->ij", w, centred_3d, centred_px)  # [3, 2]
  affine = jnp.linalg.solve(gram, cross).T  # [2, 3]
  # Undo the y flip: rows of s * R[:2].
  flip = jnp.array([1.0, -1.0], dtype=affine.dtype)
  rows, _ = _nearest_scaled_rotation_rows(affine * flip[:, None])
  rotation = jnp.concatenate([rows, jnp.cross(rows[0], rows[1])[None]], axis=0)
  # Optimal scale and translation given the rotation (closed form).
  projected = einsum("ij,nj->ni", rows, centred_3d) * flip  # [N, 2] at unit scale
  scale = (jnp.sum(w[:, None] * projected * centred_px)
           / jnp.maximum(jnp.sum(w[:, None] * projected**2), 1e-12))
  translation = mean_px - scale * einsum("ij,j->i", rows, mean_3d) * flip
  return scale, rotation, translation


def estimate_pose_weak_perspective(points_3d: Array, points_px: Array,
                                   weights: Optional[Array] = None) -> Tuple[Array, Array, Array]:
  """Weak-perspective pose from 2D-3D correspondences, in closed form.

  Method (eos ``estimate_orthographic_projection_linear``; Hartley & Zisserman, algorithm 7.2):
  centre both point sets (weighted), solve the affine camera ``x ~= A X`` (``A [2, 3]``) by
  weighted linear least squares, take the nearest matrix with orthonormal rows (polar factor,
  closed form for 2x3) as the first two rows of ``R`` (the third is their cross product, so
  ``det R = +1``), then the optimal scale and translation for that ``R``.

  Args:
    points_3d: ``[..., N, 3]`` float32 model-space points (mm), N >= 4, not coplanar.
    points_px: ``[..., N, 2]`` float32 image points (x, y) in pixels.
    weights: optional ``[..., N]`` float32 non-negative per-point weights (0 = unused).

  Returns:
    ``(scale [...], rotation [..., 3, 3], translation_px [..., 2])`` such that
    ``geometry.weak_perspective_project(points_3d, scale, rotation, translation_px)`` ~= points_px.
  """
  points_3d = jnp.asarray(points_3d, jnp.float32)
  points_px = jnp.asarray(points_px, jnp.float32)
  if weights is None:
    weights = jnp.ones(points_px.shape[:-1], jnp.float32)
  weights = jnp.asarray(weights, jnp.float32)
  args, batch = _broadcast_batch([points_3d, points_px, weights], (2, 2, 1))
  return _vmap_leading(_estimate_pose_single, (2, 2, 1), tuple(args), len(batch))


# ----------------------------------------------------------------------------------------------
# Shape
# ----------------------------------------------------------------------------------------------


def _prior_precision(model: FaceModel) -> Array:
  """``[Ki + Ke]`` prior precisions: 1 for identity, 1 / expression_std^2 for expression."""
  std = jnp.maximum(jnp.asarray(model.expression_std, jnp.float32), 1e-6)
  return jnp.concatenate([jnp.ones((model.num_identity,), jnp.float32), 1.0 / std**2])


def _landmark_basis(model: FaceModel, vertex_ids: Array) -> Tuple[Array, Array]:
  """``(mean [N, 3], basis [Ki + Ke, N, 3])`` of the model at ``vertex_ids [N]``."""
  mean = jnp.asarray(model.mean_vertices)[vertex_ids]
  basis = jnp.concatenate([jnp.asarray(model.identity_basis)[:, vertex_ids],
                           jnp.asarray(model.expression_basis)[:, vertex_ids]], axis=0)
  return mean, basis


def _points(model: FaceModel, coefficients: Array, vertex_ids: Array) -> Array:
  mean, basis = _landmark_basis(model, vertex_ids)
  return mean + einsum("k,knd->nd", coefficients, basis)


def _fit_shape_single(model, landmarks_px, scale, rotation, translation_px, vertex_ids, weights,
                      regularisation):
  mean, basis = _landmark_basis(model, vertex_ids)
  flip = jnp.array([1.0, -1.0], jnp.float32)
  projection = rotation[:2] * flip[:, None]  # [2, 3]: model mm -> image direction at unit scale
  target = (landmarks_px - translation_px) / scale - einsum("ij,nj->ni", projection, mean)
  jacobian = einsum("ij,knj->nik", projection, basis)  # [N, 2, K]
  normal = einsum("n,nik,nil->kl", weights, jacobian, jacobian)
  normal = normal + regularisation * jnp.diag(_prior_precision(model))
  rhs = einsum("n,nik,ni->k", weights, jacobian, target)
  factor = jax.scipy.linalg.cho_factor(normal)
  coefficients = jax.scipy.linalg.cho_solve(factor, rhs)
  return coefficients[:model.num_identity], coefficients[model.num_identity:]


def _fit_scale_translation_shape_single(model, landmarks_px, rotation, vertex_ids, weights,
                                        regularisation):
  """Scale, translation and coefficients jointly under a fixed rotation (one linear solve).

  With ``d = s * c`` the projection ``s P R (mean + A c) + t = s (P R mean) + P R A d + t`` is
  linear in ``(s, d, t)``; minimising ``sum_n w_n ||x_n - ...||^2 + lambda * ||d||_prior^2``
  (pixels^2) equals the millimetre objective of :func:`fit_shape_linear` for every fixed ``s``,
  so only the scale moves differently. Solving them together removes the slow zig-zag between
  the pose scale and the size-like identity modes in the alternation.

  Returns:
    ``(scale [], translation_px [2], coefficients [Ki + Ke])``.
  """
  mean, basis = _landmark_basis(model, vertex_ids)
  flip = jnp.array([1.0, -1.0], jnp.float32)
  projection = rotation[:2] * flip[:, None]  # [2, 3]
  mean_px = einsum("ij,nj->ni", projection, mean)  # [N, 2]
  jacobian = einsum("ij,knj->nik", projection, basis)  # [N, 2, K]
  eye = jnp.broadcast_to(jnp.eye(2, dtype=jnp.float32), mean_px.shape[:1] + (2, 2))
  design = jnp.concatenate([mean_px[..., None], jacobian, eye], axis=-1)  # [N, 2, K + 3]
  normal = einsum("n,nik,nil->kl", weights, design, design)
  precision = jnp.concatenate([jnp.zeros((1,), jnp.float32), _prior_precision(model),
                               jnp.zeros((2,), jnp.float32)])
  ridge = regularisation * precision + 1e-7 * jnp.diagonal(normal) + 1e-12
  normal = normal + jnp.diag(ridge)
  rhs = einsum("n,nik,ni->k", weights, design, landmarks_px)
  solution = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(normal), rhs)
  scale = solution[0]
  coefficients = solution[1:-2] / scale
  return scale, solution[-2:], coefficients


def fit_shape_linear(model: FaceModel, landmarks_px: Array, scale: Array, rotation: Array,
                     translation_px: Array, vertex_ids: Optional[Array] = None,
                     weights: Optional[Array] = None,
                     regularisation: Array | float = DEFAULT_REGULARISATION
                     ) -> Tuple[Array, Array]:
  """Identity + expression coefficients under a given pose: regularised linear least squares.

  Minimises (eos ``fit_shape_to_landmarks_linear``; paper step 4)::

    sum_n w_n || (x_n - t) / s - P R (mean_n + A_n alpha + B_n beta) ||^2
        + lambda * (||alpha||^2 + sum_j (beta_j / sigma_j)^2)

  with ``P R`` the first two rows of ``R`` with the image y flip, residuals in model millimetres
  (pixels / scale), by a Cholesky solve of the ``(Ki + Ke)``-square normal equations.

  Args:
    model: the face model (shared over the batch).
    landmarks_px: ``[..., N, 2]`` float32 image points (x, y) in pixels.
    scale: ``[...]`` pixels per mm.
    rotation: ``[..., 3, 3]`` model -> camera rotation.
    translation_px: ``[..., 2]`` image position of the model origin.
    vertex_ids: ``[N]`` or ``[..., N]`` int32 model vertex of each point (default: the model's
      frontal ``landmark_vertex_ids``, N = 68).
    weights: optional ``[..., N]`` non-negative weights (0 = unseen).
    regularisation: ``lambda`` >= 0 (scalar), in mm^2 (landmark noise variance); > 0 keeps
      the solve well posed when few landmarks are seen.

  Returns:
    ``(shape_coefficients [..., Ki], expression_coefficients [..., Ke])`` float32.
  """
  landmarks_px = jnp.asarray(landmarks_px, jnp.float32)
  if vertex_ids is None:
    vertex_ids = model.landmark_vertex_ids
  vertex_ids = jnp.asarray(vertex_ids, jnp.int32)
  if weights is None:
    weights = jnp.ones(landmarks_px.shape[:-1], jnp.float32)
  args, batch = _broadcast_batch(
      [landmarks_px, jnp.asarray(scale, jnp.float32), jnp.asarray(rotation, jnp.float32),
       jnp.asarray(translation_px, jnp.float32), vertex_ids, jnp.asarray(weights, jnp.float32)],
      (2, 0, 2, 1, 1, 1))
  regularisation = jnp.asarray(regularisation, jnp.float32)
  fn = lambda *a: _fit_shape_single(model, *a, regularisation)  # noqa: E731
  return _vmap_leading(fn, (2, 0, 2, 1, 1, 1), tuple(args), len(batch))


# ----------------------------------------------------------------------------------------------
# Contour correspondences
# ----------------------------------------------------------------------------------------------


def select_landmark_vertex_ids(model: FaceModel, contour: str, coefficients: Array, scale: Array,
                               rotation: Array, translation_px: Array,
                               landmarks_px: Array) -> Array:
  """The 68 landmark vertices for one face, with the jaw re-selected by ``contour``.

  * ``"fixed"``: the model's ``landmark_3d_vertex_ids`` (right for projected 3D landmark
    annotations such as AFLW2000-3D, whose jaw follows the 3D jaw line).
  * ``"silhouette"``: ``dff_jax.face_model.landmark_vertex_ids_for_pose`` for the current
    rotation and shape ("landmark marching": frontal positions on the side facing the camera, the
    outermost candidate, i.e. the outline, on the side turned away); independent of the observed
    landmarks, so synthetic landmarks made with the same rule are reproduced exactly.
  * ``"nearest"`` (eos ``find_occluding_edge_correspondences`` on the candidate rows): each jaw
    landmark takes, among its row of ``contour_candidates``, the vertex whose projection under the
    current pose and shape is nearest the observed 2D landmark. Chosen for both sides: on the
    side facing the camera the annotated jaw sits at the frontal vertex (column 0) or close to it,
    so the nearest candidate picks it there without a hard yaw threshold; on the side turned
    away it follows the visible outline.

  Args:
    model: face model; coefficients ``[Ki + Ke]``; scale ``[]``; rotation ``[3, 3]``;
    translation_px ``[2]``; landmarks_px ``[68, 2]`` observed image points (pixels).

  Returns:
    ``[68]`` int32 vertex ids.
  """
  if contour == "fixed":
    return jnp.asarray(model.landmark_3d_vertex_ids, jnp.int32)
  ids = jnp.asarray(model.landmark_vertex_ids, jnp.int32)
  candidates = jnp.asarray(model.contour_candidates, jnp.int32)  # [17, M]
  if contour == "silhouette":
    flat = candidates.reshape(-1)
    # The rule reads the current shape at the candidates only; other vertices stay zero.
    mesh = jnp.zeros(jnp.shape(model.mean_vertices), jnp.float32)
    mesh = mesh.at[flat].set(_points(model, coefficients, flat))
    return jnp.asarray(face_model_lib.landmark_vertex_ids_for_pose(model, rotation, mesh),
                       jnp.int32)
  if contour == "nearest":
    flat = candidates.reshape(-1)
    projected = geometry.weak_perspective_project(
        _points(model, coefficients, flat), scale, rotation, translation_px)
    projected = projected.reshape(candidates.shape + (2,))  # [17, M, 2]
    distance = jnp.sum((projected - landmarks_px[:NUM_JAW, None, :])**2, axis=-1)
    column = jnp.argmin(distance, axis=1)
    jaw = candidates[jnp.arange(NUM_JAW), column]
    return ids.at[:NUM_JAW].set(jaw)
  raise ValueError(f"contour must be one of {CONTOUR_MODES}, got {contour!r}")


# ----------------------------------------------------------------------------------------------
# Alternation
# ----------------------------------------------------------------------------------------------


def _fit_single(model, landmarks_px, weights, regularisation, num_iterations, contour):
  num_coefficients = model.num_identity + model.num_expression
  coefficients = jnp.zeros((num_coefficients,), jnp.float32)
  # The first pose reads the fixed ids of the convention ("fixed": the 3D one), else the frontal.
  start_ids = jnp.asarray(model.landmark_3d_vertex_ids if contour == "fixed"
                          else model.landmark_vertex_ids, jnp.int32)
  # Initial pose from the mean face; the jaw correspondences are unknown until a pose exists
  # (eos fits the first pose without the contour), so they get weight 0 unless fixed.
  jaw = jnp.arange(NUM_LANDMARKS) < NUM_JAW
  initial_weights = weights if contour == "fixed" else jnp.where(jaw, 0.0, weights)
  # Only jaw landmarks seen: start from their frontal vertices rather than from nothing.
  initial_weights = jnp.where(jnp.sum(initial_weights > 0) >= 6, initial_weights, weights)
  scale, rotation, translation = _estimate_pose_single(
      _points(model, coefficients, start_ids), landmarks_px, initial_weights)

  def one_pass(_, state):
    scale, rotation, translation, coefficients = state
    ids = select_landmark_vertex_ids(model, contour, coefficients, scale, rotation, translation,
                                     landmarks_px)
    scale, rotation, translation = _estimate_pose_single(
        _points(model, coefficients, ids), landmarks_px, weights)
    ids = select_landmark_vertex_ids(model, contour, coefficients, scale, rotation, translation,
                                     landmarks_px)
    scale, translation, coefficients = _fit_scale_translation_shape_single(
        model, landmarks_px, rotation, ids, weights, regularisation)
    return scale, rotation, translation, coefficients

  scale, rotation, translation, coefficients = jax.lax.fori_loop(
      0, num_iterations, one_pass, (scale, rotation, translation, coefficients))
  ids = select_landmark_vertex_ids(model, contour, coefficients, scale, rotation, translation,
                                   landmarks_px)
  fitted_px = geometry.weak_perspective_project(
      _points(model, coefficients, ids), scale, rotation, translation)
  pitch, yaw, roll = geometry.matrix_to_euler(rotation)
  return FitResult(scale=scale, rotation=rotation, pitch_rad=pitch, yaw_rad=yaw, roll_rad=roll,
                   translation_px=translation,
                   shape_coefficients=coefficients[:model.num_identity],
                   expression_coefficients=coefficients[model.num_identity:],
                   landmarks_px=fitted_px, landmark_vertex_ids=ids)


def fit_shape_and_pose(model: FaceModel, landmarks_px: Array, weights: Optional[Array] = None,
                       regularisation: Array | float = DEFAULT_REGULARISATION,
                       num_iterations: int = DEFAULT_NUM_ITERATIONS,
                       contour: str = DEFAULT_CONTOUR) -> FitResult:
  """Weak-perspective pose + identity + expression from 68 2D landmarks (eos fit_shape_and_pose).

  Starts from the mean face (coefficients 0) and a pose fitted to the non-jaw landmarks, then
  ``num_iterations`` times (``lax.fori_loop``): re-select the jaw correspondences (``contour``,
  see :func:`select_landmark_vertex_ids`), :func:`estimate_pose_weak_perspective`, re-select,
  then the regularised linear solve of :func:`fit_shape_linear` with scale and translation freed
  (rotation kept). Finally re-selects the jaw for the final pose and reprojects. Pure, jit-able (``num_iterations`` and ``contour`` static),
  vmappable, differentiable in ``landmarks_px``, ``weights`` and ``regularisation`` (the contour
  choice is piecewise constant). Does not validate: see :func:`fit_landmarks`.

  Args:
    model: the face model (a pytree; shared over the batch).
    landmarks_px: ``[..., 68, 2]`` float32 iBUG-68 image points (x, y) in pixels.
    weights: optional ``[..., 68]`` float32 non-negative weights / visibility (0 = unseen).
    regularisation: Tikhonov ``lambda`` in mm^2 (see :func:`fit_shape_linear`).
    num_iterations: number of pose/shape alternations (static).
    contour: ``"fixed"``, ``"silhouette"`` or ``"nearest"`` (static; see
      :func:`select_landmark_vertex_ids`).

  Returns:
    :class:`FitResult` with the batch dims of ``landmarks_px``.
  """
  if contour not in CONTOUR_MODES:
    raise ValueError(f"contour must be one of {CONTOUR_MODES}, got {contour!r}")
  landmarks_px = jnp.asarray(landmarks_px, jnp.float32)
  if weights is None:
    weights = jnp.ones(landmarks_px.shape[:-1], jnp.float32)
  weights = jnp.asarray(weights, jnp.float32)
  (landmarks_px, weights), batch = _broadcast_batch([landmarks_px, weights], (2, 1))
  regularisation = jnp.asarray(regularisation, jnp.float32)
  fn = functools.partial(_fit_single, model, regularisation=regularisation,
                         num_iterations=num_iterations, contour=contour)
  return _vmap_leading(fn, (2, 1), (landmarks_px, weights), len(batch))


_fit_shape_and_pose_jit = jax.jit(fit_shape_and_pose,
                                  static_argnames=("num_iterations", "contour"))


# ----------------------------------------------------------------------------------------------
# Checked entry point and metric
# ----------------------------------------------------------------------------------------------


def validate_landmarks(landmarks_px: Any, weights: Any = None) -> Tuple[np.ndarray, np.ndarray]:
  """Checks concrete fitting input outside jit; returns float32 NumPy copies.

  Args:
    landmarks_px: ``[..., 68, 2]`` image points (x, y) in pixels.
    weights: optional ``[..., 68]`` non-negative weights.

  Returns:
    ``(landmarks_px, weights)`` as float32 arrays (weights default to ones). Landmarks that are
    NaN where the weight is 0 are replaced by 0 (they do not enter the fit).

  Raises:
    ValueError: wrong shape, non-finite landmark with positive weight, negative or non-finite
      weight, or fewer than 6 landmarks with positive weight (the pose is then undetermined).
  """
  landmarks = np.array(landmarks_px, dtype=np.float32)
  if landmarks.ndim < 2 or landmarks.shape[-2:] != (NUM_LANDMARKS, 2):
    raise ValueError(f"landmarks_px must have shape [..., {NUM_LANDMARKS}, 2] (iBUG-68 points "
                     f"(x, y) in pixels), got shape {landmarks.shape}")
  if weights is None:
    w = np.ones(landmarks.shape[:-1], np.float32)
  else:
    w = np.array(weights, dtype=np.float32)
    try:
      w = np.broadcast_to(w, landmarks.shape[:-1]).copy()
    except ValueError:
      raise ValueError(f"weights must broadcast to {landmarks.shape[:-1]} (one per landmark), "
                       f"got shape {w.shape}") from None
  if not np.all(np.isfinite(w)) or np.any(w < 0):
    raise ValueError("weights must be finite and >= 0 (0 marks an unseen landmark)")
  bad = ~np.all(np.isfinite(landmarks), axis=-1)
  if np.any(bad & (w > 0)):
    which = np.argwhere(bad & (w > 0))[:5].tolist()
    raise ValueError(f"landmarks_px has NaN/inf coordinates at (batch..., landmark) {which}; give "
                     "those landmarks weight 0 or fix the input")
  landmarks = np.where(bad[..., None], 0.0, landmarks).astype(np.float32)
  if np.any(np.sum(w > 0, axis=-1) < 6):
    raise ValueError("need at least 6 landmarks with positive weight per face to fit a pose")
  return landmarks, w


def fit_landmarks(model: FaceModel, landmarks_px: Any, weights: Any = None,
                  regularisation: float = DEFAULT_REGULARISATION,
                  num_iterations: int = DEFAULT_NUM_ITERATIONS,
                  contour: str = DEFAULT_CONTOUR) -> FitResult:
  """Validated, jitted :func:`fit_shape_and_pose` for concrete (NumPy / JAX) input.

  Same arguments and result; raises ``ValueError`` with a readable message for bad input
  (see :func:`validate_landmarks`), an unknown ``contour`` or a negative ``regularisation``.
  """
  if contour not in CONTOUR_MODES:
    raise ValueError(f"contour must be one of {CONTOUR_MODES}, got {contour!r}")
  if not (isinstance(num_iterations, int) and num_iterations >= 1):
    raise ValueError(f"num_iterations must be an int >= 1, got {num_iterations!r}")
  if not (np.isfinite(regularisation) and regularisation >= 0):
    raise ValueError(f"regularisation must be finite and >= 0, got {regularisation!r}")
  landmarks, w = validate_landmarks(landmarks_px, weights)
  return _fit_shape_and_pose_jit(model, landmarks, w, float(regularisation),
                                 num_iterations=num_iterations, contour=contour)


__all__ = [
    "CONTOUR_MODES", "FitResult", "estimate_pose_weak_perspective", "fit_shape_linear",
    "select_landmark_vertex_ids", "fit_shape_and_pose", "fit_landmarks", "validate_landmarks",
]
