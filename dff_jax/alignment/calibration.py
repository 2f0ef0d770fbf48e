"""Output calibration: per-landmark model-space offsets that move an aligner's outputs onto an
annotation convention, estimated from its own errors on annotated training faces.

Annotators place some points differently from any fixed set of model vertices, and a training
mix of several annotation sources (faces68: 78 % Udacity YouTube Faces labels, the rest 300-W's
annotators) teaches a blend of their conventions. What is left is a mean error per landmark that
depends on the view only through the projection. :func:`estimate_output_offsets` finds, per
landmark ``l``, the 3D offset ``d_l`` (mm, model space) whose projections ``s_n P R_n d_l`` under
the aligner's own poses best explain its errors ``annotation - output`` over N training faces
(ridge least squares, made left-right symmetric); the cascade file carries them
(``output_offsets_mm``, :func:`dff_jax.alignment.cascade.output_offsets_of`) and
:func:`dff_jax.alignment.cascade.state_to_image` adds them, projected under each face's final
pose, to ``landmarks_px`` only: the cascade's own estimate (every stage, the shape fit,
``landmarks_3d_px``) is untouched. ``python -m experiments.calibrate_outputs`` runs the aligner
on a faces68 split's chosen sources and writes the calibrated cascade file.

Frames: image pixels ``(x, y)``, x right, y down; poses ``(scale px/mm, pitch, yaw, roll (rad),
tx, ty (px))`` of the same frame (weak perspective, :mod:`dff_jax.geometry`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from dff_jax.face_model import model as face_model_lib

# Landmarks 0-16 (the jaw) follow the silhouette in the outline convention: no fixed offset.
FIRST_CALIBRATED_LANDMARK = 17


def solve_point_offsets(projection: np.ndarray, residual: np.ndarray, ridge: float = 1e-3,
                        first_landmark: int = FIRST_CALIBRATED_LANDMARK) -> np.ndarray:
  """Per landmark, the ridge least-squares 3D offset whose projections explain the residuals.

  Args:
    projection: ``[N, 2, 3]`` each face's linear projection, model mm -> pixels
      (:func:`dff_jax.alignment.cascade.image_projection`).
    residual: ``[N, 68, 2]`` pixels to explain (target minus current points).
    ridge: Tikhonov weight, relative to the mean of ``P^T P``.
    first_landmark: landmarks before it get zero offsets.

  Returns:
    ``[68, 3]`` float64 offsets (mm), left-right symmetric
    (:data:`dff_jax.face_model.model.MIRROR_LANDMARKS`, x negated), as test-time mirroring needs.
  """
  projection = np.asarray(projection, np.float64)
  residual = np.asarray(residual, np.float64)
  normal = np.einsum("nij,nik->jk", projection, projection)
  normal = normal + ridge * np.trace(normal) / 3.0 * np.eye(3)
  offsets = np.linalg.solve(normal, np.einsum("nij,nli->jl", projection, residual)).T
  offsets[:first_landmark] = 0.0
  mirror = np.asarray(face_model_lib.MIRROR_LANDMARKS)
  return 0.5 * (offsets + offsets[mirror] * np.array([-1.0, 1.0, 1.0]))


def estimate_output_offsets(predicted_px: np.ndarray, annotated_px: np.ndarray, pose: np.ndarray,
                            ridge: float = 1e-3) -> np.ndarray:
  """The output calibration of an aligner from its results on annotated faces.

  Args:
    predicted_px: ``[N, 68, 2]`` the aligner's ``landmarks_px`` (image pixels).
    annotated_px: ``[N, 68, 2]`` the annotations, same frame.
    pose: ``[N, 6]`` the aligner's poses of the same faces, same frame.
    ridge: see :func:`solve_point_offsets`.

  Returns:
    ``[68, 3]`` float32 offsets (mm), zero for the jaw; add them to a cascade's existing
    ``output_offsets`` (the predictions already include those).

  Raises:
    ValueError: mismatched shapes, no face, or non-finite values.
  """
  from dff_jax.alignment import cascade  # pylint: disable=g-import-not-at-top
  predicted_px = np.asarray(predicted_px, np.float64)
  annotated_px = np.asarray(annotated_px, np.float64)
  pose = np.asarray(pose, np.float64)
  n = len(predicted_px)
  if (n == 0 or predicted_px.shape != (n, 68, 2) or annotated_px.shape != (n, 68, 2)
      or pose.shape != (n, 6)):
    raise ValueError(f"estimate_output_offsets: need [N, 68, 2] predictions and annotations and "
                     f"[N, 6] poses with N >= 1, got {predicted_px.shape}, {annotated_px.shape}, "
                     f"{pose.shape}")
  if not (np.isfinite(predicted_px).all() and np.isfinite(annotated_px).all()
          and np.isfinite(pose).all()):
    raise ValueError("estimate_output_offsets: non-finite predictions, annotations or poses")
  projection = np.asarray(cascade.image_projection(pose), np.float64)
  return solve_point_offsets(projection, annotated_px - predicted_px, ridge).astype(np.float32)


def calibrate_cascade(cascade_path: Optional[str], out_path: str | Path, data_dir: str,
                      split: str = "train", sources: Sequence[str] = ("helen-train", "afw"),
                      checkpoint: Optional[str] = None, batch_size: int = 64,
                      ridge: float = 1e-3) -> Dict[str, Any]:
  """Writes ``out_path``: the cascade file ``cascade_path`` (``None``: the default pair) with an
  output calibration estimated on the faces of ``sources`` in a faces68-layout split (landmark
  boxes, photos decoded as ``align`` decodes them), added to the one it already carries.

  The new file names the same encoder (its ``descriptor_source``: an absolute path to the
  bundle), so it loads from anywhere; everything else (regressors, settings, meta) is copied.
  ``checkpoint`` may name another encoder than the cascade's (refused where a cascade only
  aligns, :func:`dff_jax.alignment.runner.resolve_aligner`): the offsets are estimated on its outputs, and the new file names
  it.

  Returns:
    the report stored in the new file's meta as ``output_calibration``: ``sources``, ``split``,
    ``faces``, ``skipped``, ``nme_before`` / ``nme_after`` (inter-ocular, on those faces, the
    offsets applied to the same outputs: a training-set figure), ``mean_offset_mm``.

  Raises:
    FileNotFoundError / ValueError: missing data or cascade, no face of ``sources``.
  """
  from dff_jax import metrics  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import cascade as cascade_lib  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import runner  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import streaming  # pylint: disable=g-import-not-at-top
  from dff_jax.evaluation import alignment as evaluation  # pylint: disable=g-import-not-at-top
  spec = runner.resolve_aligner(cascade_path, None, checkpoint, None, other_encoder=True)
  aligner = runner.load_aligner(spec)
  eval_set = evaluation.faces68_set(data_dir, split, grey=aligner.channels == 1,
                                    sources=list(sources))
  predicted, annotated, poses, skipped = [], [], [], []
  for outcome in streaming.run_jobs(aligner, eval_set.jobs, batch_size, progress=False,
                                    total=len(eval_set.jobs), keep_loaded=False):
    if outcome.error is not None:
      skipped.append(outcome.error)
      continue
    face = outcome.face
    predicted.append(face.landmarks_px)
    annotated.append(outcome.loaded.truth["landmarks_px"])
    p = face.pose
    poses.append([p.scale, p.pitch_rad, p.yaw_rad, p.roll_rad, *p.translation_px])
  if not predicted:
    raise ValueError(f"calibrate: no face of {list(sources)} could be aligned ({skipped[:3]})")
  predicted, annotated = np.asarray(predicted, np.float64), np.asarray(annotated, np.float64)
  poses = np.asarray(poses, np.float64)
  step = estimate_output_offsets(predicted, annotated, poses, ridge)
  moved = predicted + np.asarray(cascade_lib.projected_offsets(poses, step), np.float64)

  def mean_nme(points):
    return float(np.mean([metrics.nme(a, b, "inter_ocular") for a, b in zip(points, annotated)]))
  total = step + np.asarray(aligner.alignment_model.output_offsets)  # zeros when uncalibrated
  report = dict(sources=sorted(set(sources)), split=split, data_dir=str(data_dir),
                faces=int(len(predicted)), skipped=len(skipped),
                nme_before=mean_nme(predicted), nme_after=mean_nme(moved),
                mean_offset_mm=float(np.linalg.norm(step, axis=1)[FIRST_CALIBRATED_LANDMARK:]
                                     .mean()),
                calibrated_from=str(spec.cascade_path))
  aligner.save_derived(out_path, output_offsets_mm=np.round(total.astype(np.float64), 4).tolist(),
                       output_calibration=report)
  return report
