"""Rotations, projections, similarity transforms and face crops.

Every function works on NumPy arrays (the data pipeline, which never imports JAX) and on JAX
arrays (jit, vmap and grad), batched over leading dimensions, so both sides share one convention.

Frames (see DESIGN.md section 3):

* **Model space**: millimetres, x to the subject's left (the viewer's right), y up, z towards the
  viewer.
* **Camera**: a rotation ``R`` takes model points to camera space with the same axes
  (``X_cam = R @ X``); the camera looks down ``-z``.
* **Image**: points are ``(x, y)`` in pixels, x right, y down; pixel ``(i, j)`` (row, column) has
  its centre at ``(j + 0.5, i + 0.5)``, so an ``H x W`` image covers ``[0, W] x [0, H]``.
* **Euler angles** (radians): ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)`` (pitch applied first).
  Positive yaw turns the nose towards the image's right (the subject turns to their left);
  positive pitch tips the nose down (the subject looks down); positive roll turns the
  subject's left side up, i.e. the face rotates counter-clockwise on screen.
"""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from dff_jax.array_api import einsum, namespace

Array = Any


# ----------------------------------------------------------------------------------------------
# Rotations
# ----------------------------------------------------------------------------------------------


def euler_to_matrix(pitch_rad: Array, yaw_rad: Array, roll_rad: Array) -> Array:
  """Rotation matrix ``Rz(roll) @ Ry(yaw) @ Rx(pitch)``.

  Args:
    pitch_rad, yaw_rad, roll_rad: ``[...]`` float angles in radians (broadcast together).

  Returns:
    ``[..., 3, 3]`` rotation taking model-space column vectors to camera space.
  """
  xp = namespace(pitch_rad, yaw_rad, roll_rad)
  pitch_rad, yaw_rad, roll_rad = xp.broadcast_arrays(
      xp.asarray(pitch_rad), xp.asarray(yaw_rad), xp.asarray(roll_rad))
  ca, sa = xp.cos(pitch_rad), xp.sin(pitch_rad)
  cb, sb = xp.cos(yaw_rad), xp.sin(yaw_rad)
  cc, sc = xp.cos(roll_rad), xp.sin(roll_rad)
  # Rz(c) @ Ry(b) @ Rx(a), written out.
  rows = [
      [cc * cb, cc * sb * sa - sc * ca, cc * sb * ca + sc * sa],
      [sc * cb, sc * sb * sa + cc * ca, sc * sb * ca - cc * sa],
      [-sb, cb * sa, cb * ca],
  ]
  return xp.stack([xp.stack(row, axis=-1) for row in rows], axis=-2)


def matrix_to_euler(rotation: Array) -> Tuple[Array, Array, Array]:
  """Inverse of :func:`euler_to_matrix`.

  Args:
    rotation: ``[..., 3, 3]`` rotation matrix.

  Returns:
    ``(pitch_rad, yaw_rad, roll_rad)``, each ``[...]``, with yaw in ``[-pi/2, pi/2]`` and pitch,
    roll in ``(-pi, pi]``. At ``|yaw| = pi/2`` (gimbal lock; numerically ``cos(yaw) < 1e-6``)
    only ``roll - pitch`` (or ``roll + pitch``) is determined; pitch is then reported as 0 and
    roll carries the whole in-plane angle, so the angles still reproduce the matrix.
  """
  xp = namespace(rotation)
  r = rotation
  cos_yaw = xp.sqrt(r[..., 2, 1] ** 2 + r[..., 2, 2] ** 2 + 1e-24)
  yaw = xp.arctan2(-r[..., 2, 0], cos_yaw)
  # Safe inputs in the locked region keep both where-branches finite (and their gradients).
  lock = cos_yaw < 1e-6
  pitch = xp.arctan2(xp.where(lock, 0.0, r[..., 2, 1]), xp.where(lock, 1.0, r[..., 2, 2]))
  roll_free = xp.arctan2(xp.where(lock, 0.0, r[..., 1, 0]), xp.where(lock, 1.0, r[..., 0, 0]))
  # With pitch = 0 and yaw = +-pi/2: R[0, 1] = -sin(roll), R[1, 1] = cos(roll).
  roll_locked = xp.arctan2(-r[..., 0, 1], r[..., 1, 1])
  roll = xp.where(lock, roll_locked, roll_free)
  return pitch, yaw, roll


# ----------------------------------------------------------------------------------------------
# Projections
# ----------------------------------------------------------------------------------------------


def rotate(points: Array, rotation: Array) -> Array:
  """``R @ X`` for a set of points.

  Args:
    points: ``[..., N, 3]`` model-space points (mm).
    rotation: ``[..., 3, 3]``.

  Returns:
    ``[..., N, 3]`` camera-space points (mm, same axes; larger z is nearer the camera).
  """
  return einsum("...ij,...nj->...ni", rotation, points)


