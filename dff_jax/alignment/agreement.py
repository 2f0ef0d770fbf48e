"""Does a box hold a face? The descriptor template and the agreement threshold of a cascade.

A DFF descriptor is trained to be the same at the same point of every face, so the descriptors
the cascade's last stage reads at its 68 landmarks are, on a face, close to each landmark's
mean over training faces, and far from it where a box holds no face. A cascade file may carry
that mean (``descriptor_template [68, D]``, unit rows): every aligned face then gets its
``landmark_agreement`` (the cosine of each read descriptor with its row) and ``agreement``
(their mean; :func:`dff_jax.alignment.cascade.landmark_agreement`), at no cost beyond a
``[68, D]`` product (the last stage's descriptors are read anyway).

:func:`fit_agreement` fits the template on annotated training faces (faces68 layout, from
their landmark boxes, each also mirrored) and renders of every yaw, and sets the threshold
``min_agreement`` in the file's meta (``agreement``): the 1st percentile of those faces' own agreement, so that about
one training face in a hundred falls below it. ``align`` warns about a face below it; the
report also gives, as a training-set figure, the share of boxes on no face (boxes in the same
photos away from every annotated face, and generated face-free images) that reach it.
:func:`evaluate_agreement` measures the same on held-out sets
(``python -m experiments.fit_agreement --evaluate``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

# The share of annotated training faces allowed below the threshold.
FACE_PERCENTILE = 1.0
# Seeds of the face-free images: fitting and evaluation never share one.
FIT_FREE_SEED = 31
EVAL_FREE_SEED = 13
# |yaw| bins (degrees) of the held-out AFLW2000-3D figures (the last takes 90 and over).
YAW_BINS = ((0, 30), (30, 60), (60, 90))
AFLW_SET = "aflw2000_3d_dev_faces"

Faces = List[Tuple[np.ndarray, np.ndarray, np.ndarray]]


def fit_template(features: np.ndarray) -> np.ndarray:
  """``[N, 68 * D + 1]`` last-stage features -> ``[68, D]`` float32 template: each landmark's
  mean read descriptor (rows of zeros, landmarks not read, count for nothing), made unit length
  (a landmark never read gets a zero row).

  Raises:
    ValueError: no features.
  """
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or not len(features) or (features.shape[1] - 1) % 68:
    raise ValueError(f"fit_template needs [N, 68 * D + 1] features with N > 0, got "
                     f"{features.shape}")
  rows = features[:, :-1].reshape(len(features), 68, -1)
  total = rows.sum(axis=0)
  norm = np.linalg.norm(total, axis=-1, keepdims=True)
  return np.where(norm > 0, total / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


def agreements(features: np.ndarray, template: np.ndarray) -> np.ndarray:
  """``[N]`` float64: each face's agreement, :func:`dff_jax.alignment.cascade.landmark_agreement`
  of each row of collected last-stage features ``[N, 68 * D + 1]``."""
  import jax  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import cascade  # pylint: disable=g-import-not-at-top
  features = np.asarray(features, np.float32)
  if not len(features):
    return np.zeros((0,), np.float64)
  mean = jax.vmap(cascade.landmark_agreement, in_axes=(0, None))(features, template)[1]
  return np.asarray(mean, np.float64)


def background_boxes(image: np.ndarray, face_boxes: np.ndarray, count: int,
                     rng: np.random.Generator, max_overlap: float = 0.02) -> List[np.ndarray]:
  """Up to ``count`` boxes ``[4]`` (image pixels) inside ``image``, each the size of a face box
  of the image (0.6-1.4 times its side) and overlapping every ``face_boxes [M, 4]`` by an IoU
  of at most ``max_overlap``; fewer when the image has no room."""
  from dff_jax import detection  # pylint: disable=g-import-not-at-top
  height, width = image.shape[:2]
  face_boxes = np.asarray(face_boxes, np.float64).reshape(-1, 4)
  side0 = float(np.max(face_boxes[:, 2:] - face_boxes[:, :2]))
  boxes = []
  for _ in range(50 * count):
    if len(boxes) == count:
      break
    side = side0 * rng.uniform(0.6, 1.4)
    if side >= min(width, height):
      continue
    x0, y0 = rng.uniform(0, width - side), rng.uniform(0, height - side)
    box = np.array([x0, y0, x0 + side, y0 + side * rng.uniform(0.9, 1.2)])
    box[3] = min(box[3], height)
    if detection.box_iou(box, face_boxes).max() <= max_overlap:
      boxes.append(box)
  return boxes


def face_free_faces(count: int, seed: int, grey: bool, rng: np.random.Generator) -> Faces:
  """``count`` generated face-free 450 px images (:func:`dff_jax.evaluation.detection.face_free_image`,
  ``seed``) each with one box of side 120-300 px, as ``(image, zeros [68, 2], box)`` triples."""
  from dff_jax import image_io  # pylint: disable=g-import-not-at-top
  from dff_jax.evaluation import detection as detection_eval  # pylint: disable=g-import-not-at-top
  faces = []
  for index in range(count):
    image, _ = detection_eval.face_free_image(index, seed=seed)
    if grey:
      image = image_io.rgb_to_grey(image)
    side = rng.uniform(120, 300)
    x0, y0 = rng.uniform(0, image.shape[1] - side, 2)
    faces.append((image, np.zeros((68, 2)), np.array([x0, y0, x0 + side, y0 + side])))
  return faces


def annotated_faces(data_dir: str, split: str, sources: Optional[Sequence[str]], grey: bool,
                    mirror: bool, backgrounds: int, rng: np.random.Generator
                    ) -> Tuple[Faces, Faces]:
  """``(faces, boxes on no face)`` of a faces68-layout split (``sources``: ``None`` = all):
  each face from its landmark box (and mirrored, with ``mirror``), and ``backgrounds`` boxes
  per photo away from its annotated face (:func:`background_boxes`)."""
  from data_pipeline import readers  # pylint: disable=g-import-not-at-top
  from dff_jax import geometry  # pylint: disable=g-import-not-at-top
  from dff_jax import image_io  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import refinement  # pylint: disable=g-import-not-at-top
  entries = readers.read_faces68(data_dir, split)
  present = sorted({e.source for e in entries})
  if sources is not None:
    entries = [e for e in entries if e.source in set(sources)]
  if not entries:
    raise ValueError(f"no face of the sources {list(sources or [])} in the {split} split of "
                     f"{data_dir}; its sources are {present}")
  faces, negatives = [], []
  for entry in entries:
    image = image_io.read_image(entry.image_path, grey=grey)
    landmarks = np.asarray(entry.landmarks_px, np.float64)
    box = np.asarray(geometry.landmark_box(landmarks), np.float64)
    views = [(image, landmarks)] + ([refinement.mirror_face(image, landmarks)] if mirror else [])
    for view_image, view_landmarks in views:
      faces.append((view_image, view_landmarks,
                    np.asarray(geometry.landmark_box(view_landmarks), np.float64)))
    for other in background_boxes(image, box[None], backgrounds, rng):
      negatives.append((image, np.zeros((68, 2)), other))
  return faces, negatives


def _figures(values: np.ndarray, threshold: float) -> Dict[str, Any]:
  values = np.asarray(values, np.float64)
  return dict(count=int(len(values)),
              below_threshold=float(np.mean(values < threshold)) if len(values) else None,
              percentiles_1_5_50_95_99=(np.round(np.percentile(values, [1, 5, 50, 95, 99]), 4)
                                        .tolist() if len(values) else None))


def _collect_features(aligner: Any, faces: Faces, batch_size: int) -> np.ndarray:
  from dff_jax.alignment import refinement  # pylint: disable=g-import-not-at-top
  if not faces:
    return np.zeros((0, aligner.params.landmark_weights.shape[1]), np.float32)
  return refinement.collect(aligner, faces, batch_size)[0]


def fit_agreement(cascade_path: Optional[str], out_path: str | Path, data_dir: str,
                  split: str = "train", sources: Sequence[str] = ("helen-train", "afw"),
                  mirror: bool = True, num_synthetic: int = 2400, backgrounds: int = 1,
                  num_face_free: int = 300, batch_size: int = 32,
                  seed: int = 0) -> Dict[str, Any]:
  """Writes ``out_path``: the cascade ``cascade_path`` (``None``: the default pair) with a
  ``descriptor_template`` fitted on the faces of ``sources`` in a faces68-layout split and on
  ``num_synthetic`` renders of every yaw (:func:`dff_jax.alignment.refinement.synthetic_faces`,
  seed :data:`dff_jax.alignment.refinement.SYNTHETIC_SEED`: the photos are mostly frontal, and a
  turned face agrees less with a frontal template), and the meta ``agreement``:
  ``min_agreement`` (the :data:`FACE_PERCENTILE` percentile of all those faces' agreement) and
  training-set figures for the photos, the renders and boxes on no face (``backgrounds`` per
  photo, :func:`background_boxes`; ``num_face_free`` generated images of seed
  :data:`FIT_FREE_SEED`). A template the file already carries is replaced. Returns that report.

  Raises:
    FileNotFoundError / ValueError: missing data or cascade, no face of ``sources``.
  """
  from dff_jax.alignment import runner  # pylint: disable=g-import-not-at-top
  spec = runner.resolve_aligner(cascade_path, None, None, None)
  aligner = runner.load_aligner(spec, cache=False)
  rng = np.random.default_rng(seed)
  grey = aligner.channels == 1
  from dff_jax.alignment import refinement  # pylint: disable=g-import-not-at-top
  faces, negatives = annotated_faces(data_dir, split, sources, grey, mirror, backgrounds, rng)
  renders = refinement.synthetic_faces(aligner, int(num_synthetic), refinement.SYNTHETIC_SEED)
  free = face_free_faces(num_face_free, FIT_FREE_SEED, grey, rng)
  face_features = _collect_features(aligner, faces + renders, batch_size)
  template = fit_template(face_features)
  face_values = agreements(face_features, template)
  threshold = float(np.percentile(face_values, FACE_PERCENTILE))
  report = dict(
      min_agreement=round(threshold, 4), face_percentile=FACE_PERCENTILE, split=split,
      sources=sorted(set(sources)), mirrored=bool(mirror), data_dir=str(data_dir), seed=seed,
      synthetic_faces=len(renders), synthetic_seed=refinement.SYNTHETIC_SEED,
      training_faces=_figures(face_values[:len(faces)], threshold),
      training_renders=_figures(face_values[len(faces):], threshold),
      training_background_boxes=_figures(
          agreements(_collect_features(aligner, negatives, batch_size), template), threshold),
      training_face_free_images=dict(seed=FIT_FREE_SEED, **_figures(
          agreements(_collect_features(aligner, free, batch_size), template), threshold)),
      fitted_from=str(spec.cascade_path))
  aligner.save_derived(out_path, aligner.params.replace(descriptor_template=template),
                       agreement=report)
  return report


def held_out_sets(grey: bool, data_dir: str, aflw_dir: Optional[str], num_face_free: int
                  ) -> Tuple[Dict[str, Tuple[Faces, bool]], Optional[np.ndarray]]:
  """The held-out sets of ``fit_agreement --evaluate``: ``({name: (faces, holds_faces)}, |yaw|
  degrees [N] of the AFLW2000-3D faces or None)``: the faces of a faces68-layout val split from
  their landmark boxes and one box per val photo away from its face (:func:`background_boxes`),
  the AFLW2000-3D faces of ``aflw_dir`` from their landmark boxes (validation only; ``None``:
  left out) and ``num_face_free`` generated face-free images of seed :data:`EVAL_FREE_SEED`
  (never the fit's), decoded grey (``grey``, as the shipped encoders read them) or RGB."""
  from data_pipeline import readers  # pylint: disable=g-import-not-at-top
  from dff_jax import geometry  # pylint: disable=g-import-not-at-top
  from dff_jax import image_io  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  faces, negatives = annotated_faces(data_dir, "val", None, grey, False, 1, rng)
  sets = {"faces68_val_faces": (faces, True), "faces68_val_background_boxes": (negatives, False)}
  yaws = None
  if aflw_dir:
    aflw, yaws = [], []
    for image_path, mat_path in readers.list_aflw2000(aflw_dir):
      annotation = readers.read_aflw2000(mat_path)
      landmarks = np.asarray(annotation.landmarks_px, np.float64)
      aflw.append((image_io.read_image(image_path, grey=grey), landmarks,
                   np.asarray(geometry.landmark_box(landmarks), np.float64)))
      yaws.append(abs(np.degrees(annotation.yaw_rad)))
    sets[AFLW_SET] = (aflw, True)
    yaws = np.asarray(yaws)
  sets["face_free_images"] = (face_free_faces(num_face_free, EVAL_FREE_SEED, grey, rng), False)
  return sets, yaws


def evaluate_agreement(cascade_path: Optional[str], data_dir: str, aflw_dir: Optional[str],
                       num_face_free: int, batch_size: int = 32) -> Dict[str, Any]:
  """Agreement figures of a cascade with a template on :func:`held_out_sets`: per set,
  ``holds_faces``, ``count``, the share ``below_threshold`` of the cascade's ``min_agreement``
  and percentiles (:func:`_figures`); the AFLW2000-3D faces also by annotated |yaw|
  (:data:`YAW_BINS`, the last bin taking 90 degrees and over).

  Raises:
    ValueError: the cascade has no descriptor template.
  """
  from dff_jax.alignment import runner  # pylint: disable=g-import-not-at-top
  spec = runner.resolve_aligner(cascade_path, None, None, None)
  aligner = runner.load_aligner(spec, cache=False)
  if aligner.params.descriptor_template is None:
    raise ValueError(f"{spec.cascade_path} has no descriptor template: fit one with "
                     "python -m experiments.fit_agreement")
  template = np.asarray(aligner.params.descriptor_template)
  threshold = float(aligner.meta["agreement"]["min_agreement"])
  sets, yaws = held_out_sets(aligner.channels == 1, data_dir, aflw_dir, num_face_free)
  out = dict(cascade=str(spec.cascade_path), min_agreement=threshold)
  for name, (faces, holds_faces) in sets.items():
    values = agreements(_collect_features(aligner, faces, batch_size), template)
    out[name] = dict(holds_faces=bool(holds_faces), **_figures(values, threshold))
    if name == AFLW_SET:
      for low, high in YAW_BINS:
        inside = (yaws >= low) & ((yaws < high) | (high == YAW_BINS[-1][1]))
        out[f"{name}_yaw_{low}_{high}"] = dict(holds_faces=True,
                                               **_figures(values[inside], threshold))
  return out
