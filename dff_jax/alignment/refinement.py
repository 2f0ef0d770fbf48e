"""Output refinement: one linear step after the cascade that moves the output points freely.

Every stage of the cascade ends in a fit of the face model, so its outputs are a projection of
the model's 68 landmark vertices (moved by the landmark offsets and the output calibration).
Annotators place points the model cannot reach exactly: a fit of the model to the annotated
points themselves leaves an inter-ocular NME of about 0.02 on the faces68 training faces (section
14 of WORKSPACE.md). The refinement is a ridge regression, as one stage of the paper's cascade
(SDM) but without the model fit after it: the features the last stage read (the descriptors at
the landmarks it started from, :func:`dff_jax.alignment.cascade.run_stages`; no descriptor
query of its own) map linearly to a step ``[68, 2]`` (crop pixels) that
:func:`dff_jax.alignment.cascade.refine_state` adds to ``landmarks_px``; it is fitted to the
residual of the output points (:func:`dff_jax.alignment.cascade.output_points`: the last state
moved by the output calibration). ``landmarks_3d_px`` (the model's projection, AFLW2000-3D's
convention), the pose and the shape stay the model's.

:func:`refine_cascade` fits it on annotated faces of a faces68-layout split (default: 300-W's
annotators, HELEN train and AFW, each face also mirrored left-right), aligned from their landmark
boxes, and on renders of the pipeline (:func:`synthetic_faces`), aligned from jittered boxes;
the ridge lambda is the candidate with the least error on every ``held_out_every``-th face
(:func:`dff_jax.alignment.regression.select_regularisation`), rescaled to the full count for the
final solve. ``python -m experiments.refine_outputs`` is the command.

Frames: image pixels ``(x, y)``, x right, y down, pixel centres at ``j + 0.5``; crop pixels of
the cascade's ``crop_size`` crop (:mod:`dff_jax.geometry`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from dff_jax.alignment import regression

# Ridge lambdas tried (the features are 68 unit-length descriptors and a constant 1).
REGULARISATION_CANDIDATES = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
# Pipeline seed of the renders a refinement is fitted on, used by no other run (the cascades'
# training 20 000 / 30 000, eval_alignment's held-out renders 40 000, the fine-tunings 60 000 and
# 90 000 to 230 000).
SYNTHETIC_SEED = 240_000


def mirror_face(image: np.ndarray, landmarks_px: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """The image ``[H, W, C]`` mirrored left-right and its 68 points ``[68, 2]`` (image pixels):
  ``x -> W - x``, reordered so that point ``i`` is again iBUG-68 point ``i``
  (:data:`dff_jax.face_model.MIRROR_LANDMARKS`)."""
  from dff_jax.face_model import MIRROR_LANDMARKS  # pylint: disable=g-import-not-at-top
  width = image.shape[1]
  points = np.asarray(landmarks_px, np.float64)[np.asarray(MIRROR_LANDMARKS)]
  points = np.stack([width - points[:, 0], points[:, 1]], axis=-1)
  return np.ascontiguousarray(image[:, ::-1]), points


def fit_weights(features: np.ndarray, targets: np.ndarray, held_out: np.ndarray,
                candidates: Sequence[float] = REGULARISATION_CANDIDATES
                ) -> Tuple[np.ndarray, float, np.ndarray]:
  """Ridge weights ``[F, T]`` float32 of ``features [N, F] -> targets [N, T]``.

  Args:
    features, targets: one row per face.
    held_out: ``[N]`` bool, the rows that choose lambda (fitted on the others).
    candidates: lambdas (> 0) to try.

  Returns:
    ``(weights, lambda, held-out mean squared error per row for each candidate)``; the weights
    are solved on every row with the chosen lambda times ``N / (N - held-out rows)``.

  Raises:
    ValueError: no held-out row or no fitting row.
  """
  held_out = np.asarray(held_out, bool)
  if held_out.all() or not held_out.any():
    raise ValueError(f"fit_weights: need both fitting and held-out rows, got "
                     f"{int(held_out.sum())} held out of {len(held_out)}")
  features = np.asarray(features, np.float64)
  targets = np.asarray(targets, np.float64)
  parts = []
  for rows in (~held_out, held_out):
    stats = regression.Statistics.zeros(features.shape[1], targets.shape[1])
    stats.add(features[rows], targets[rows], np.ones(int(rows.sum())))
    parts.append(stats)
  best, errors = regression.select_regularisation(parts[0], parts[1], candidates)
  total = parts[0] + parts[1]
  # The penalty is relative to the data term (as regression._choose rescales a stage's).
  regularisation = best * total.count / parts[0].count
  return regression.ridge_solve(total.gram, total.cross, regularisation), best, errors


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
  for start in range(0, len(items), size):
    yield items[start:start + size]


def collect(aligner: Any, faces: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]],
            batch_size: int = 32) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The aligner (without any output refinement) on annotated faces from given boxes: the
  features its last stage read and its output points.

  Args:
    aligner: a :class:`dff_jax.alignment.runner.CompiledCascade`.
    faces: ``(image [H, W, C] uint8 (RGB or grey), landmarks_px [68, 2], box [4])`` triples,
      image pixels: the annotation (in the cascade's convention) and the face box it is
      aligned from (one pass).
    batch_size: faces per jitted call (the last batch is padded).

  Returns:
    ``(features [N, F] float32, output points [N, 68, 2] float32, annotated points
    [N, 68, 2] float64)``, the points in each face's crop pixels.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from dff_jax import descriptor_fields  # pylint: disable=g-import-not-at-top
  from dff_jax import geometry  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import cascade  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import runner  # pylint: disable=g-import-not-at-top
  describer, config = aligner.describer, aligner.config
  params = aligner.params.replace(refine_weights=None)

  @jax.jit
  def run(describer_params, alignment_model, params, work_images):
    crops = cascade.working_images_to_crops(work_images, config.crop_size)
    fields = describer.apply(describer_params, crops)
    states, _, features, _ = descriptor_fields.vmap_faces(
        lambda field: cascade.run_stages(alignment_model, params, field, config))(fields)
    return features, cascade.output_points(alignment_model, states)

  features, points, annotated = [], [], []
  for part in _batches(faces, batch_size):
    works = []
    for image, landmarks, box in part:
      landmarks = np.asarray(landmarks, np.float64)
      work, crop_box, _ = runner.working_crop(image, np.asarray(box, np.float64), config,
                                              aligner.work_size, channels=aligner.channels)
      works.append(work)
      annotated.append(np.asarray(geometry.image_to_crop(landmarks, crop_box, config.crop_size),
                                  np.float64))
    count = len(works)
    works = np.stack(works + [works[-1]] * (batch_size - count))
    f, p = run(describer.params, aligner.alignment_model, params, works)
    features.append(np.asarray(f)[:count])
    points.append(np.asarray(p)[:count])
  return np.concatenate(features), np.concatenate(points), np.stack(annotated)


def synthetic_faces(aligner: Any, num_faces: int, seed: int
                    ) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """``num_faces`` renders of the pipeline (seed ``seed``) as ``eval_alignment
  --dataset=synthetic`` renders them for this cascade (its training ``data`` settings and box
  jitter, every yaw; :func:`dff_jax.evaluation.alignment.cascade_synthetic_set`), as ``(image,
  labels, box)`` triples: the labels are the face model's landmark vertices moved into the
  cascade's convention (:func:`dff_jax.alignment.cascade.model_labels_in_convention`), as the
  fine-tuning and ``eval_alignment --dataset=synthetic`` score renders."""
  from dff_jax.alignment import cascade  # pylint: disable=g-import-not-at-top
  from dff_jax.evaluation import alignment as evaluation  # pylint: disable=g-import-not-at-top
  eval_set = evaluation.cascade_synthetic_set(aligner.meta, aligner.config.crop_size,
                                              aligner.spec.face_model, num_faces, seed)
  faces = []
  for job in eval_set.jobs:
    loaded = job.load()
    labels = np.asarray(cascade.model_labels_in_convention(
        aligner.alignment_model, loaded.truth["landmarks_px"], loaded.truth["model_pose"], True),
        np.float64)
    faces.append((loaded.image, labels, np.asarray(loaded.box, np.float64)))
  return faces


def refine_cascade(cascade_path: Optional[str], out_path: str | Path, data_dir: str,
                   split: str = "train", sources: Sequence[str] = ("helen-train", "afw"),
                   checkpoint: Optional[str] = None, batch_size: int = 32, mirror: bool = True,
                   held_out_every: int = 5, num_synthetic: int = 0,
                   synthetic_seed: int = SYNTHETIC_SEED,
                   candidates: Sequence[float] = REGULARISATION_CANDIDATES) -> Dict[str, Any]:
  """Writes ``out_path``: the cascade file ``cascade_path`` (``None``: the default pair) with an
  output refinement fitted on the faces of ``sources`` in a faces68-layout split, from their
  landmark boxes (photos decoded as ``align`` decodes them; ``mirror``: each face also mirrored
  left-right), and on ``num_synthetic`` renders (:func:`synthetic_faces`). A refinement the file
  already carries is replaced (the new one is fitted to the outputs without it).

  The new file names the same encoder (its ``descriptor_source``: an absolute path to the
  bundle), so it loads from anywhere; everything else (regressors, settings, meta) is copied.
  ``checkpoint`` may name another encoder than the cascade's (refused where a cascade only
  aligns, :func:`dff_jax.alignment.runner.resolve_aligner`): the weights are fitted to its descriptors, and the new file names
  it.

  Returns:
    the report stored in the new file's meta as ``output_refinement``: ``sources``, ``split``,
    ``faces`` (annotated faces; twice as many rows when mirrored), ``mirrored``,
    ``synthetic_faces`` and ``synthetic_seed``, ``rows`` (the fit's rows: ``photos``,
    ``renders`` and the ``held_out`` ones), ``held_out_every``, ``regularisation`` (the
    chosen candidate), ``candidates`` with their held-out mean squared errors (crop pixels
    squared, summed over the 136 values), and per part (``photos``: inter-ocular NME;
    ``renders``: NME by the labels' bounding box) ``nme_before`` / ``nme_after``, the mean over
    its rows (a training-set figure).

  Raises:
    FileNotFoundError / ValueError: missing data or cascade, no face of ``sources``, too few
      faces to hold some out.
  """
  from data_pipeline import readers  # pylint: disable=g-import-not-at-top
  from dff_jax import geometry  # pylint: disable=g-import-not-at-top
  from dff_jax import image_io  # pylint: disable=g-import-not-at-top
  from dff_jax import metrics  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import runner  # pylint: disable=g-import-not-at-top
  spec = runner.resolve_aligner(cascade_path, None, checkpoint, None, other_encoder=True)
  aligner = runner.load_aligner(spec, cache=False)
  entries = readers.read_faces68(data_dir, split)
  present = sorted({e.source for e in entries})
  entries = [e for e in entries if e.source in set(sources)]
  if not entries:
    raise ValueError(f"no face of the sources {list(sources)} in the {split} split of "
                     f"{data_dir}; its sources are {present}")
  faces, groups = [], []
  for index, entry in enumerate(entries):
    image = image_io.read_image(entry.image_path, grey=aligner.channels == 1)
    landmarks = np.asarray(entry.landmarks_px, np.float64)
    views = [(image, landmarks)] + ([mirror_face(image, landmarks)] if mirror else [])
    for view_image, view_landmarks in views:
      faces.append((view_image, view_landmarks,
                    np.asarray(geometry.landmark_box(view_landmarks), np.float64)))
      groups.append(index)
  num_photo_rows = len(faces)
  renders = synthetic_faces(aligner, int(num_synthetic), int(synthetic_seed))
  faces += renders
  groups += [len(entries) + i for i in range(len(renders))]
  held_out = np.asarray(groups) % int(held_out_every) == 0
  if held_out.all() or not held_out.any():
    raise ValueError(f"refine: {len(entries)} faces are too few to hold out every "
                     f"{held_out_every}th; use more faces or another --held_out_every")
  features, points, annotated = collect(aligner, faces, batch_size)
  targets = (annotated - points).reshape(len(faces), -1)
  weights, best, errors = fit_weights(features, targets, held_out, candidates)
  moved = points + (features.astype(np.float64) @ weights).reshape(points.shape)

  def mean_nme(predicted, rows, normaliser):
    return float(np.mean([metrics.nme(a, b, normaliser)
                          for a, b in zip(predicted[rows], annotated[rows])]))
  parts = dict(photos=(slice(0, num_photo_rows), "inter_ocular"),
               renders=(slice(num_photo_rows, None), "bbox"))
  report = dict(sources=sorted(set(sources)), split=split, data_dir=str(data_dir),
                faces=len(entries), mirrored=bool(mirror), synthetic_faces=len(renders),
                rows=dict(photos=num_photo_rows, renders=len(renders),
                          held_out=int(held_out.sum())),
                synthetic_seed=int(synthetic_seed), held_out_every=int(held_out_every),
                regularisation=float(best),
                candidates={f"{c:g}": float(e) for c, e in zip(candidates, errors)},
                **{f"{part}_nme_{when}": mean_nme(values, rows, normaliser)
                   for part, (rows, normaliser) in parts.items() if part == "photos" or renders
                   for when, values in (("before", points), ("after", moved))},
                refined_from=str(spec.cascade_path))
  aligner.save_derived(out_path, aligner.params.replace(refine_weights=weights),
                       output_refinement=report)
  return report
