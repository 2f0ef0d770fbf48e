r"""Alignment evaluation: the evaluation sets (synthetic faces, 300W-style folders, AFLW2000-3D,
faces68), their landmark conventions, and the figures of a method on a set (NME by yaw bin,
failure rates, AUC, CED plot, per-image errors).

:func:`evaluate` is ``python -m experiments.eval_alignment`` as a function (the protocols are
described in that command's docstring). Importing this module does not import JAX (the sets and
:func:`evaluate` import :mod:`dff_jax.alignment` when called).

Length: a little over 500 lines: the evaluation sets and the one scoring pass over them
(errors, bins, regions, systematic error, curves) read together.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from dff_jax import file_io
from dff_jax import geometry
from dff_jax import image_io
from dff_jax import metrics
from dff_jax.file_io import json_safe

if TYPE_CHECKING:
  from dff_jax.alignment.results import Face
  from dff_jax.alignment.streaming import Job
  from dff_jax.face_model.model import FaceModel

DATASETS = ("synthetic", "300w", "aflw2000", "faces68")
DEFAULT_SYNTHETIC_FACES = 200
SYNTHETIC_SEED = 40_000

NORMALISER_DESCRIPTIONS = {
    "inter_ocular": "inter_ocular: distance of the outer eye corners (points 36, 45) of the "
                    "ground truth",
    "bbox": "bbox: sqrt(w*h) of the ground-truth landmark bounding box",
}


@dataclasses.dataclass
class EvalSet:
  """A data set to evaluate on.

  Attributes:
    name: ``synthetic``, ``300w`` or ``aflw2000``.
    jobs: the faces (each loader returns the image, the face box given to the aligner, and
      ``truth`` with ``landmarks_px [68, 2]`` and ``yaw_deg`` (``None`` when unknown)).
    normaliser: ``"inter_ocular"`` or ``"bbox"`` (:mod:`dff_jax.metrics`).
    yaw_source: how the yaw of the bins is known.
    box_protocol: how the face box is obtained.
    pipeline: the synthetic pipeline settings (``None`` for photographs).
    landmark_convention: which prediction the set's annotation is scored against:
      ``"outline"`` (``landmarks_px``: the jaw on the visible outline, 300-W) or ``"3d"``
      (``landmarks_3d_px``: the projected 3D jaw line, AFLW2000-3D).
  """
  name: str
  jobs: List[Job]
  normaliser: str
  yaw_source: str
  box_protocol: str
  pipeline: Optional[Dict[str, Any]] = None
  landmark_convention: str = "outline"


LANDMARK_CONVENTIONS = {
    "outline": ("landmarks_px", "the jaw (0-16) on the visible outline of the face (300-W)"),
    "3d": ("landmarks_3d_px", "the 68 fixed 3D landmarks projected, the jaw on the 3D jaw line "
                              "(AFLW2000-3D)"),
}


def predicted_landmarks(face: Face, convention: str) -> np.ndarray:
  """``[68, 2]`` the prediction scored against an annotation of ``convention``."""
  return getattr(face, LANDMARK_CONVENTIONS[convention][0])


def landmark_box(landmarks_px: np.ndarray) -> np.ndarray:
  """``[68, 2]`` -> ``[4]`` float32 bounding box of the points (x0, y0, x1, y1):
  :func:`dff_jax.geometry.landmark_box` of an annotation."""
  return geometry.landmark_box(np.asarray(landmarks_px, np.float32))


def synthetic_set(num_faces: int, seed: int = 40_000, image_size: Optional[int] = 128,
                  face_model: str = "default", data: Optional[Dict[str, Any]] = None,
                  box_jitter: Optional[Dict[str, Any]] = None) -> EvalSet:
  """Held-out synthetic faces: :class:`data_pipeline.faces.FaceSource` with pipeline seed
  ``seed`` (training uses 20 000 / 30 000), detector-like jittered boxes, full yaw range; yaw
  from the rendering pose.

  Args:
    num_faces, seed: the faces.
    image_size: render size (``None``: ``data``'s).
    face_model: the face model the faces are rendered with (may differ from the aligner's).
    data: pipeline settings (e.g. the cascade's training ``data`` from its file's meta: image
      size, face size range); the defaults of :mod:`data_pipeline.config` otherwise.
    box_jitter: :class:`data_pipeline.faces.BoxJitter` fields (default: its defaults).
  """
  from dff_jax.alignment.streaming import Job, Loaded  # pylint: disable=g-import-not-at-top
  from data_pipeline import faces as faces_lib  # pylint: disable=g-import-not-at-top
  from data_pipeline.config import pipeline_config_from_dict  # pylint: disable=g-import-not-at-top
  settings = {"num_views": 2, "num_correspondences": 16, **dict(data or {})}
  if image_size is not None:
    settings["image_size"] = int(image_size)
  settings["face_model"] = face_model
  config = pipeline_config_from_dict(settings, seed=int(seed))
  source = faces_lib.FaceSource(config, faces_lib.BoxJitter(**dict(box_jitter or {})),
                                num_examples=int(num_faces))
  lock = threading.Lock()  # FaceSource caches its last pair: one render at a time (threads)

  def job(i):
    def load():
      with lock:
        example = source[i]
      return Loaded(image=example["image"], box=example["box"],
                    truth=dict(landmarks_px=example["landmarks_px"],
                               yaw_deg=float(np.degrees(example["pose"][2])),
                               model_pose=example["pose"],
                               shape_coefficients=example["shape_coefficients"],
                               expression_coefficients=example["expression_coefficients"]))
    return Job(name=f"synthetic_{seed}_{i:06d}", load=load)

  return EvalSet(name="synthetic", jobs=[job(i) for i in range(int(num_faces))],
                 normaliser="bbox", yaw_source="rendering pose",
                 box_protocol="jittered detector-like box around the ground-truth landmarks "
                              f"(data_pipeline.faces.BoxJitter {dict(box_jitter or {})})",
                 pipeline=dict(dataclasses.asdict(config)))


def cascade_synthetic_set(meta: Dict[str, Any], crop_size: int, face_model: str,
                          num_faces: int, seed: int, image_size: Optional[int] = None) -> EvalSet:
  """:func:`synthetic_set` for a cascade: rendered with its training ``data`` settings and box
  jitter (``meta``, its file's meta) and ``face_model``, at ``image_size``, else the data's
  image size, else (a cascade without ``data``) its ``crop_size``."""
  if not image_size and "data" not in meta:
    image_size = int(crop_size)
  return synthetic_set(num_faces, seed, image_size, face_model, data=meta.get("data"),
                       box_jitter=meta.get("box_jitter"))


def aflw2000_set(data_dir: str | os.PathLike, num_faces: Optional[int] = None,
                 grey: bool = False) -> EvalSet:
  """AFLW2000-3D (``imageNNNNN.jpg`` + ``.mat``): 68 projected 3D landmarks, yaw from
  ``Pose_Para`` in our convention (:func:`data_pipeline.readers.read_aflw2000`); the face box is
  the ground-truth landmark bounding box (the usual protocol). ``grey``: photos decoded to
  BT.601 luma (``read_image(path, grey=True)``), as ``align`` decodes them for a grey
  descriptor."""
  from dff_jax.alignment.streaming import Job, Loaded  # pylint: disable=g-import-not-at-top
  from data_pipeline import readers  # pylint: disable=g-import-not-at-top
  pairs = readers.list_aflw2000(data_dir)
  if num_faces:
    pairs = pairs[:int(num_faces)]

  def job(image_path, mat_path):
    def load():
      annotation = readers.read_aflw2000(mat_path)
      return Loaded(image=image_io.read_image(image_path, grey=grey),
                    box=landmark_box(annotation.landmarks_px),
                    truth=dict(landmarks_px=annotation.landmarks_px,
                               yaw_deg=float(annotation.yaw_deg)))
    return Job(name=str(image_path), load=load)

  return EvalSet(name="aflw2000", jobs=[job(*p) for p in pairs], normaliser="bbox",
                 yaw_source="AFLW2000-3D Pose_Para (our Euler convention)",
                 box_protocol="ground-truth landmark bounding box", landmark_convention="3d")


def faces68_set(data_dir: str | os.PathLike, split: str = "val",
                json_path: Optional[str | os.PathLike] = None,
                num_faces: Optional[int] = None, grey: bool = False,
                sources: Optional[Sequence[str]] = None) -> EvalSet:
  """A faces68-layout folder (``images/<name>.jpg`` + ``<split>.json`` or ``json_path``):
  300-W-convention landmarks (the jaw on the visible outline), NME by the outer-eye-corner
  distance, the ground-truth landmark box as the face box; the yaw of the bins is estimated by
  fitting the 3DMM to the annotation (as for ``300w``). ``grey``: as for
  :func:`aflw2000_set`. ``sources``: only the faces of these ``source`` fields.

  Raises:
    ValueError: ``sources`` selects no face (the message lists the sources present).
  """
  from dff_jax.alignment.streaming import Job, Loaded  # pylint: disable=g-import-not-at-top
  from data_pipeline import readers  # pylint: disable=g-import-not-at-top
  entries = readers.read_faces68(data_dir, split, json_path)
  if sources:
    present = sorted({e.source for e in entries})
    entries = [e for e in entries if e.source in set(sources)]
    if not entries:
      raise ValueError(f"no face of the sources {list(sources)} in the {split} split of "
                       f"{data_dir}; its sources are {present}")
  if num_faces:
    entries = entries[:int(num_faces)]

  def job(entry):
    def load():
      return Loaded(image=image_io.read_image(entry.image_path, grey=grey),
                    box=landmark_box(entry.landmarks_px),
                    truth=dict(landmarks_px=entry.landmarks_px, yaw_deg=None))
    return Job(name=str(entry.image_path), load=load)

  return EvalSet(name="faces68", jobs=[job(e) for e in entries], normaliser="inter_ocular",
                 yaw_source="estimated: 3DMM fitted to the ground-truth landmarks "
                            "(dff_jax.alignment.fit_landmarks, contour='nearest')",
                 box_protocol="ground-truth landmark bounding box")


def folder_300w_set(data_dir: str | os.PathLike, num_faces: Optional[int] = None,
                    grey: bool = False) -> EvalSet:
  """A 300W-style folder (images + same-stem 1-based ``.pts``, searched recursively); NME by the
  outer-eye-corner distance; the face box is the ground-truth landmark bounding box. 300W has no
  pose: the yaw of the bins is estimated by fitting the 3DMM to the ground truth
  (:func:`estimate_yaw_deg`). ``grey``: as for :func:`aflw2000_set`."""
  from dff_jax.alignment.streaming import Job, Loaded  # pylint: disable=g-import-not-at-top
  from data_pipeline import readers  # pylint: disable=g-import-not-at-top
  pairs = readers.list_300w(data_dir)
  if num_faces:
    pairs = pairs[:int(num_faces)]

  def job(image_path, pts_path):
    def load():
      landmarks = readers.read_pts(pts_path)
      return Loaded(image=image_io.read_image(image_path, grey=grey), box=landmark_box(landmarks),
                    truth=dict(landmarks_px=landmarks, yaw_deg=None, pts_path=str(pts_path)))
    return Job(name=str(image_path), load=load)

  return EvalSet(name="300w", jobs=[job(*p) for p in pairs], normaliser="inter_ocular",
                 yaw_source="estimated: 3DMM fitted to the ground-truth landmarks "
                            "(dff_jax.alignment.fit_landmarks, contour='nearest')",
                 box_protocol="ground-truth landmark bounding box")


BOX_PROTOCOLS = {
    "landmarks": None,  # each set's own (the ground-truth landmark box on photographs)
    "dlib": "dlib's HOG face detector (upsample 1), the detection overlapping the ground-truth "
            "landmark box most (IoU >= 0.3); faces without one are left out",
}
MIN_BOX_IOU = 0.3


def with_boxes(eval_set: EvalSet, boxes: str = "landmarks", refine: int = 0, baseline=None,
               compare_dlib: bool = False) -> Tuple[EvalSet, set]:
  """``eval_set`` with another face box protocol, refinement passes and dlib's predictions.

  Args:
    eval_set: a set whose jobs' ``truth`` holds ``landmarks_px``.
    boxes: :data:`BOX_PROTOCOLS` key or a ``.json`` file: ``"landmarks"`` keeps the set's
      boxes; ``"dlib"`` gives each face the box of ``baseline.detect`` overlapping its landmark
      box most (IoU at least :data:`MIN_BOX_IOU`); a file (the layout of ``align --boxes``:
      image file name, path or stem -> ``[x0, y0, x1, y1]`` or a list of them, e.g. another
      detector's output) the same among its boxes for the image. A face without one fails to
      load (and is left out of every method's figures) and its job name is added to the
      returned set.
    refine: extra passes of our aligner for each face (:class:`dff_jax.alignment.streaming.Loaded`).
    baseline: a :class:`dff_jax.evaluation.dlib_baseline.DlibBaseline` (``boxes="dlib"`` or
      ``compare_dlib``).
    compare_dlib: each face's ``truth`` also gets ``dlib_landmarks_px [68, 2]``: dlib's
      predictor from the same box.

  Returns:
    ``(eval_set, names of the faces without a box)``; the set fills in while it is run. Each
    face's box (and dlib's prediction) is found once, on its first load, and reused by every
    method after it.
  """
  without_box: set = set()
  if boxes == "landmarks" and not refine and not compare_dlib:
    return eval_set, without_box
  from dff_jax import detection  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import streaming  # pylint: disable=g-import-not-at-top
  box_map = None if boxes in BOX_PROTOCOLS else streaming.read_boxes_file(boxes)

  def candidates(job, image) -> np.ndarray:
    if box_map is None:
      return baseline.detect(image)
    _, entry = streaming.box_for(box_map, Path(job.name))
    try:
      return np.asarray(entry if entry is not None else [], np.float64).reshape(-1, 4)
    except (TypeError, ValueError):
      raise ValueError(f"{job.name}: its entry in {boxes} is not [x0, y0, x1, y1] or a list "
                       "of them") from None

  source = "dlib's detector" if box_map is None else str(boxes)
  # job name -> (box, truth), or the error of a face without a box: every method reads the same.
  done: Dict[str, Any] = {}

  def wrap(job):
    def load():
      loaded = job.load()
      if job.name in done:  # detected / predicted for an earlier method already
        if isinstance(done[job.name], ValueError):
          raise done[job.name]
        box, truth = done[job.name]
        return dataclasses.replace(loaded, box=box, truth=truth, refine=int(refine))
      truth = dict(loaded.truth)
      box = loaded.box
      if boxes != "landmarks":
        found = candidates(job, loaded.image)
        overlap = detection.box_iou(np.asarray(landmark_box(truth["landmarks_px"]), np.float64),
                                    np.asarray(found, np.float64).reshape(-1, 4))
        if not len(found) or overlap.max() < MIN_BOX_IOU:
          without_box.add(job.name)
          done[job.name] = ValueError(f"{job.name}: {source} has no face box overlapping the "
                                      f"annotation (IoU >= {MIN_BOX_IOU})")
          raise done[job.name]
        box = np.asarray(found[int(np.argmax(overlap))], np.float32)
      if compare_dlib:
        truth["dlib_landmarks_px"] = baseline.predict(loaded.image, box)
      done[job.name] = (box, truth)
      return dataclasses.replace(loaded, box=box, truth=truth, refine=int(refine))
    return streaming.Job(name=job.name, load=load)

  protocol = (BOX_PROTOCOLS[boxes] or eval_set.box_protocol if box_map is None else
              f"the boxes of {boxes}, the one overlapping the ground-truth landmark box most "
              f"(IoU >= {MIN_BOX_IOU}); faces without one are left out")
  if refine:
    protocol += (f"; up to {refine} refinement pass(es) from the box of the previous "
                 "landmarks_px, until the crop moves by at most refine_min_change of its side")
  return dataclasses.replace(eval_set, jobs=[wrap(j) for j in eval_set.jobs],
                             box_protocol=protocol), without_box


def score_face(predicted: np.ndarray, target: np.ndarray,
               normaliser: str) -> Tuple[float, Dict[str, float], np.ndarray]:
  """One face's figures: ``(NME, per-region NME plus jaw_dx, offsets [68, 2])``.

  Args:
    predicted, target: ``[68, 2]`` image pixels (the target in the set's convention).
    normaliser: ``"inter_ocular"`` or ``"bbox"`` (:mod:`dff_jax.metrics`).

  Returns:
    the NME; :func:`dff_jax.metrics.region_nme` plus ``jaw_dx`` (the jaw points' mean x error,
    prediction - truth, over the normaliser); ``(predicted - target) / normaliser`` (float64).
  """
  predicted = np.asarray(predicted, np.float64)
  target = np.asarray(target, np.float64)
  per_region = metrics.region_nme(predicted, target, normaliser)
  _, start, stop = metrics.REGIONS[0]   # the jaw
  offset = (predicted - target) / metrics.normaliser_length(target, normaliser)
  per_region["jaw_dx"] = np.mean(offset[start:stop, 0])
  return (float(metrics.nme(predicted, target, normaliser)),
          {k: float(v) for k, v in per_region.items()}, offset)


def exact_3d_target(alignment_model: Any, truth: Dict[str, Any]) -> np.ndarray:
  """A render's exact landmarks of the 3D convention in an aligner's convention: ``[68, 2]``
  float64 image pixels, the rendered shape's 68 fixed landmark vertices
  (:func:`dff_jax.alignment.cascade.fixed_landmarks`, moved by the aligner's landmark offsets as
  its ``landmarks_3d_px`` are) projected under the rendering pose, hidden ones included."""
  from dff_jax.alignment import cascade  # pylint: disable=g-import-not-at-top
  return np.asarray(cascade.fixed_landmarks(
      alignment_model, np.asarray(truth["model_pose"], np.float32),
      np.asarray(truth["shape_coefficients"], np.float32),
      np.asarray(truth["expression_coefficients"], np.float32)), np.float64)


def estimate_yaw_deg(model: FaceModel, landmarks_px: np.ndarray,
                     chunk: int = 64) -> np.ndarray:
  """Yaw (degrees, our convention) of 3DMM fits to ``landmarks_px [N, 68, 2]`` (chunks padded to
  one size, so the fit compiles once)."""
  from dff_jax.alignment import fitting  # pylint: disable=g-import-not-at-top
  landmarks_px = np.asarray(landmarks_px, np.float32)
  out = np.full(len(landmarks_px), np.nan, np.float64)
  size = min(chunk, max(len(landmarks_px), 1))
  for start in range(0, len(landmarks_px), size):
    part = landmarks_px[start:start + size]
    count = len(part)
    if count < size:
      part = np.concatenate([part, np.repeat(part[-1:], size - count, 0)])
    result = fitting.fit_landmarks(model, part, contour="nearest")
    out[start:start + count] = np.degrees(np.asarray(result.yaw_rad, np.float64))[:count]
  return out


def _failure_rate(errors: np.ndarray, threshold: float) -> Optional[float]:
  """Fraction of errors above ``threshold`` in float64 (NaN counts as a failure), as
  :func:`dff_jax.metrics.failure_rate`; ``None`` for no faces."""
  if not len(errors):
    return None
  return float(np.mean(~(np.nan_to_num(errors, nan=np.inf) <= threshold)))


def summarise_errors(errors: np.ndarray, yaw_deg: Optional[np.ndarray],
                     normaliser: str) -> Dict[str, Any]:
  """The alignment figures of one method on one set.

  Args:
    errors: ``[M]`` per-face NME (fractions; NaN counts as a failure).
    yaw_deg: ``[M]`` yaw in degrees for the bins, or ``None`` (bins reported as ``None``).
    normaliser: ``"inter_ocular"`` or ``"bbox"``.

  Returns:
    ``normaliser`` (described), ``num_faces``, ``nme_mean``, ``nme_by_yaw_bin`` (keys ``"0-30"``,
    ``"30-60"``, ``"60-90"``, on ``|yaw|``), ``nme_yaw_bin_mean`` (mean of the three bin means),
    ``yaw_bin_counts``, ``failure_rate_0.08``, ``failure_rate_0.10``, ``auc_0.08``.
  """
  errors = np.asarray(errors, np.float64).reshape(-1)
  if yaw_deg is None or not len(errors):
    by_bin = {name: None for name, _, _ in metrics.YAW_BINS_DEG}
    bin_mean, counts = None, None
  else:
    yaw = np.asarray(yaw_deg, np.float64)
    values = metrics.nme_by_yaw_bin(errors, yaw)
    by_bin = {name: values[name] for name, _, _ in metrics.YAW_BINS_DEG}
    bin_mean = values["mean"]
    magnitude = np.abs(yaw)
    counts = {name: int(np.sum((magnitude >= low) & ((magnitude < high) if high < 90
                                                     else (magnitude <= high))))
              for name, low, high in metrics.YAW_BINS_DEG}
  finite = errors[np.isfinite(errors)]
  return json_safe({
      "normaliser": NORMALISER_DESCRIPTIONS[normaliser],
      "num_faces": int(len(errors)),
      "nme_mean": float(np.mean(finite)) if len(finite) else None,
      "nme_by_yaw_bin": by_bin,
      "nme_yaw_bin_mean": bin_mean,
      "yaw_bin_counts": counts,
      "failure_rate_0.08": _failure_rate(errors, 0.08),
      "failure_rate_0.10": _failure_rate(errors, 0.10),
      "auc_0.08": float(metrics.auc(errors, 0.08)) if len(errors) else None,
  })


def region_summary(regions: List[Dict[str, float]],
                   yaw_deg: Optional[np.ndarray]) -> Dict[str, Any]:
  """Where on the face the error is, from per-face :func:`dff_jax.metrics.region_nme` values
  (plus ``jaw_dx``: the jaw points' mean x error, prediction - truth, over the normaliser).

  Returns:
    ``{region: {"mean": m, "0-30": ..., "30-60": ..., "60-90": ...}}`` (no bins without yaw)
    and ``jaw_offset_along_turn``: the mean of ``jaw_dx * sign(yaw)`` by bin (positive: the
    predicted jaw sits towards the side turned away from the camera, image +x for a positive
    yaw; a systematic offset, not scatter).
  """
  out = {}

  def by_bins(values):
    entry = {"mean": float(np.mean(values)) if len(values) else None}
    if yaw_deg is not None and len(values):
      by_bin = metrics.nme_by_yaw_bin(values, yaw_deg)
      entry.update({b: by_bin[b] for b, _, _ in metrics.YAW_BINS_DEG})
    return entry

  for name, _, _ in metrics.REGIONS:
    out[name] = by_bins(np.array([r[name] for r in regions], np.float64))
  if yaw_deg is not None:
    offsets = np.array([r["jaw_dx"] for r in regions], np.float64) * np.sign(yaw_deg)
    out["jaw_offset_along_turn"] = by_bins(offsets)
  return json_safe(out)


def systematic_error_summary(offsets: np.ndarray,
                             yaw_deg: Optional[np.ndarray]) -> Optional[Dict[str, Any]]:
  """How much of the error is one systematic offset per point (a label convention the training
  data does not share, or a bias of the aligner) rather than scatter.

  Faces are grouped by ``|yaw|`` bin and the sign of the yaw (a turned face's bias is mirrored);
  within a group each point's mean signed error is its bias.

  Args:
    offsets: ``[M, 68, 2]`` per-face ``(prediction - truth) / normaliser`` (x right, y down).
    yaw_deg: ``[M]`` the set's yaw (degrees); ``None``: no summary.

  Returns:
    ``None`` without yaw, else ``{"nme_after_removing_point_bias": {"0-30", "30-60", "60-90"},
    "vertical_offset": {region: {bins}}, "chin_vertical_offset": {bins}}``: the NME left once
    every point's bias in its group is subtracted (what a perfect per-point convention shift
    could reach, an oracle that reads the set's own labels: a diagnostic, not a method), each
    region's mean signed y error (positive: the prediction sits lower in the image) and that of
    the chin (point 8).
  """
  if yaw_deg is None or not len(offsets):
    return None
  offsets = np.asarray(offsets, np.float64)
  yaw = np.asarray(yaw_deg, np.float64)
  residual = np.full(len(offsets), np.nan)
  out: Dict[str, Any] = {"nme_after_removing_point_bias": {}, "vertical_offset": {},
                         "chin_vertical_offset": {}}
  for name, low, high in metrics.YAW_BINS_DEG:
    in_bin = metrics.in_yaw_bin(yaw, low, high)
    for sign in (-1.0, 1.0):
      group = in_bin & (np.where(yaw < 0, -1.0, 1.0) == sign)
      if group.any():
        centred = offsets[group] - offsets[group].mean(axis=0)
        residual[group] = np.linalg.norm(centred, axis=-1).mean(axis=-1)
    out["nme_after_removing_point_bias"][name] = (float(np.mean(residual[in_bin]))
                                                  if in_bin.any() else None)
    out["chin_vertical_offset"][name] = (float(np.mean(offsets[in_bin, 8, 1]))
                                         if in_bin.any() else None)
    for region, start, stop in metrics.REGIONS:
      out["vertical_offset"].setdefault(region, {})[name] = (
          float(np.mean(offsets[in_bin, start:stop, 1])) if in_bin.any() else None)
  return json_safe(out)


def yaw_error_summary(predicted_deg: np.ndarray,
                      yaw_deg: Optional[np.ndarray]) -> Optional[Dict[str, Any]]:
  """How far the aligner's yaw is from the set's, by ``|yaw|`` bin (degrees; the set's yaw as
  its ``yaw_source`` says: a rendering pose, an annotation's pose, or a fit to the points).

  Returns:
    ``None`` without yaw, else ``{"bias": {"mean", "0-30", "30-60", "60-90"}, "abs_error":
    {...}}``: ``bias`` is the mean of ``|predicted| - |true|`` (negative: the aligner turns the
    faces less than they are), ``abs_error`` the mean of ``|predicted - true|``.
  """
  if yaw_deg is None or not len(predicted_deg):
    return None
  predicted_deg = np.asarray(predicted_deg, np.float64)
  yaw_deg = np.asarray(yaw_deg, np.float64)
  out = {}
  for key, values in (("bias", np.abs(predicted_deg) - np.abs(yaw_deg)),
                      ("abs_error", np.abs(predicted_deg - yaw_deg))):
    by_bin = metrics.nme_by_yaw_bin(values, yaw_deg)
    out[key] = {"mean": float(np.mean(values)),
                **{b: by_bin[b] for b, _, _ in metrics.YAW_BINS_DEG}}
  return json_safe(out)


def nothing_scored_message(summary: Dict[str, Any], boxes: str = "landmarks") -> Optional[str]:
  """One line saying why an evaluation scored no face (``summary["num_faces"]`` is 0) and what
  to check; ``None`` when it scored some. ``boxes``: the ``--boxes`` the run was given."""
  if summary.get("num_faces"):
    return None
  without_box = summary.get("num_faces_without_box") or 0
  skipped = list(summary.get("skipped") or [])
  reasons = []
  if without_box:
    if boxes == "dlib":
      source, advice = "dlib's detector", "try --boxes=landmarks"
    else:
      source, advice = f"--boxes={boxes}", ("check that the boxes file names these images (file "
                                            "name, path or stem) with [x0, y0, x1, y1] in image "
                                            "pixels")
    reasons.append(f"{without_box} face(s) had no box from {source} overlapping the annotation "
                   f"(IoU >= {MIN_BOX_IOU}): {advice}")
  if skipped:
    reasons.append(f"{len(skipped)} face(s) could not be read or aligned (first: {skipped[0]})")
  if not reasons:
    reasons.append("the set holds no face: check --data_dir, --split, --sources and --num_faces")
  return "no face could be scored: " + "; ".join(" ".join(r.split()) for r in reasons)


def _method_names(specs) -> List[str]:
  """Method names: the features, plus the cascade's stem (or parent/stem, or a number) when two
  methods share features."""
  names = []
  for k, spec in enumerate(specs):
    same = [s for s in specs if s.features == spec.features]
    if len(same) == 1:
      names.append(spec.features)
    elif len({s.cascade_path.stem for s in same}) == len(same):
      names.append(f"{spec.features}:{spec.cascade_path.stem}")
    elif len({(s.cascade_path.parent.name, s.cascade_path.stem) for s in same}) == len(same):
      names.append(f"{spec.features}:{spec.cascade_path.parent.name}/{spec.cascade_path.stem}")
    else:
      names.append(f"{spec.features}:{k + 1}")
  return names


def evaluate(dataset: str, out_dir: str | Path, data_dir: Optional[str] = None,
             cascade: Optional[str] = None, features: Optional[str] = None,
             checkpoint: Optional[str] = None, face_model: Optional[str] = None,
             num_faces: Optional[int] = None, seed: int = SYNTHETIC_SEED,
             image_size: Optional[int] = None, batch_size: int = 8, progress: bool = True,
             report=None, render_face_model: Optional[str] = None, split: str = "val",
             faces_json: Optional[str] = None, mirror: bool = False,
             sources: Optional[Sequence[str]] = None, boxes: str = "landmarks",
             refine: Optional[int] = None, compare_dlib: bool = False,
             dlib_predictor: Optional[str] = None,
             refine_min_change: Optional[float] = None,
             fit_modes: Optional[int] = None,
             matmul_dtype: Optional[str] = None) -> Dict[str, Any]:
  """``python -m experiments.eval_alignment`` as a function (its docstring has the protocols and
  the outputs); returns the summary written to ``out_dir/summary.json``. ``mirror``: every
  method with test-time mirroring (:class:`dff_jax.alignment.runner.AlignerSpec`).
  ``sources``: faces68 only, the faces of these ``source`` fields (:func:`faces68_set`).
  ``boxes``: the face boxes given to every method (:data:`BOX_PROTOCOLS`; :func:`with_boxes`).
  ``refine``: extra passes of our methods for each face, each from the box of the previous
  pass's ``landmarks_px`` (``None``: as ``align`` does for boxes of that kind: 0 from landmark
  boxes, :data:`dff_jax.alignment.streaming.REFINE_DETECTED` from a detector's);
  ``refine_min_change``: the refinement's convergence tolerance (``None``:
  :data:`dff_jax.alignment.streaming.REFINE_MIN_CHANGE`). ``compare_dlib``: dlib's 68-point predictor is scored beside our
  methods on the same faces and boxes (method ``dlib``; ``dlib_predictor``: its model file,
  default the ``face_recognition_models`` package's; :mod:`dff_jax.evaluation.dlib_baseline`).
  ``fit_modes``: every method's shape fit in this many directions instead of its cascade's own
  (:class:`dff_jax.alignment.runner.AlignerSpec`; the summary's ``fit_modes_override``, and
  each method's ``fit_modes``: the directions it solved for, ``None`` for all).
  ``matmul_dtype``: every DFF method's encoder with its matrix products in this operand dtype
  (``"bfloat16"`` / ``"float32"``; :class:`dff_jax.alignment.runner.AlignerSpec`; the summary's
  ``matmul_dtype``, ``None`` for the encoders' own).

  Raises:
    FileNotFoundError / ValueError: bad arguments, missing data, cascade or checkpoint.
  """
  from dff_jax.alignment import runner  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import streaming  # pylint: disable=g-import-not-at-top
  if report is None:
    def report(message):
      print(message, file=sys.stderr, flush=True)
  if dataset not in DATASETS:
    raise ValueError(f"--dataset must be one of {DATASETS}, got {dataset!r}")
  if dataset != "synthetic" and not data_dir:
    raise ValueError(f"--dataset={dataset} needs --data_dir=DIR")
  if dataset != "synthetic" and not Path(data_dir).is_dir():
    raise FileNotFoundError(f"--data_dir={data_dir} is not a directory")
  if num_faces is not None and num_faces < 1:
    raise ValueError(f"--num_faces must be >= 1, got {num_faces}")
  if int(batch_size) < 1:
    raise ValueError(f"--batch_size must be >= 1, got {batch_size}")
  if image_size is not None and int(image_size) < 1:
    raise ValueError(f"--image_size must be >= 1 (pixels), got {image_size}; leave it out for "
                     "the cascade's training renders")
  if boxes not in BOX_PROTOCOLS and not str(boxes).endswith(".json"):
    raise ValueError(f"--boxes must be one of {tuple(BOX_PROTOCOLS)} or a .json file of boxes, "
                     f"got {boxes!r}")
  if refine is None:
    from dff_jax.alignment.streaming import REFINE_DETECTED  # pylint: disable=g-import-not-at-top
    refine = 0 if boxes == "landmarks" else REFINE_DETECTED
  if refine < 0:
    raise ValueError(f"--refine must be >= 0, got {refine}")
  if refine_min_change is None:
    from dff_jax.alignment.streaming import REFINE_MIN_CHANGE  # pylint: disable=g-import-not-at-top
    refine_min_change = REFINE_MIN_CHANGE
  if not (np.isfinite(float(refine_min_change)) and float(refine_min_change) >= 0):
    raise ValueError(f"--refine_min_change must be a finite fraction >= 0 of the crop side "
                     f"(0: every pass is run), got {refine_min_change}")
  baseline = None
  if boxes == "dlib" or compare_dlib:
    from dff_jax.evaluation import dlib_baseline  # pylint: disable=g-import-not-at-top
    baseline = dlib_baseline.load(dlib_predictor)
    dlib_baseline.check_68_points(baseline)
  cascades = [c for c in (cascade or "").split(",") if c] or [None]
  specs = [runner.resolve_aligner(c, features, checkpoint, face_model, mirror=mirror,
                                  fit_modes=fit_modes, matmul_dtype=matmul_dtype)
           for c in cascades]
  names = _method_names(specs)
  # Photos decoded as `align` decodes them: grey when every method reads only the luma.
  grey = all(runner.load_aligner(spec).channels == 1 for spec in specs)

  # The face model of the renders (None for photographs).
  render_model = (render_face_model or specs[0].face_model) if dataset == "synthetic" else None
  if dataset == "synthetic":
    eval_set = cascade_synthetic_set(
        specs[0].header.get("meta", {}), specs[0].header["config"]["crop_size"], render_model,
        num_faces or DEFAULT_SYNTHETIC_FACES, seed, image_size)
  elif dataset == "aflw2000":
    eval_set = aflw2000_set(data_dir, num_faces, grey)
  elif dataset == "faces68":
    eval_set = faces68_set(data_dir, split, faces_json, num_faces, grey, sources)
  else:
    eval_set = folder_300w_set(data_dir, num_faces, grey)
  eval_set, without_box = with_boxes(eval_set, boxes, refine, baseline, compare_dlib)
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)

  from dff_jax.alignment import cascade  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import draw  # pylint: disable=g-import-not-at-top
  from dff_jax import provenance  # pylint: disable=g-import-not-at-top

  methods: Dict[str, Dict[str, Any]] = {}
  records: List[Dict[str, Any]] = []
  curves = []
  skipped: Dict[str, str] = {}
  truth_by_name: Dict[str, Dict[str, Any]] = {}
  for spec, name in zip(specs, names):
    aligner = runner.load_aligner(spec)
    # Renders of the aligner's own face model are also scored in the 3D convention, against
    # their exact 3D landmarks (what AFLW2000-3D's annotation stands for on photos).
    score_3d = render_model is not None and spec.face_model == render_model
    errors_3d: Dict[str, float] = {}
    regions_3d: Dict[str, Dict[str, float]] = {}
    errors: Dict[str, float] = {}
    yaw_pred: Dict[str, float] = {}
    regions: Dict[str, Dict[str, float]] = {}
    offsets: Dict[str, np.ndarray] = {}
    stats = streaming.RunStats()
    for outcome in streaming.run_jobs(aligner, eval_set.jobs, batch_size, progress=progress,
                                      total=len(eval_set.jobs), keep_loaded=False, stats=stats,
                                      refine_min_change=refine_min_change):
      if outcome.error is not None:
        if outcome.job.name not in skipped:
          skipped[outcome.job.name] = outcome.error
          report(f"eval_alignment: skipped {outcome.error}")
        continue
      truth = outcome.loaded.truth
      truth_by_name[outcome.job.name] = truth
      predicted = predicted_landmarks(outcome.face, eval_set.landmark_convention)
      predicted = predicted.astype(np.float64)
      target = np.asarray(truth["landmarks_px"], np.float64)
      if "model_pose" in truth:
        # A render's labels are the model's landmark vertices: score them in the cascade's
        # landmark convention (its offsets; none: unchanged).
        target = np.asarray(cascade.model_labels_in_convention(
            aligner.alignment_model, target, truth["model_pose"], True), np.float64)
      (errors[outcome.job.name], regions[outcome.job.name],
       offsets[outcome.job.name]) = score_face(predicted, target, eval_set.normaliser)
      yaw_pred[outcome.job.name] = float(outcome.face.pose.yaw_deg)
      if score_3d:
        errors_3d[outcome.job.name], regions_3d[outcome.job.name], _ = score_face(
            outcome.face.landmarks_3d_px, exact_3d_target(aligner.alignment_model, truth),
            "bbox")
    methods[name] = dict(errors=errors, regions=regions, aligner=aligner, yaw_pred=yaw_pred,
                         errors_3d=errors_3d if score_3d else None, regions_3d=regions_3d,
                         offsets=offsets, passes_per_face=(
                             1.0 + stats.refinement_passes / stats.faces if stats.faces else None))

  # Faces every method aligned (a face one method could not read is skipped for all).
  common = [job.name for job in eval_set.jobs
            if all(job.name in m["errors"] for m in methods.values())]
  yaw = np.array([truth_by_name[n]["yaw_deg"] if truth_by_name[n]["yaw_deg"] is not None
                  else np.nan for n in common], np.float64)
  if dataset in ("300w", "faces68") and len(common):
    model = methods[names[0]]["aligner"].face_model
    yaw = estimate_yaw_deg(model, np.stack([truth_by_name[n]["landmarks_px"]
                                            for n in common]))
  if compare_dlib:  # scored against the set's annotation (dlib's jaw is the outline)
    scored = {n: score_face(truth_by_name[n]["dlib_landmarks_px"], truth_by_name[n]["landmarks_px"],
                            eval_set.normaliser) for n in common}
    methods["dlib"] = dict(errors={n: s[0] for n, s in scored.items()},
                           regions={n: s[1] for n, s in scored.items()})
  summaries = {}
  for name in names + (["dlib"] if compare_dlib else []):
    values = np.array([methods[name]["errors"][n] for n in common], np.float64)
    summaries[name] = summarise_errors(values, yaw if len(common) else None,
                                       eval_set.normaliser)
    summaries[name]["nme_by_region"] = region_summary(
        [methods[name]["regions"][n] for n in common], yaw if len(common) else None)
    curves.append((name, values))
    for n, value, yaw_deg in zip(common, values, yaw):
      records.append(dict(image=n, method=name, nme=value, yaw_deg=yaw_deg))
    if name == "dlib":
      summaries[name].update(features="dlib", landmark_convention_of_method="outline",
                             **baseline.describe())
      continue
    summaries[name]["yaw_error_deg"] = yaw_error_summary(
        np.array([methods[name]["yaw_pred"][n] for n in common], np.float64),
        yaw if len(common) else None)
    summaries[name]["systematic_error"] = systematic_error_summary(
        np.array([methods[name]["offsets"][n] for n in common], np.float64).reshape(-1, 68, 2),
        yaw if len(common) else None)
    if methods[name]["errors_3d"] is not None:
      summaries[name]["landmarks_3d"] = dict(
          summarise_errors(np.array([methods[name]["errors_3d"][n] for n in common], np.float64),
                           yaw if len(common) else None, "bbox"),
          description="landmarks_3d_px against each render's exact landmarks of the 3D "
                      "convention (" + LANDMARK_CONVENTIONS["3d"][1] + "; the face model's own "
                      "jaw vertices, moved by the cascade's landmark offsets)",
          nme_by_region=region_summary([methods[name]["regions_3d"][n] for n in common],
                                       yaw if len(common) else None))
    aligner = methods[name]["aligner"]
    summaries[name]["passes_per_face"] = methods[name]["passes_per_face"]
    summaries[name].update(features=aligner.spec.features,
                           cascade=str(aligner.spec.cascade_path),
                           descriptor_source=aligner.describer.source,
                           landmark_offsets=bool(np.any(np.asarray(
                               aligner.alignment_model.landmark_offsets) != 0)),
                           fit_modes=(None if aligner.alignment_model.fit_basis is None
                                      else int(aligner.alignment_model.fit_basis.shape[-1])),
                           models=provenance.model_files({
                               "cascade": aligner.spec.cascade_path,
                               "encoder": aligner.describer.source,
                               "face_model": provenance.face_model_path(aligner.spec.face_model)}))

  summary: Dict[str, Any] = dict(dataset=eval_set.name, data_dir=data_dir,
                                 split=split if dataset == "faces68" else None,
                                 sources=sorted(sources) if sources else None,
                                 image_decode=("grey: BT.601 luma (a JPEG's luma plane)"
                                               if grey and dataset != "synthetic" else "rgb"),
                                 test_time_mirror=bool(mirror),
                                 fit_modes_override=fit_modes,
                                 matmul_dtype=matmul_dtype,
                                 yaw_source=eval_set.yaw_source,
                                 box_protocol=eval_set.box_protocol,
                                 refine=int(refine),
                                 refine_min_change=(float(refine_min_change) if refine
                                                    else None),
                                 num_faces_without_box=(len(without_box) if boxes != "landmarks"
                                                        else None),
                                 landmark_convention=eval_set.landmark_convention,
                                 landmark_convention_description=LANDMARK_CONVENTIONS[
                                     eval_set.landmark_convention][1])
  summary.update(summaries[names[0]])
  summary.update(method=names[0], methods=summaries,
                 skipped=sorted(v for k, v in skipped.items() if k not in without_box))
  if dataset == "synthetic":
    summary.update(seed=int(seed), render_face_model=render_model,
                   pipeline=file_io.json_safe(eval_set.pipeline))
  file_io.write_json_atomic(out_dir / "summary.json", summary)
  lines = "".join(json.dumps(file_io.json_safe(r)) + "\n" for r in records)
  file_io.write_text_atomic(out_dir / "errors.jsonl", lines)
  title = f"{eval_set.name} NME {eval_set.normaliser} N={len(common)}"
  image_io.write_png_atomic(out_dir / "ced.png", draw.render_ced_plot(curves, title=title))
  return file_io.json_safe(summary)
