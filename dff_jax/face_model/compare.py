"""Comparing face models by their landmark geometry (NumPy).

The figure judges where a model's landmark vertices sit on its mean face against a reference model
(e.g. the embedded ICT default against the Surrey Face Model): both means' fixed landmarks are
similarity-aligned (Umeyama, :func:`dff_jax.geometry.estimate_similarity`) and the mean residual is
divided by the reference's outer-eye-corner distance (iBUG 36, 45).
"""

from __future__ import annotations

import numpy as np

from dff_jax import geometry
from dff_jax.face_model.model import FaceModel

# The 50 iBUG-68 landmarks with a fixed vertex in the Surrey Face Model: everything except the
# jaw contour (0-7, 9-16) and the inner mouth corners (60, 64), which SFM does not define (our
# loader derives them, so they are excluded from the comparison).
FIXED_LANDMARKS = tuple(i for i in range(68) if i not in (*range(0, 8), *range(9, 17), 60, 64))


def landmark_residuals_mm(model: FaceModel, reference: FaceModel) -> np.ndarray:
  """Per-landmark distance after similarity alignment of ``model`` onto ``reference``.

  Args:
    model, reference: face models (NumPy arrays).

  Returns:
    ``[50]`` float64 distances in the reference's millimetres, in ``FIXED_LANDMARKS`` order.
  """
  ids = np.asarray(FIXED_LANDMARKS)
  source = np.asarray(model.mean_vertices, np.float64)[np.asarray(model.landmark_vertex_ids)[ids]]
  target = np.asarray(reference.mean_vertices, np.float64)[
      np.asarray(reference.landmark_vertex_ids)[ids]]
  scale, rotation, translation = geometry.estimate_similarity(source, target)
  aligned = geometry.apply_similarity(source, scale, rotation, translation)
  return np.linalg.norm(aligned - target, axis=-1)


def landmark_distance_ratio(model: FaceModel, reference: FaceModel) -> float:
  """Mean distance of the 50 fixed landmarks (``FIXED_LANDMARKS``) of ``model``'s mean face,
  similarity-aligned to ``reference``'s mean, divided by the reference's outer-eye-corner
  distance (landmarks 36, 45). 0 = identical landmark geometry; the default vs SFM is ~0.03."""
  reference_mean = np.asarray(reference.mean_vertices, np.float64)
  ids = np.asarray(reference.landmark_vertex_ids)
  inter_ocular = np.linalg.norm(reference_mean[ids[36]] - reference_mean[ids[45]])
  return float(np.mean(landmark_residuals_mm(model, reference)) / inter_ocular)