def weak_perspective_project(points: Array, scale: Array, rotation: Array,
                             translation_px: Array) -> Array:
  """Scaled orthographic projection ``x_img = s * P R X + t`` with the y flip.

  ``P`` keeps camera x and y; because camera y is up and image y is down, the image point is
  ``(s * Xc + tx, -s * Yc + ty)``. This function is the one place where the y flip happens.

  Args:
    points: ``[..., N, 3]`` model-space points (mm).
    scale: ``[...]`` pixels per millimetre.
    rotation: ``[..., 3, 3]``.
    translation_px: ``[..., 2]`` image position (x, y) of the model origin, pixels.

  Returns:
    ``[..., N, 2]`` image points ``(x, y)`` in pixels (pixel-centre convention of the module).
  """
  xp = namespace(points, scale, rotation, translation_px)
  camera = rotate(points, rotation)
  flip = xp.asarray([1.0, -1.0], dtype=camera.dtype)
  scale = xp.asarray(scale)[..., None, None]
  return scale * camera[..., :2] * flip + xp.asarray(translation_px)[..., None, :]


def perspective_project(points: Array, rotation: Array, translation_mm: Array,
                        focal_px: Array, principal_point_px: Array) -> Tuple[Array, Array]:
  """Pinhole projection of model points.

  Camera space is ``Xc = R X + t``; the camera sits at the origin looking down ``-z``, so a point
  in front of it has depth ``d = -Zc > 0``. The image point is
  ``(f * Xc / d + cx, -f * Yc / d + cy)``.

  Args:
    points: ``[..., N, 3]`` model-space points (mm).
    rotation: ``[..., 3, 3]``.
    translation_mm: ``[..., 3]`` camera-space position of the model origin (z negative: in front).
    focal_px: ``[...]`` focal length in pixels.
    principal_point_px: ``[..., 2]`` image point of the optical axis, pixels.

  Returns:
    ``(points_px [..., N, 2], depth_mm [..., N])``. Points behind the camera get depth <= 0;
    their image position is meaningless and callers must mask them.
  """
  xp = namespace(points, rotation, translation_mm, focal_px, principal_point_px)
  camera = rotate(points, rotation) + xp.asarray(translation_mm)[..., None, :]
  depth = -camera[..., 2]
  safe_depth = xp.where(xp.abs(depth) < 1e-6, 1e-6, depth)
  focal = xp.asarray(focal_px)[..., None]
  x = focal * camera[..., 0] / safe_depth
  y = -focal * camera[..., 1] / safe_depth
  return xp.stack([x, y], axis=-1) + xp.asarray(principal_point_px)[..., None, :], depth


# ----------------------------------------------------------------------------------------------
# Similarity transforms
# ----------------------------------------------------------------------------------------------


def estimate_similarity(source: Array, target: Array,
                        weights: Array | None = None) -> Tuple[Array, Array, Array]:
  """Least-squares similarity ``target ~= s * R @ source + t`` (Umeyama 1991), no reflection.

  Args:
    source: ``[..., N, d]`` points (d = 2 or 3), any frame.
    target: ``[..., N, d]`` corresponding points.
    weights: optional ``[..., N]`` non-negative weights (e.g. visibility); at least ``d``
      points with positive weight in general position are needed.

  Returns:
    ``(scale [...], rotation [..., d, d], translation [..., d])``.
  """
  xp = namespace(source, target, weights)
  if weights is None:
    weights = xp.ones(source.shape[:-1], dtype=source.dtype)
  w = weights / xp.maximum(xp.sum(weights, axis=-1, keepdims=True), 1e-12)
  mean_s = xp.sum(w[..., None] * source, axis=-2)
  mean_t = xp.sum(w[..., None] * target, axis=-2)
  cs = source - mean_s[..., None, :]
  ct = target - mean_t[..., None, :]
  cov = einsum("...n,...ni,...nj->...ij", w, ct, cs)
  u, sigma, vt = xp.linalg.svd(cov)
  d = source.shape[-1]
  det_sign = xp.sign(xp.linalg.det(u) * xp.linalg.det(vt))
  det_sign = xp.where(det_sign == 0, 1.0, det_sign)
  correction = xp.concatenate(
      [xp.ones(sigma.shape[:-1] + (d - 1,), dtype=sigma.dtype), det_sign[..., None]], axis=-1)
  rotation = einsum("...ij,...j,...jk->...ik", u, correction, vt)
  var_s = xp.sum(w * xp.sum(cs**2, axis=-1), axis=-1)
  scale = xp.sum(sigma * correction, axis=-1) / xp.maximum(var_s, 1e-12)
  translation = mean_t - scale[..., None] * einsum("...ij,...j->...i", rotation, mean_s)
  return scale, rotation, translation


def apply_similarity(points: Array, scale: Array, rotation: Array, translation: Array) -> Array:
  """``s * R @ p + t`` for ``points [..., N, d]``; returns ``[..., N, d]``."""
  xp = namespace(points, scale, rotation, translation)
  return (xp.asarray(scale)[..., None, None] * einsum("...ij,...nj->...ni", rotation, points)
          + xp.asarray(translation)[..., None, :])


