"""One face's alignment in image pixels, and the JSON document of an image's faces (NumPy only).

:class:`Face` is what :meth:`dff_jax.Aligner.align` returns per face and what
``experiments/align.py`` writes; :func:`image_document` is the layout of ``DIR/<stem>.json``:

.. code-block:: text

  {"image": "path/photo.jpg", "size_wh": [W, H],
   "faces": [{"landmarks_px", "landmarks_3d_px", "visibility", "pose", "shape_coefficients",
              "expression_coefficients", "box", "score", "crop_box", "agreement",
              "landmark_agreement"}, ...],
   ... (the command adds "features", "cascade", "face_model", "box_source")}

Frames (DESIGN.md section 3): points ``(x, y)`` in image pixels, x right, y down, pixel
``(i, j)`` centred at ``(j + 0.5, i + 0.5)``; pose ``R = Rz(roll) Ry(yaw) Rx(pitch)``, positive
yaw turns the nose to the image right; weak perspective ``(s Xc + tx, -s Yc + ty)`` with the
model in millimetres.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Pose:
  """A face's head pose and weak-perspective camera, image frame.

  Attributes:
    yaw_rad, pitch_rad, roll_rad: ``R = Rz(roll) Ry(yaw) Rx(pitch)`` (radians); positive yaw
      turns the nose to the image right.
    scale: image pixels per model millimetre.
    translation_px: ``[2]`` float32 image position of the model origin.
  """
  yaw_rad: float
  pitch_rad: float
  roll_rad: float
  scale: float
  translation_px: np.ndarray

  @property
  def yaw_deg(self) -> float:
    return math.degrees(self.yaw_rad)

  @property
  def pitch_deg(self) -> float:
    return math.degrees(self.pitch_rad)

  @property
  def roll_deg(self) -> float:
    return math.degrees(self.roll_rad)

  def as_dict(self) -> Dict[str, Any]:
    """Radians, as :func:`dff_jax.alignment.draw.render_overlay` takes them."""
    return dict(pitch_rad=self.pitch_rad, yaw_rad=self.yaw_rad, roll_rad=self.roll_rad,
                scale=self.scale, translation_px=self.translation_px)

  def to_json(self) -> Dict[str, Any]:
    """``{"yaw_deg", "pitch_deg", "roll_deg", "scale", "translation_px"}`` (degrees)."""
    return {"yaw_deg": float(self.yaw_deg), "pitch_deg": float(self.pitch_deg),
            "roll_deg": float(self.roll_deg), "scale": float(self.scale),
            "translation_px": np.asarray(self.translation_px, np.float64).tolist()}


@dataclasses.dataclass(frozen=True)
class Face:
  """One aligned face, image pixels (NumPy).

  Attributes:
    landmarks_px: ``[68, 2]`` float32 iBUG-68 points (x, y); the jaw (0-16) follows the visible
      outline of a turned face (300-W convention).
    landmarks_3d_px: ``[68, 2]`` float32 the fitted model's 68 fixed landmark vertices
      projected, hidden ones included (AFLW2000-3D convention: the 3D jaw line).
    visibility: ``[68]`` bool, the landmark's smoothed normal faces the camera.
    pose: :class:`Pose`.
    shape_coefficients: ``[Ki]`` float32 identity coefficients of the face model (units of
      its standard deviations).
    expression_coefficients: ``[Ke]`` float32.
    box: ``[4]`` float32 ``(x0, y0, x1, y1)`` the face box the cascade started from (the
      detector's box, corrected to the landmark-box convention, or the one given).
    score: the detector's score in (0, 1], or ``None`` when the box was given.
    crop_box: ``[4]`` float32 the square crop box the cascade worked in: around ``box``, or,
      for a refined detection (:data:`dff_jax.alignment.streaming.REFINE_DETECTED`), around the
      bounding box of the previous pass's ``landmarks_px``.
    agreement: how much the crop looks like a face where the cascade put its points: the mean
      cosine of the descriptors its last stage read with the cascade's per-landmark template
      (:func:`dff_jax.alignment.cascade.landmark_agreement`; faces score about 0.7-1, boxes on
      no face far lower); ``None`` for a cascade without a template.
    landmark_agreement: ``[68]`` float32 the same per landmark (0 where none was read), or
      ``None``.
  """
  landmarks_px: np.ndarray
  landmarks_3d_px: np.ndarray
  visibility: np.ndarray
  pose: Pose
  shape_coefficients: np.ndarray
  expression_coefficients: np.ndarray
  box: np.ndarray
  score: Optional[float] = None
  crop_box: Optional[np.ndarray] = None
  agreement: Optional[float] = None
  landmark_agreement: Optional[np.ndarray] = None

  def is_finite(self) -> bool:
    """Every landmark and pose value is finite (a diverged alignment is not)."""
    pose = self.pose
    return bool(np.all(np.isfinite(self.landmarks_px))
                and np.all(np.isfinite(self.landmarks_3d_px))
                and np.all(np.isfinite(pose.translation_px))
                and np.isfinite([pose.yaw_rad, pose.pitch_rad, pose.roll_rad, pose.scale]).all())

  def to_json(self) -> Dict[str, Any]:
    """JSON-ready dict: ``landmarks_px``, ``landmarks_3d_px`` (3 decimals), ``visibility``,
    ``pose`` (:meth:`Pose.to_json`, degrees), ``shape_coefficients``,
    ``expression_coefficients``, ``box``, ``score`` (``null`` for a given box), ``crop_box``,
    ``agreement`` (4 decimals) and ``landmark_agreement`` (3 decimals; both ``null`` without
    a descriptor template)."""
    return {
        "landmarks_px": np.round(np.asarray(self.landmarks_px, np.float64), 3).tolist(),
        "landmarks_3d_px": np.round(np.asarray(self.landmarks_3d_px, np.float64), 3).tolist(),
        "visibility": [bool(v) for v in np.asarray(self.visibility)],
        "pose": self.pose.to_json(),
        "shape_coefficients": np.asarray(self.shape_coefficients, np.float64).tolist(),
        "expression_coefficients": np.asarray(self.expression_coefficients, np.float64).tolist(),
        "box": np.asarray(self.box, np.float64).tolist(),
        "score": None if self.score is None else round(float(self.score), 4),
        "crop_box": (None if self.crop_box is None
                     else np.asarray(self.crop_box, np.float64).tolist()),
        "agreement": None if self.agreement is None else round(float(self.agreement), 4),
        "landmark_agreement": (
            None if self.landmark_agreement is None
            else np.round(np.asarray(self.landmark_agreement, np.float64), 3).tolist()),
    }


def image_document(image: str, size_wh: Sequence[int], faces: Sequence[Face],
                   **extra: Any) -> Dict[str, Any]:
  """``{"image", "size_wh": [W, H], "faces": [Face.to_json(), ...], **extra}``: the JSON
  document of one image (``DIR/<stem>.json`` of ``experiments.align``)."""
  return {"image": str(image), "size_wh": [int(size_wh[0]), int(size_wh[1])],
          "faces": [face.to_json() for face in faces], **extra}
