"""Evaluating a face detector by what the aligner makes of its boxes (issue 13).

**Recall** (AFLW2000-3D photos, one annotated face each): a face counts as *found* when one of
the detector's boxes (at most ``max_faces_per_image``, best first), given to the alignment
cascade, yields landmarks within NME ``threshold`` (0.10; normaliser sqrt(w*h) of the
ground-truth landmark box, predictions in the annotation's landmark convention) of the ground
truth. Reported by |yaw| bin (0-30 / 30-60 / 60-90, ``Pose_Para``). Because this figure also
contains the aligner's own failures, the same photos are aligned from the ground-truth landmark
box (``oracle_recall_by_yaw_bin``: the ceiling any detector can reach with this aligner), and
the detector alone is scored by box overlap (``box_recall_by_yaw_bin``: some corrected box with
IoU >= 0.5 with the landmark box) and by ``conditional_recall_by_yaw_bin`` (found among the
faces the aligner gets right from the ground-truth box).

**False detections** on face-free images that :func:`face_free_images` makes (no data is
copied): random textures of :func:`data_pipeline.backgrounds.random_background`, flat and noise
images, abstract shapes, landscapes (sky, fractal ridges, ground texture) and Mandelbrot
renders, 450 x 450 like the photos.

**Speed**: wall-clock ms per image of the detector alone (decode excluded, compilation excluded),
median and mean, with the load average.

**Box correction**: :func:`fit_box_correction` fits the detector-box -> landmark-box map of
:data:`dff_jax.detection.BOX_CORRECTION` on the faces68 *training* split (never on AFLW2000-3D).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from dff_jax import image_io
from dff_jax import metrics

Detect = Callable[[np.ndarray, str], Tuple[np.ndarray, np.ndarray]]
FACE_FREE_KINDS = ("texture", "flat", "noise", "shapes", "landscape", "fractal")


# ----------------------------------------------------------------------------------------------
# Face-free images
# ----------------------------------------------------------------------------------------------


def face_free_image(index: int, size: int = 450, seed: int = 13) -> Tuple[np.ndarray, str]:
  """One generated face-free image ``[size, size, 3]`` uint8 and its kind.

  The kind cycles through :data:`FACE_FREE_KINDS`; the content is seeded by ``(seed, index)``.
  """
  from data_pipeline import backgrounds  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng((seed, index))
  kind = FACE_FREE_KINDS[index % len(FACE_FREE_KINDS)]
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
  if kind == "texture":
    image = backgrounds.random_background(rng, size, size)
  elif kind == "flat":
    image = backgrounds.random_background(rng, size, size, kind="flat")
    image = image + rng.normal(0, 0.02, image.shape).astype(np.float32)
  elif kind == "noise":
    cells = int(rng.integers(4, 64))
    image = 0.6 * backgrounds.smooth_noise(rng, size, size, cells) + 0.4 * rng.random(
        (size, size, 3), dtype=np.float32)
  elif kind == "shapes":
    image = np.broadcast_to(rng.random(3, dtype=np.float32), (size, size, 3)).copy()
    for _ in range(int(rng.integers(5, 40))):
      colour = rng.random(3, dtype=np.float32)
      cx, cy = rng.random(2)
      rx, ry = rng.uniform(0.02, 0.3, 2)
      shape = rng.integers(3)
      if shape == 0:
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
      elif shape == 1:
        inside = (np.abs(xx - cx) < rx) & (np.abs(yy - cy) < ry)
      else:
        angle = rng.uniform(0, np.pi)
        inside = np.abs(np.cos(angle) * (xx - cx) + np.sin(angle) * (yy - cy)) < rx / 10
      image[inside] = colour
  elif kind == "landscape":
    sky_top, sky_low = rng.random(3, dtype=np.float32) * 0.5 + 0.5, rng.random(3, dtype=np.float32)
    image = sky_top + (sky_low - sky_top) * yy[..., None]
    for layer in range(int(rng.integers(1, 4))):
      ridge = np.zeros(size, np.float32)
      for octave in range(1, 7):
        phase = rng.uniform(0, 2 * np.pi)
        ridge += np.sin(2 * np.pi * (2 ** octave) * xx[0] * rng.uniform(0.5, 1.5) + phase) / (
            2 ** octave)
      ridge = 0.35 + 0.15 * layer + 0.12 * ridge
      colour = rng.random(3, dtype=np.float32) * (0.8 - 0.2 * layer)
      below = yy > ridge[None, :]
      shade = 0.8 + 0.4 * backgrounds.smooth_noise(rng, size, size, 24, channels=1)
      image = np.where(below[..., None], colour * shade, image)
  else:  # fractal
    centre = np.array([-0.745, 0.11]) + rng.normal(0, 0.02, 2)
    width = 10 ** rng.uniform(-2.5, 0.5)
    c = (centre[0] + (xx - 0.5) * width) + 1j * (centre[1] + (yy - 0.5) * width)
    z = np.zeros_like(c)
    count = np.zeros(c.shape, np.float32)
    for _ in range(64):
      live = np.abs(z) <= 2
      z[live] = z[live] ** 2 + c[live]
      count += live
    t = (count / 64.0)[..., None]
    palette = rng.random((2, 3), dtype=np.float32)
    image = palette[0] + (palette[1] - palette[0]) * np.sqrt(t)
  image = np.clip(np.asarray(image, np.float32), 0, 1)
  return (image * 255 + 0.5).astype(np.uint8), kind


# ----------------------------------------------------------------------------------------------
# Box correction (detector box -> landmark box)
# ----------------------------------------------------------------------------------------------


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """IoU of ``box [4]`` with each of ``boxes [N, 4]``."""
  from dff_jax import detection  # pylint: disable=g-import-not-at-top
  return detection.box_iou(np.asarray(box, np.float64), np.asarray(boxes, np.float64).reshape(-1, 4))


def _robust_fit(x: np.ndarray, y: np.ndarray, intercept: bool = True) -> np.ndarray:
  """Least-squares ``y ~ c_0 + x @ c_1..`` (``x [N, K]``; without ``c_0`` unless ``intercept``)
  refitted twice without residuals beyond 3 MADs; returns the ``K + 1`` (``K``) coefficients."""
  design = np.asarray(x, np.float64).reshape(len(y), -1)
  if intercept:
    design = np.concatenate([np.ones((len(y), 1)), design], axis=1)
  keep = np.ones(len(y), bool)
  for _ in range(3):
    coefficients, *_ = np.linalg.lstsq(design[keep], y[keep], rcond=None)
    residual = y - design @ coefficients
    mad = np.median(np.abs(residual[keep] - np.median(residual[keep]))) + 1e-9
    keep = np.abs(residual) <= 3 * 1.4826 * mad
  return coefficients


def fit_box_correction(faces: Sequence[Tuple[str, np.ndarray, np.ndarray]], detect: Detect,
                       min_iou: float = 0.3) -> Dict[str, Any]:
  """Fits :data:`dff_jax.detection.BOX_CORRECTION` on annotated faces.

  For each face, the uncorrected detection overlapping its landmark box most (IoU >= ``min_iou``)
  gives ``shift = (landmark centre - detector centre) / detector size`` and
  ``scale = landmark size / detector size`` per axis. Without keypoints the fit is the median of
  each (no ``*_turn`` terms). With keypoints (``detect`` returning a third array ``[N, 6, 2]``)
  each is a robust straight line in the head-turn proxy ``t``
  (:func:`dff_jax.detection.head_turn`): ``shift_x`` proportional to ``t`` (no intercept: a
  mirrored face gets the mirrored box), the others lines in ``|t|`` and in the nod proxy
  (:func:`dff_jax.detection.head_nod`, ``*_nod``), all measured in the face's own frame (the
  landmarks turned by ``-roll``, :func:`dff_jax.detection.to_face_frame`), and ``roll_fill`` is
  fitted to the image boxes of the turned faces (:func:`dff_jax.detection.rotated_extent`).

  Args:
    faces: ``(name, image [H, W, 3] uint8, landmarks_px [68, 2])`` (training faces only).
    detect: ``(image, name) -> (boxes [N, 4], scores [N][, keypoints [N, 6, 2]])``,
      *uncorrected* detector boxes.

  Returns:
    ``shift_x, shift_y, scale_w, scale_h`` (with keypoints also the ``*_turn`` and ``*_nod``
    slopes and ``roll_fill``) plus ``num_faces``, ``num_used``, the quartiles of each quantity
    and of ``|t|``, the nod and ``|roll|`` (degrees).
  """
  from dff_jax import detection  # pylint: disable=g-import-not-at-top
  rows, turns, nods, rolls, extents = [], [], [], [], []
  count = 0
  with_keypoints = None
  for name, image, landmarks in faces:
    count += 1
    result = detect(image, name)
    boxes = np.asarray(result[0], np.float64).reshape(-1, 4)
    with_keypoints = len(result) > 2
    if not len(boxes):
      continue
    truth = np.concatenate([landmarks.min(0), landmarks.max(0)]).astype(np.float64)
    overlap = box_iou(truth, boxes)
    best = int(np.argmax(overlap))
    if overlap[best] < min_iou:
      continue
    det = boxes[best]
    det_size = det[2:] - det[:2]
    det_centre = (det[:2] + det[2:]) / 2
    roll = 0.0
    if with_keypoints:
      keypoints = np.asarray(result[2])[best][None]
      roll = float(detection.head_roll(keypoints)[0])
      turns.append(float(detection.head_turn(det[None], keypoints)[0]))
      nods.append(float(detection.head_nod(det[None], keypoints)[0]))
    # The landmarks in the face's own frame (turned by -roll about the detector box's centre).
    upright = detection.to_face_frame(
        (np.asarray(landmarks, np.float64) - det_centre)[None], np.array([roll]))[0]
    face_box = np.concatenate([upright.min(0), upright.max(0)])
    rows.append(np.concatenate([(face_box[:2] + face_box[2:]) / 2 / det_size,
                                (face_box[2:] - face_box[:2]) / det_size]))
    rolls.append(roll)
    extents.append(np.concatenate([(face_box[2:] - face_box[:2]) / 2,
                                   (truth[2:] - truth[:2]) / 2]))
  if not rows:
    raise ValueError("no detection matched a landmark box: cannot fit a box correction")
  rows = np.asarray(rows)
  names = ("shift_x", "shift_y", "scale_w", "scale_h")
  fit: Dict[str, Any] = {}
  if with_keypoints:
    turn, nod = np.asarray(turns), np.asarray(nods)
    # A face is left-right symmetric: the sideways shift is odd in the turn (mirroring the image
    # mirrors the corrected box), so shift_x has neither an intercept nor a nod term.
    fit["shift_x"] = 0.0
    fit["shift_x_turn"] = round(float(_robust_fit(turn[:, None], rows[:, 0], False)[0]), 4)
    for i, n in enumerate(names[1:], start=1):
      a, b, c = _robust_fit(np.stack([np.abs(turn), nod], axis=1), rows[:, i]).tolist()
      fit[n], fit[n + "_turn"], fit[n + "_nod"] = round(a, 4), round(b, 4), round(c, 4)
    fit["nod_quartiles"] = [round(float(q), 4) for q in np.percentile(nod, [5, 25, 50, 75, 95])]
    fit["abs_turn_quartiles"] = [round(float(q), 4) for q in np.percentile(np.abs(turn),
                                                                           [25, 50, 75, 95])]
    # roll_fill: least squares of the image box's half sizes between the ellipse's and the
    # rectangle's extents of the face's own box (rotated_extent; only turned faces inform it).
    extents, roll = np.asarray(extents), np.asarray(rolls)
    ellipse = np.stack(detection.rotated_extent(extents[:, 0], extents[:, 1], roll, 0.0), 1)
    rectangle = np.stack(detection.rotated_extent(extents[:, 0], extents[:, 1], roll, 1.0), 1)
    gap = (rectangle - ellipse).ravel()
    if float(np.sum(gap * gap)) > 1e-6:
      fill = float(np.sum(gap * (extents[:, 2:] - ellipse).ravel()) / np.sum(gap * gap))
      fit["roll_fill"] = round(float(np.clip(fill, 0.0, 1.0)), 4)
    fit["abs_roll_deg_quartiles"] = [round(float(q), 2) for q in
                                     np.degrees(np.percentile(np.abs(roll), [25, 50, 75, 95]))]
  else:
    fit.update({n: round(float(np.median(rows[:, i])), 4) for i, n in enumerate(names)})
  fit["quartiles"] = {n: [round(float(q), 4) for q in np.percentile(rows[:, i], [25, 50, 75])]
                      for i, n in enumerate(names)}
  fit.update(num_faces=count, num_used=int(len(rows)), min_iou=min_iou)
  return fit


def synthetic_faces(num_faces: int, seed: int = 20_000, data: Optional[Dict[str, Any]] = None):
  """``(name, image, landmarks_px)`` of synthetic training renders
  (:func:`dff_jax.evaluation.alignment.synthetic_set`: the default face model, full yaw range, the
  landmarks the cascade is trained on, jaw on the silhouette); seed 20 000 is the cascade's
  training seed (never an evaluation seed). ``data``: pipeline settings (e.g. the cascade's
  training ``data`` meta)."""
  from dff_jax.evaluation import alignment as alignment_eval  # pylint: disable=g-import-not-at-top
  eval_set = alignment_eval.synthetic_set(int(num_faces), seed=seed, image_size=None, data=data)
  for job in eval_set.jobs:
    loaded = job.load()
    yield job.name, loaded.image, np.asarray(loaded.truth["landmarks_px"], np.float32)


def faces68_faces(data_dir: str | os.PathLike, split: str = "train",
                  num_faces: Optional[int] = None):
  """``(name, image, landmarks_px)`` of the faces68 ``split`` (lazily read)."""
  from data_pipeline import readers  # pylint: disable=g-import-not-at-top
  entries = readers.read_faces68(data_dir, split)
  if num_faces:
    entries = entries[:int(num_faces)]
  for entry in entries:
    yield entry.name, image_io.read_image(entry.image_path), entry.landmarks_px


# ----------------------------------------------------------------------------------------------
# Recall, false detections, speed
# ----------------------------------------------------------------------------------------------


def _bin_index(yaw_deg: float) -> int:
  magnitude = abs(yaw_deg)
  for k, (_, low, high) in enumerate(metrics.YAW_BINS_DEG):
    if low <= magnitude < high or (k == len(metrics.YAW_BINS_DEG) - 1 and magnitude >= low):
      return k
  return len(metrics.YAW_BINS_DEG) - 1


def _by_bin(values: np.ndarray, bins: np.ndarray) -> Dict[str, Optional[float]]:
  out: Dict[str, Optional[float]] = {}
  for k, (name, _, _) in enumerate(metrics.YAW_BINS_DEG):
    chosen = values[bins == k]
    out[name] = round(float(np.mean(chosen)), 4) if len(chosen) else None
  return out


def time_detector(images: Sequence[np.ndarray], detect: Detect,
                  names: Optional[Sequence[str]] = None) -> Tuple[List[Tuple], np.ndarray]:
  """Runs ``detect`` on each image once (after one warm-up call); detections and ms each."""
  names = list(names) if names is not None else [str(i) for i in range(len(images))]
  if len(images):
    detect(images[0], names[0])
  results, elapsed = [], []
  for image, name in zip(images, names):
    start = time.perf_counter()
    results.append(detect(image, name))
    elapsed.append(1000 * (time.perf_counter() - start))
  return results, np.asarray(elapsed)


def evaluate_detection(data_dir: str | os.PathLike, detect: Detect, aligner: Any,
                       num_images: Optional[int] = None, num_face_free: int = 300,
                       max_faces_per_image: int = 5, threshold: float = 0.10,
                       batch_size: int = 16, progress: bool = False,
                       refine: Optional[int] = None) -> Dict[str, Any]:
  """Recall by yaw bin on AFLW2000-3D photos, false detections on face-free images, speed.

  Args:
    data_dir: an AFLW2000-3D folder (``imageNNNNN.jpg`` + ``.mat``).
    detect: ``(image [H, W, 3] uint8, name) -> (boxes [N, 4] landmark-box convention, scores
      [N])``, best first (e.g. :func:`dff_jax.detection.detect_faces`).
    aligner: a :class:`dff_jax.alignment.runner.CompiledCascade`
      (:func:`dff_jax.alignment.runner.load_aligner`).
    num_images: the first N photos (all when ``None``).
    num_face_free: face-free images to generate (:func:`face_free_image`).
    max_faces_per_image: boxes per photo given to the aligner (best first).
    threshold: NME (bbox) below which a face counts as found.
    batch_size: faces per jitted alignment call.
    refine: extra passes for each detected face, as :class:`dff_jax.Aligner` makes them
      (default :data:`dff_jax.alignment.streaming.REFINE_DETECTED`); the ground-truth box is
      aligned once.

  Returns:
    the summary (see the module docstring); per-photo rows under ``"per_image"``.
  """
  from data_pipeline import readers  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import streaming  # pylint: disable=g-import-not-at-top
  from dff_jax.evaluation import alignment as alignment_eval  # pylint: disable=g-import-not-at-top
  refine = streaming.REFINE_DETECTED if refine is None else int(refine)
  pairs = readers.list_aflw2000(data_dir)
  if num_images:
    pairs = pairs[:int(num_images)]
  truths, detections, elapsed = [], [], []
  for k, (image_path, mat_path) in enumerate(pairs):
    annotation = readers.read_aflw2000(mat_path)
    image = image_io.read_image(image_path)
    if k == 0:
      detect(image, image_path.name)  # compile / warm up outside the timing
    start = time.perf_counter()
    boxes, scores = detect(image, image_path.name)
    elapsed.append(1000 * (time.perf_counter() - start))
    detections.append((np.asarray(boxes, np.float32).reshape(-1, 4)[:max_faces_per_image],
                       np.asarray(scores, np.float32).reshape(-1)[:max_faces_per_image]))
    truths.append((image_path, annotation.landmarks_px, float(annotation.yaw_deg)))
  load_average = os.getloadavg()[0]

  def make_job(name, image_path, box, passes):
    return streaming.Job(name=name, load=lambda: streaming.Loaded(
        image=image_io.read_image(image_path), box=box, refine=passes))

  jobs = []
  for k, ((image_path, landmarks, _), (boxes, _)) in enumerate(zip(truths, detections)):
    jobs.append(make_job(f"{k}:truth", image_path, alignment_eval.landmark_box(landmarks), 0))
    for d, box in enumerate(boxes):
      jobs.append(make_job(f"{k}:{d}", image_path, box, refine))
  errors: Dict[str, float] = {}
  convention = "3d"  # AFLW2000-3D annotations: scored on landmarks_3d_px
  for outcome in streaming.run_jobs(aligner, jobs, batch_size=batch_size, progress=progress,
                                    total=len(jobs), workers=1):
    k = int(outcome.job.name.split(":")[0])
    if outcome.face is None:
      errors[outcome.job.name] = np.inf
      continue
    predicted = (alignment_eval.predicted_landmarks(outcome.face, convention) if convention
                 else outcome.face.landmarks_px)
    errors[outcome.job.name] = float(metrics.nme(np.asarray(predicted, np.float64),
                                                 np.asarray(truths[k][1], np.float64), "bbox"))
  per_image = []
  for k, ((image_path, landmarks, yaw), (boxes, scores)) in enumerate(zip(truths, detections)):
    det_errors = [errors[f"{k}:{d}"] for d in range(len(boxes))]
    truth_box = alignment_eval.landmark_box(landmarks)
    best_iou = float(np.max(box_iou(truth_box, boxes))) if len(boxes) else 0.0
    per_image.append(dict(
        image=image_path.name, yaw_deg=round(yaw, 2), num_detections=int(len(boxes)),
        best_nme=round(min(det_errors), 4) if det_errors else None,
        truth_box_nme=round(errors[f"{k}:truth"], 4), best_iou=round(best_iou, 4),
        unmatched=int(np.sum(box_iou(truth_box, boxes) < 0.3)) if len(boxes) else 0))
  bins = np.array([_bin_index(yaw) for _, _, yaw in truths])
  found = np.array([row["best_nme"] is not None and row["best_nme"] <= threshold
                    for row in per_image])
  oracle = np.array([row["truth_box_nme"] <= threshold for row in per_image])
  box_hit = np.array([row["best_iou"] >= 0.5 for row in per_image])
  conditional = {}
  for k, (name, _, _) in enumerate(metrics.YAW_BINS_DEG):
    chosen = (bins == k) & oracle
    conditional[name] = round(float(np.mean(found[chosen])), 4) if chosen.any() else None

  face_free_counts, face_free_kinds, face_free_ms = [], [], []
  for index in range(int(num_face_free)):
    image, kind = face_free_image(index)
    start = time.perf_counter()
    boxes, _ = detect(image, f"face_free_{index:04d}")
    face_free_ms.append(1000 * (time.perf_counter() - start))
    face_free_counts.append(len(boxes))
    face_free_kinds.append(kind)
  face_free_counts = np.asarray(face_free_counts)
  by_kind = {kind: round(float(np.mean(face_free_counts[np.array(face_free_kinds) == kind])), 4)
             for kind in FACE_FREE_KINDS if kind in face_free_kinds}
  elapsed = np.asarray(elapsed)
  return dict(
      num_images=len(per_image),
      yaw_bin_counts={name: int(np.sum(bins == k))
                      for k, (name, _, _) in enumerate(metrics.YAW_BINS_DEG)},
      found_rule=(f"a box (at most {max_faces_per_image} per photo, best first) aligned by the "
                  f"cascade gives NME (bbox: sqrt(w*h) of the ground-truth landmark box) <= "
                  f"{threshold}"),
      refine_passes=refine,
      refine_min_change=streaming.REFINE_MIN_CHANGE if refine else None,
      recall_by_yaw_bin=_by_bin(found.astype(float), bins),
      recall=round(float(np.mean(found)), 4),
      oracle_recall_by_yaw_bin=_by_bin(oracle.astype(float), bins),
      conditional_recall_by_yaw_bin=conditional,
      box_recall_by_yaw_bin=_by_bin(box_hit.astype(float), bins),
      detections_per_photo=round(float(np.mean([r["num_detections"] for r in per_image])), 4),
      unmatched_detections_per_photo=round(float(np.mean([r["unmatched"] for r in per_image])), 4),
      face_free=dict(
          num_images=int(num_face_free), size_px=450,
          source="generated by dff_jax.evaluation.detection.face_free_image (kinds "
                 f"{', '.join(FACE_FREE_KINDS)}; seed 13)",
          false_detections_per_image=(round(float(np.mean(face_free_counts)), 4)
                                      if num_face_free else None),
          images_with_a_detection=(round(float(np.mean(face_free_counts > 0)), 4)
                                   if num_face_free else None),
          false_detections_per_image_by_kind=by_kind),
      ms_per_image=dict(median=round(float(np.median(elapsed)), 2),
                        mean=round(float(np.mean(elapsed)), 2),
                        p90=round(float(np.percentile(elapsed, 90)), 2),
                        image_size="450x450", load_average_1min=round(load_average, 2),
                        note="detector only (JPEG decode excluded, compilation excluded), "
                             "wall clock, one image at a time"),
      per_image=per_image)


# ----------------------------------------------------------------------------------------------
# The eval_detection command's detectors and box corrections
# ----------------------------------------------------------------------------------------------


CORRECTION_KEYS = ("shift_x", "shift_y", "scale_w", "scale_h", "shift_x_turn", "shift_y_turn",
                   "scale_w_turn", "scale_h_turn", "roll_fill", "shift_x_nod", "shift_y_nod",
                   "scale_w_nod", "scale_h_nod")


def parse_correction(text: str | None) -> Dict[str, float]:
  """``"sx,sy,sw,sh[,sx_turn,sy_turn,sw_turn,sh_turn[,roll_fill[,sx_nod,sy_nod,sw_nod,sh_nod]]]"``
  / ``"none"`` / ``None`` -> correction dict (:func:`dff_jax.detection.correct_boxes`)."""
  if text is None or text == "none":
    return dict(shift_x=0.0, shift_y=0.0, scale_w=1.0, scale_h=1.0)
  try:
    values = [float(v) for v in text.split(",")]
  except ValueError:
    values = []
  if len(values) not in (4, 8, 9, 13) or not all(np.isfinite(values)) or min(values[2:4]) <= 0:
    raise ValueError(f"--box_correction={text!r}: expected shift_x,shift_y,scale_w,scale_h "
                     "(positive scales) [+ the four *_turn slopes [+ roll_fill [+ the four "
                     "*_nod slopes]]], or none")
  return dict(zip(CORRECTION_KEYS, values))


def external_detector(path: str, correction: Dict[str, float]):
  """A ``detect(image, name)`` reading boxes from a JSON file (see the module docstring)."""
  from dff_jax import detection  # pylint: disable=g-import-not-at-top
  document = json.loads(Path(path).read_text())
  table = document.get("results", document)

  def detect(image, name):
    del image
    rows = np.asarray(table[name], np.float32).reshape(-1, 5)
    rows = rows[np.argsort(-rows[:, 4], kind="stable")]
    return detection.correct_boxes(rows[:, :4], correction), rows[:, 4]
  return detect, table


def write_face_free_images(out_dir: str | os.PathLike, count: int) -> Path:
  """Writes the first ``count`` face-free images (:func:`face_free_image`) as
  ``out_dir/face_free_NNNN.png``; returns the folder."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  for index in range(count):
    image, _ = face_free_image(index)
    Image.fromarray(image).save(out / f"face_free_{index:04d}.png")
  return out