# ----------------------------------------------------------------------------------------------
# Face crops
# ----------------------------------------------------------------------------------------------


def landmark_box(points_px: Array) -> Array:
  """``[..., N, 2]`` points -> ``[..., 4]`` their bounding box ``(x0, y0, x1, y1)``, same frame
  and dtype: the face-box convention the alignment cascade is trained around (of a face's 68
  ``landmarks_px``)."""
  xp = namespace(points_px)
  return xp.concatenate([points_px.min(axis=-2), points_px.max(axis=-2)], axis=-1)


# A given face box must have at least this share of its area inside the image (a face cut by
# the image border keeps about half; a box mostly outside gives landmarks off the image).
MIN_BOX_INSIDE = 0.25


def fraction_inside(box_xyxy: Array, height: float, width: float) -> Array:
  """``[...]`` the share of each box's area ``[..., 4]`` ``(x0, y0, x1, y1)`` (image pixels, x1 >
  x0, y1 > y0) that lies inside the ``width x height`` image ``[0, W] x [0, H]``: 1 inside, 0
  outside."""
  xp = namespace(box_xyxy)
  x0, y0, x1, y1 = (box_xyxy[..., k] for k in range(4))
  inside_w = xp.clip(xp.minimum(x1, width) - xp.maximum(x0, 0.0), 0.0, None)
  inside_h = xp.clip(xp.minimum(y1, height) - xp.maximum(y0, 0.0), 0.0, None)
  return inside_w * inside_h / ((x1 - x0) * (y1 - y0))


def square_box(box_xyxy: Array, scale: float = 1.0) -> Array:
  """The square with the box's centre and side ``scale * max(w, h)``.

  Args:
    box_xyxy: ``[..., 4]`` ``(x0, y0, x1, y1)`` in image pixels (x1 > x0, y1 > y0).
    scale: side multiplier (e.g. 1.2 to add context around a tight detector box).

  Returns:
    ``[..., 4]`` square box ``(x0, y0, x1, y1)`` in the same frame.
  """
  xp = namespace(box_xyxy)
  centre = (box_xyxy[..., :2] + box_xyxy[..., 2:]) / 2
  side = scale * xp.max(box_xyxy[..., 2:] - box_xyxy[..., :2], axis=-1, keepdims=True)
  return xp.concatenate([centre - side / 2, centre + side / 2], axis=-1)


def image_to_crop(points_px: Array, box_xyxy: Array, crop_size: int) -> Array:
  """Maps image points into the ``crop_size x crop_size`` crop of a square box.

  The crop covers the box exactly: box corner ``(x0, y0)`` goes to ``(0, 0)`` and ``(x1, y1)`` to
  ``(crop_size, crop_size)``, so pixel centres map to pixel centres when the box is aligned.

  Args:
    points_px: ``[..., N, 2]`` image points (x, y).
    box_xyxy: ``[..., 4]`` square box in image pixels (see :func:`square_box`).
    crop_size: crop side in pixels.

  Returns:
    ``[..., N, 2]`` crop points (x, y), same pixel convention.
  """
  origin = box_xyxy[..., None, :2]
  pixels_per_px = crop_size / (box_xyxy[..., 2] - box_xyxy[..., 0])
  return (points_px - origin) * pixels_per_px[..., None, None]


def crop_to_image(points_crop_px: Array, box_xyxy: Array, crop_size: int) -> Array:
  """Exact inverse of :func:`image_to_crop`; same argument shapes."""
  origin = box_xyxy[..., None, :2]
  px_per_crop_pixel = (box_xyxy[..., 2] - box_xyxy[..., 0]) / crop_size
  return points_crop_px * px_per_crop_pixel[..., None, None] + origin


def crop_pixel_centres_in_image(box_xyxy: Array, crop_size: int) -> Array:
  """Image-frame positions of every crop pixel centre.

  Args:
    box_xyxy: ``[..., 4]`` square box.
    crop_size: crop side in pixels.

  Returns:
    ``[..., crop_size, crop_size, 2]`` image points (x, y); entry ``[i, j]`` is crop pixel
    (row i, column j), i.e. crop point ``(j + 0.5, i + 0.5)``.
  """
  xp = namespace(box_xyxy)
  centres = xp.arange(crop_size, dtype=np.float32) + 0.5
  grid_x, grid_y = xp.meshgrid(centres, centres, indexing="xy")
  grid = xp.stack([grid_x, grid_y], axis=-1).reshape(crop_size * crop_size, 2)
  grid = xp.broadcast_to(grid, box_xyxy.shape[:-1] + grid.shape)
  points = crop_to_image(grid, box_xyxy, crop_size)
  return points.reshape(box_xyxy.shape[:-1] + (crop_size, crop_size, 2))
