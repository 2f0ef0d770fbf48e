"""Landmark and matching metrics: NME (per face and per face region), CED/AUC, failure rate, PCK,
NME by yaw bin.

The array functions are namespace-generic (NumPy in -> NumPy out, JAX in -> JAX out, jit-able);
this module does not import JAX. :func:`nme_by_yaw_bin` is a reporting helper (NumPy, Python
floats). Errors are fractions (0.05 = 5 %), not percentages; multiply by 100 to print.

Landmarks are the iBUG 68 points, 0-based, ``(x, y)`` image pixels (pixel ``(i, j)`` centred at
``(j + 0.5, i + 0.5)``). Normalisers (DESIGN.md section 3):

* ``"inter_ocular"``: distance between the outer eye corners, points 36 and 45, of the target
  (300W convention).
* ``"bbox"``: ``sqrt(w * h)`` of the target landmarks' bounding box, or of a given box
  (AFLW2000-3D convention).

Failures: a NaN or infinite error counts as an infinitely large error (a failure, outside every
CED threshold), never as a silent NaN in a mean-of-curve metric.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from dff_jax.array_api import namespace

Array = Any

NORMALISERS = ("inter_ocular", "bbox")
# iBUG 68, 0-based: outer corner of the subject's right eye (image left when frontal), then left.
OUTER_EYE_CORNERS = (36, 45)
YAW_BINS_DEG = (("0-30", 0.0, 30.0), ("30-60", 30.0, 60.0), ("60-90", 60.0, 90.0))
# iBUG 68, 0-based: the face regions of :func:`region_nme`.
REGIONS = (("jaw", 0, 17), ("brows", 17, 27), ("nose", 27, 36), ("eyes", 36, 48),
           ("mouth", 48, 68))


def normaliser_length(target: Array, normaliser: str, box: Array | None = None,
                      visible: Array | None = None) -> Array:
  """The length that divides landmark errors.

  Args:
    target: ``[..., N, 2]`` ground-truth landmarks (x, y) in pixels (N = 68 for
      ``"inter_ocular"``).
    normaliser: ``"inter_ocular"`` (distance of target points 36 and 45) or ``"bbox"``
      (``sqrt(w * h)`` of ``box`` if given, else of the target landmarks' bounding box).
    box: optional ``[..., 4]`` box ``(x0, y0, x1, y1)`` in pixels, only for ``"bbox"``.
    visible: optional ``[..., N]`` bool; with ``"bbox"`` and no ``box``, only visible target
      points define the landmark box (all points when ``None``).

  Returns:
    ``[...]`` lengths in pixels.
  """
  xp = namespace(target, box, visible)
  target = xp.asarray(target)
  if normaliser == "inter_ocular":
    if target.shape[-2] != 68:
      raise ValueError(f"normaliser 'inter_ocular' needs the 68 iBUG landmarks, got "
                       f"{target.shape[-2]} points; use normaliser='bbox' for other layouts.")
    delta = target[..., OUTER_EYE_CORNERS[0], :] - target[..., OUTER_EYE_CORNERS[1], :]
    return xp.sqrt(xp.sum(delta**2, axis=-1))
  if normaliser == "bbox":
    if box is not None:
      box = xp.asarray(box)
      if box.shape[-1] != 4:
        raise ValueError(f"box must have shape [..., 4] (x0, y0, x1, y1), got {box.shape}.")
      size = box[..., 2:] - box[..., :2]
    elif visible is None:
      size = xp.max(target, axis=-2) - xp.min(target, axis=-2)
    else:
      mask = xp.asarray(visible, dtype=bool)[..., None]
      upper = xp.max(xp.where(mask, target, -xp.inf), axis=-2)
      lower = xp.min(xp.where(mask, target, xp.inf), axis=-2)
      size = upper - lower
    return xp.sqrt(xp.maximum(size[..., 0] * size[..., 1], 0.0))
  raise ValueError(f"unknown NME normaliser {normaliser!r}; use one of {NORMALISERS}.")


def point_errors(pred: Array, target: Array) -> Array:
  """Euclidean distances ``[..., N]`` between ``pred`` and ``target`` ``[..., N, 2]`` (pixels)."""
  xp = namespace(pred, target)
  pred, target = xp.asarray(pred), xp.asarray(target)
  if pred.shape != target.shape or pred.shape[-1] != 2:
    raise ValueError(f"pred and target must both be [..., N, 2]; got {pred.shape} and "
                     f"{target.shape}.")
  return xp.sqrt(xp.sum((pred - target) ** 2, axis=-1))


def nme(pred: Array, target: Array, normaliser: str, visible: Array | None = None,
        box: Array | None = None) -> Array:
  """Normalised mean error per face.

  ``NME = mean_k ||pred_k - target_k|| / d`` over the (visible) points, ``d`` from
  :func:`normaliser_length`.

  Args:
    pred: ``[..., N, 2]`` predicted landmarks (x, y), pixels (N = 68 iBUG points).
    target: ``[..., N, 2]`` ground truth, same frame.
    normaliser: ``"inter_ocular"`` or ``"bbox"`` (see the module docstring); name it when
      reporting.
    visible: optional ``[..., N]`` bool; only visible points are averaged (and, for ``"bbox"``
      without ``box``, only they define the box). A face with no visible point gets NaN.
    box: optional ``[..., 4]`` box ``(x0, y0, x1, y1)`` for ``"bbox"``.

  Returns:
    ``[...]`` NME as a fraction (multiply by 100 for %).
  """
  xp = namespace(pred, target, visible, box)
  if box is not None and normaliser != "bbox":
    raise ValueError(f"box is only used with normaliser='bbox', got normaliser={normaliser!r}.")
  errors = point_errors(pred, target)
  length = normaliser_length(target, normaliser, box=box, visible=visible)
  if visible is None:
    mean_error = xp.mean(errors, axis=-1)
  else:
    weight = xp.asarray(visible).astype(errors.dtype)
    if weight.shape != errors.shape:
      raise ValueError(f"visible must have shape {errors.shape} (one flag per point), got "
                       f"{weight.shape}.")
    count = xp.sum(weight, axis=-1)
    total = xp.sum(xp.where(weight > 0, errors, 0.0), axis=-1)
    mean_error = xp.where(count > 0, total / xp.maximum(count, 1.0), xp.nan)
  return mean_error / length


def _as_failures_infinite(errors: Array):
  xp = namespace(errors)
  errors = xp.asarray(errors)
  return xp, xp.where(xp.isnan(errors), xp.inf, errors)


def ced_curve(errors: Array, thresholds: Array) -> Array:
  """Cumulative error distribution: fraction of errors ``<= t`` for each threshold ``t``.

  Args:
    errors: ``[M]`` per-face errors (e.g. :func:`nme` values); NaN counts as a failure.
    thresholds: ``[T]`` thresholds in the errors' unit.

  Returns:
    ``[T]`` fractions in ``[0, 1]`` (non-decreasing for increasing thresholds).
  """
  xp, errors = _as_failures_infinite(errors)
  thresholds = xp.asarray(thresholds)
  return xp.mean((errors[..., :, None] <= thresholds).astype(xp.float32), axis=-2)


def auc(errors: Array, threshold: float = 0.08) -> Array:
  """Area under the CED curve from 0 to ``threshold``, divided by ``threshold`` (in ``[0, 1]``).

  Computed exactly, not on a grid: a face with error ``e`` contributes
  ``max(threshold - e, 0)`` to the area, so ``AUC = mean(max(1 - e / threshold, 0))``. (A fine
  trapezoid grid, as in the usual 300W scripts, converges to the same value.)

  Args:
    errors: ``[M]`` per-face errors; NaN counts as a failure (contributes 0).
    threshold: upper limit of the integral, in the errors' unit (0.08 for NME fractions).

  Returns:
    scalar AUC in ``[0, 1]``.
  """
  if not threshold > 0:
    raise ValueError(f"threshold must be positive, got {threshold!r}.")
  xp, errors = _as_failures_infinite(errors)
  return xp.mean(xp.maximum(1.0 - errors / threshold, 0.0), axis=-1)


def failure_rate(errors: Array, threshold: float = 0.08) -> Array:
  """Fraction of faces with error ``> threshold`` (NaN counts as a failure).

  Args:
    errors: ``[M]`` per-face errors.
    threshold: failure threshold in the errors' unit.

  Returns:
    scalar fraction in ``[0, 1]``.
  """
  xp, errors = _as_failures_infinite(errors)
  return xp.mean((errors > threshold).astype(xp.float32), axis=-1)


def pck(errors_px: Array, thresholds_px: Array, valid: Array | None = None) -> Array:
  """Percentage of correct keypoints / matching accuracy: fraction of errors ``<= t``.

  Used for descriptor matching: ``errors_px`` is the distance between each matched point and its
  ground-truth position.

  Args:
    errors_px: ``[..., K]`` errors in pixels (NaN counts as incorrect).
    thresholds_px: ``[T]`` thresholds in pixels.
    valid: optional ``[..., K]`` bool; only valid entries are counted (over all leading dims).

  Returns:
    ``[T]`` fractions in ``[0, 1]`` (NaN when nothing is valid).
  """
  xp, errors = _as_failures_infinite(errors_px)
  thresholds = xp.asarray(thresholds_px)
  correct = (errors.reshape(-1)[:, None] <= thresholds).astype(xp.float32)  # [M, T]
  if valid is None:
    return xp.mean(correct, axis=0)
  weight = xp.asarray(valid).reshape(-1).astype(xp.float32)
  if weight.shape[0] != correct.shape[0]:
    raise ValueError(f"valid must have the shape of errors_px {errors.shape}, got "
                     f"{xp.asarray(valid).shape}.")
  count = xp.sum(weight)
  return xp.sum(correct * weight[:, None], axis=0) / xp.where(count > 0, count, xp.nan)


def region_nme(pred: Array, target: Array, normaliser: str) -> Dict[str, Array]:
  """NME per face region (:data:`REGIONS`: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth
  48-67): the mean error of the region's points over the normaliser of the whole face
  (:func:`normaliser_length` of all 68 target points), so the regions' values weighted by their
  point counts average to :func:`nme`.

  Args:
    pred, target: ``[..., 68, 2]`` landmarks, same frame.
    normaliser: ``"inter_ocular"`` or ``"bbox"``.

  Returns:
    ``{region: [...] NME}``.
  """
  xp = namespace(pred, target)
  errors = point_errors(pred, target)
  if errors.shape[-1] != REGIONS[-1][2]:
    raise ValueError(f"region_nme needs the 68 iBUG points, got {errors.shape[-1]}.")
  length = normaliser_length(target, normaliser)
  return {name: xp.mean(errors[..., start:stop], axis=-1) / length
          for name, start, stop in REGIONS}


def in_yaw_bin(yaw_deg: Array, low: float, high: float) -> np.ndarray:
  """``[M]`` bool: ``low <= |yaw| < high`` (``<= 90`` for the last bin, :data:`YAW_BINS_DEG`);
  NaN yaws are in no bin."""
  yaw = np.abs(np.asarray(yaw_deg, dtype=np.float64).reshape(-1))
  return (yaw >= low) & ((yaw < high) if high < 90.0 else (yaw <= high))


def nme_by_yaw_bin(errors: Array, yaw_deg: Array) -> Dict[str, float]:
  """Mean error in the AFLW2000-3D yaw bins, and the mean of the bin means.

  Bins on ``|yaw|`` in degrees: ``[0, 30)``, ``[30, 60)``, ``[60, 90]`` (90 included). Faces with
  ``|yaw| > 90`` (AFLW2000-3D has some up to about 100) or a NaN yaw are in no bin; a NaN error
  counts in its bin's mean (a failure should be visible, not dropped).

  Args:
    errors: ``[M]`` per-face errors (e.g. ``nme(..., "bbox")``).
    yaw_deg: ``[M]`` yaw angles in degrees (sign ignored).

  Returns:
    ``{"0-30": m0, "30-60": m1, "60-90": m2, "mean": (m0 + m1 + m2) / 3}`` as Python floats;
    an empty bin gives NaN (and so does the mean).
  """
  errors = np.asarray(errors, dtype=np.float64).reshape(-1)
  yaw = np.abs(np.asarray(yaw_deg, dtype=np.float64).reshape(-1))
  if errors.shape != yaw.shape:
    raise ValueError(f"errors and yaw_deg need one value per face; got {errors.shape[0]} errors "
                     f"and {yaw.shape[0]} yaws.")
  result = {}
  for name, low, high in YAW_BINS_DEG:
    in_bin = in_yaw_bin(yaw, low, high)
    result[name] = float(np.mean(errors[in_bin])) if np.any(in_bin) else float("nan")
  result["mean"] = float(np.mean([result[name] for name, _, _ in YAW_BINS_DEG]))
  return result