def make_detector(detections: Optional[str], box_correction: Optional[str],
                  detector_name: Optional[str], min_score: float, upsample: int,
                  mirror: bool = False):
  """The detector evaluated: another detector's boxes from the JSON file ``detections``
  (:func:`external_detector`), else :class:`dff_jax.detection.FaceDetector` (``mirror``: its
  mirror-averaged scores, :func:`dff_jax.detection.detect_faces`).

  Returns:
    ``(detect, table, name, correction)``: ``detect(image, name)`` -> ``(boxes, scores)`` (the
    BlazeFace one also takes ``corrected`` and ``keypoints``), the external JSON table (``None``
    for BlazeFace), the detector's name and the box correction applied.
  """
  from dff_jax import detection  # pylint: disable=g-import-not-at-top
  if detections:
    correction = parse_correction(box_correction)
    detect, table = external_detector(detections, correction)
    return detect, table, detector_name or Path(detections).stem, correction
  correction = (dict(detection.BOX_CORRECTION) if box_correction is None
                else parse_correction(box_correction))
  detector = detection.FaceDetector(correction=correction)

  def detect(image, _name, corrected=True, keypoints=False):
    return detector(image, min_score=min_score, upsample=upsample, correct=corrected,
                    return_keypoints=keypoints, mirror=mirror)
  return detect, None, detector.name, correction
