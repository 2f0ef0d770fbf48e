"""Face-model fits to annotated real photos: the cache ``data_pipeline.real_faces`` renders from.

The paper trained DFF on real photos fitted by its 3DMM and re-rendered from new viewpoints
(``../shared/paper.md``, "Training data"). :func:`fit_annotated_faces` fits the face model (pose,
identity, expression) to each face's 68 annotated points with the project's landmark fitting
(:func:`dff_jax.alignment.fitting.fit_landmarks`, ``contour="nearest"``: the annotated 300-W jaw
follows the visible outline), measures the reprojection error of every fit and marks the poor
ones; :func:`save_fits` writes everything into one ``.npz`` (deterministic: the fit is a pure
function of the annotations, the face model and the settings stored beside it).
:func:`estimate_landmark_offsets` measures where the annotators' points sit relative to the
model's landmark vertices (a cascade's landmark convention), and
:func:`fit_in_reference_convention` moves several annotation sources into one's convention.

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
from typing import Any, Dict, Sequence, Tuple

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


def estimate_landmark_offsets(model: face_model_lib.FaceModel, fits: Dict[str, np.ndarray],
                              shape_regularisation: float = 10.0, num_rounds: int = 10,
                              first_landmark: int = 17, ridge: float = 1e-3) -> np.ndarray:
  """Model-space offsets (mm) that move the face model's landmarks onto an annotation convention.

  The model's 68 landmark vertices are one convention; annotators of real photos (300-W) place
  some points elsewhere (an eyebrow end further out, the lower inner lip lower...), so a fit to
  annotated points keeps a per-point bias the shape modes cannot remove. With the fitted poses
  fixed, this alternates (``num_rounds`` times) a shape refit under the current offsets (the
  cascade's own fit, :func:`dff_jax.alignment.cascade.fit_shape_rows` with
  ``shape_regularisation``) and, per landmark ``l``, the ridge least-squares 3D offset ``d_l``
  whose projections ``s_n P R_n d_l`` best explain the residuals ``annotation - fit`` over all
  kept faces ``n``; each round's offsets are made left-right symmetric
  (:data:`dff_jax.face_model.model.MIRROR_LANDMARKS`, x negated), as test-time mirroring needs.
  Landmarks before ``first_landmark`` (the jaw, 0-16: the outline convention follows the
  silhouette, not fixed vertices) keep zero offsets.

  Args:
    model: the face model the fits use.
    fits: a fit cache's arrays (:func:`save_fits`; its shape coefficients are not read, the
      shape is refitted): ``pose [N, 6]`` (image pixels), ``landmark_vertex_ids [N, 68]``,
      ``landmarks_px [N, 68, 2]`` (the annotation, image pixels) and ``keep [N]`` bool.
    shape_regularisation: lambda of the shape refit (the cascade's, ``CascadeConfig``).
    num_rounds: alternations.
    first_landmark: first landmark that gets an offset.
    ridge: Tikhonov weight of each offset's solve, relative to the mean ``(s P R)^T (s P R)``.

  Returns:
    ``[68, 3]`` float32 offsets (mm, model space), zero for landmarks ``< first_landmark``.
  """
  import jax  # pylint: disable=g-import-not-at-top  (the fit cache itself is NumPy-only)
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dff_jax import geometry  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import cascade  # pylint: disable=g-import-not-at-top

  keep = np.asarray(fits["keep"], bool)
  if not keep.any():
    raise ValueError("estimate_landmark_offsets: the fit cache keeps no face")
  pose = np.asarray(fits["pose"], np.float32)[keep]
  vertex_ids = np.asarray(fits["landmark_vertex_ids"], np.int32)[keep]
  annotation = np.asarray(fits["landmarks_px"], np.float32)[keep]
  alignment_model = cascade.make_alignment_model(model)
  from dff_jax.alignment import calibration  # pylint: disable=g-import-not-at-top
  projection = np.asarray(cascade.image_projection(pose), np.float64)   # [N, 2, 3] mm -> px

  @jax.jit  # compiled once: the offsets are an argument, not a constant of each round's program
  def refit_and_project(am, offsets, pose, vertex_ids, annotation):
    am = am.replace(landmark_offsets=offsets)

    def one(p, ids, target):
      rot = cascade.pose_rotation(p)
      mean, basis = cascade.landmark_rows(am, ids)
      c = cascade.fit_shape_rows(am, mean, basis, target, p, rot, jnp.ones(68),
                                 shape_regularisation)
      points = mean + jnp.einsum("njk,k->nj", basis, c, precision="highest")
      return geometry.weak_perspective_project(points, p[0], rot, p[4:6])
    return jax.vmap(one)(pose, vertex_ids, annotation)

  offsets = np.zeros((face_model_lib.NUM_LANDMARKS, 3))
  for _ in range(num_rounds):  # Symmetric offsets plus a symmetric step stay symmetric.
    projected = refit_and_project(alignment_model, jnp.asarray(offsets, jnp.float32), pose,
                                  vertex_ids, annotation)
    residual = annotation - np.asarray(projected, np.float64)              # [N, 68, 2]
    offsets = offsets + calibration.solve_point_offsets(projection, residual, ridge,
                                                        first_landmark)
  return offsets.astype(np.float32)


def fit_in_reference_convention(model: face_model_lib.FaceModel, landmarks_px: np.ndarray,
                                sources: Sequence[str], reference_sources: Sequence[str],
                                max_residual: float = DEFAULT_MAX_RESIDUAL,
                                num_iterations: int = 20
                                ) -> Tuple[np.ndarray, Dict[str, np.ndarray], Dict[str, Any]]:
  """Fits faces annotated by several sources after moving every source into one's convention.

  Annotation sources place some points differently (faces68: the Udacity YouTube Faces labels
  put the brows, mouth and eyes elsewhere than 300-W's annotators, by millimetres on average):
  trained on all of them, an aligner learns a blend of conventions. This fits every face
  (:func:`fit_annotated_faces`), estimates each source's landmark offsets from its kept faces
  (:func:`estimate_landmark_offsets`), moves the annotations of every source outside
  ``reference_sources`` by the projected difference ``s P R (d_reference - d_source)`` under
  its fitted pose (:func:`dff_jax.alignment.cascade.projected_offsets`), and fits the moved
  annotations again.

  Args:
    model: the face model.
    landmarks_px: ``[N, 68, 2]`` float32 annotations, image pixels.
    sources: ``[N]`` each face's annotation source.
    reference_sources: the sources whose convention every face ends in (left unchanged).
    max_residual, num_iterations: as :func:`fit_annotated_faces` / :func:`save_fits`.

  Returns:
    ``(moved landmarks [N, 68, 2] float32, fits of the moved landmarks, report)``: the report
    gives per source the faces, the offsets' mean length (mm) and the mean displacement (px).

  Raises:
    ValueError: no kept face of a reference source.
  """
  from dff_jax.alignment import cascade  # pylint: disable=g-import-not-at-top
  landmarks_px = np.asarray(landmarks_px, np.float32)
  sources = np.asarray([str(s) for s in sources])
  reference = np.isin(sources, list(reference_sources))
  first = fit_annotated_faces(model, landmarks_px, num_iterations=num_iterations)
  kept = first["residual"] <= max_residual

  def offsets_of(mask):
    return estimate_landmark_offsets(model, dict(first, landmarks_px=landmarks_px,
                                                 keep=kept & mask))
  if not (kept & reference).any():
    raise ValueError(f"no kept face of the reference sources {list(reference_sources)}; sources "
                     f"present: {sorted(set(sources.tolist()))}")
  target = offsets_of(reference)
  moved = landmarks_px.copy()
  report: Dict[str, Any] = {"reference_sources": sorted(set(reference_sources)),
                            "sources": {}}
  for source in sorted(set(sources.tolist())):
    mask = sources == source
    entry = {"faces": int(mask.sum())}
    if not reference[mask][0] and (kept & mask).any():
      own = offsets_of(mask)
      shift = np.asarray(cascade.projected_offsets(first["pose"][mask], target - own))
      moved[mask] = landmarks_px[mask] + shift
      entry.update(offset_difference_mm=float(np.linalg.norm(target - own, axis=1)[17:].mean()),
                   mean_shift_px=float(np.linalg.norm(shift, axis=-1)[:, 17:].mean()))
    report["sources"][source] = entry
  fits = fit_annotated_faces(model, moved, num_iterations=num_iterations)
  return moved, fits, report
