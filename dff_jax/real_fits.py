"""Face-model fits to annotated real photos: the cache ``data_pipeline.real_faces`` renders from.

The paper trained DFF on real photos fitted by its 3DMM and re-rendered from new viewpoints
(``../shared/paper.md``, "Training data"). :func:`fit_annotated_faces` fits the face model (pose,
identity, expression) to each face's 68 annotated points with the project's landmark fitting
(:func:`dff_jax.alignment.fitting.fit_landmarks`, ``contour="nearest"``: the annotated 300-W jaw
follows the visible outline), measures the reprojection error of every fit and marks the poor
ones; :func:`save_fits` writes everything into one ``.npz`` (deterministic: the fit is a pure
function of the annotations, the face model and the settings stored beside it).

Frames: image points ``(x, y)`` in pixels of each photo, pixel ``(i, j)`` centred at
``(j + 0.5, i + 0.5)``; pose as in :mod:`dff_jax.geometry` (``R = Rz(roll) Ry(yaw) Rx(pitch)``,
weak perspective ``(s Xc + tx, -s Yc + ty)``), scale in pixels per model mm.

Note: the fits, and everything rendered from them, derive from research-use photos: keep the
cache in a work directory outside the repository.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Sequence

import numpy as np

from dff_jax import file_io
from dff_jax import metrics
from dff_jax.alignment import fitting
from dff_jax.face_model import model as face_model_lib

FIT_VERSION = 1
DEFAULT_MAX_RESIDUAL = 0.08  # inter-ocular NME of the reprojected fit above which a face is dropped


def fit_annotated_faces(model: face_model_lib.FaceModel, landmarks_px: np.ndarray,
                        regularisation: float = fitting.DEFAULT_REGULARISATION,
                        num_iterations: int = 20, chunk: int = 128) -> Dict[str, np.ndarray]:
  """Fits ``model`` to ``landmarks_px [N, 68, 2]`` (all points weight 1, jaw ``"nearest"``).

  Chunks are padded to one size so the fit compiles once.

  Returns:
    ``pose [N, 6]`` float32 ``(scale px/mm, pitch, yaw, roll (rad), tx, ty (px))``,
    ``shape_coefficients [N, Ki]``, ``expression_coefficients [N, Ke]`` float32,
    ``landmark_vertex_ids [N, 68]`` int32 (the jaw's chosen contour vertices),
    ``fitted_px [N, 68, 2]`` float32 (the fit reprojected) and ``residual [N]`` float32
    (inter-ocular NME of the reprojection against the annotation).
  """
  landmarks_px = np.asarray(landmarks_px, np.float32)
  count = len(landmarks_px)
  size = min(chunk, max(count, 1))
  parts = []
  for start in range(0, count, size):
    part = landmarks_px[start:start + size]
    real = len(part)
    if real < size:
      part = np.concatenate([part, np.repeat(part[-1:], size - real, 0)])
    result = fitting.fit_landmarks(model, part, regularisation=regularisation,
                                   num_iterations=num_iterations, contour="nearest")
    parts.append({k: np.asarray(v)[:real] for k, v in result._asdict().items()})
  merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  pose = np.stack([merged["scale"], merged["pitch_rad"], merged["yaw_rad"], merged["roll_rad"],
                   merged["translation_px"][:, 0], merged["translation_px"][:, 1]], axis=1)
  residual = np.asarray(metrics.nme(merged["landmarks_px"], landmarks_px, "inter_ocular"))
  return dict(pose=pose.astype(np.float32),
              shape_coefficients=merged["shape_coefficients"].astype(np.float32),
              expression_coefficients=merged["expression_coefficients"].astype(np.float32),
              landmark_vertex_ids=merged["landmark_vertex_ids"].astype(np.int32),
              fitted_px=merged["landmarks_px"].astype(np.float32),
              residual=residual.astype(np.float32))


def save_fits(path: str | Path, names: Sequence[str], image_paths: Sequence[str | Path],
              landmarks_px: np.ndarray, fits: Dict[str, np.ndarray], face_model: str,
              max_residual: float = DEFAULT_MAX_RESIDUAL,
              settings: Dict[str, Any] | None = None) -> Dict[str, Any]:
  """Writes the fit cache ``path`` (``.npz``, atomically) and returns its summary.

  Arrays: ``names [N]``, ``image_paths [N]`` (str), ``landmarks_px [N, 68, 2]`` (annotation),
  every field of :func:`fit_annotated_faces`, ``keep [N]`` bool (``residual <= max_residual``);
  ``meta`` is a JSON string (version, face model, settings, counts, sha256 of the annotations).
  """
  landmarks_px = np.asarray(landmarks_px, np.float32)
  keep = fits["residual"] <= max_residual
  summary = dict(
      version=FIT_VERSION, face_model=face_model, num_faces=int(len(names)),
      num_kept=int(keep.sum()), num_dropped=int((~keep).sum()), max_residual=max_residual,
      residual_median=float(np.median(fits["residual"])),
      residual_p90=float(np.percentile(fits["residual"], 90)),
      annotations_sha256=hashlib.sha256(landmarks_px.tobytes()).hexdigest(),
      settings=dict(settings or {}))
  arrays = dict(fits, names=np.asarray(list(names)),
                image_paths=np.asarray([str(p) for p in image_paths]),
                landmarks_px=landmarks_px, keep=keep, meta=np.asarray(json.dumps(summary)))
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  import io  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  file_io.write_bytes_atomic(path, buffer.getvalue())
  return summary
