"""Cross-person descriptor matching on real annotated photos (no correspondence labels needed).

For every ordered pair ``(A, B)`` of faces, the descriptor at each of A's 51 inner landmarks
(iBUG 17-67: brows, nose, eyes, mouth) is matched to the most similar descriptor (cosine) among
**all pixels of B's crop**; the error is the distance between the matched pixel centre and B's
annotated landmark of the same index, normalised by B's outer-eye-corner distance (landmarks 36,
45). Different people, expressions, lighting and poses: a descriptor that tells facial regions
apart finds the same landmark; one that does not lands anywhere in the crop. The reference
"position guess" predicts A's landmark at the same relative position in B's crop (what a
descriptor that only encodes position would do).

Crops: each face's crop is the aligner's working frame: ``geometry.square_box(landmark box,
box_scale)`` resampled to ``crop_size`` pixels (bilinear, black outside the photo). Frames:
image points ``(x, y)`` in pixels, pixel ``(i, j)`` centred at ``(j + 0.5, i + 0.5)``.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dff_jax import descriptor_fields
from dff_jax import geometry
from dff_jax import matching
from dff_jax import sampling

INNER = slice(17, 68)
EYE_CORNERS = (36, 45)


def face_crops(images: Sequence[np.ndarray], landmarks_px: np.ndarray, crop_size: int = 128,
               box_scale: float = 1.25) -> Dict[str, np.ndarray]:
  """Crops of faces of any image sizes.

  Args:
    images: ``N`` images ``[H_n, W_n, 3]`` uint8.
    landmarks_px: ``[N, 68, 2]`` annotated points, image pixels.

  Returns:
    ``crops [N, S, S, 3]`` float32 in [0, 255], ``landmarks [N, 68, 2]`` crop pixels,
    ``crop_boxes [N, 4]`` image pixels.
  """
  landmarks_px = np.asarray(landmarks_px, np.float32)
  boxes = np.concatenate([landmarks_px.min(1), landmarks_px.max(1)], axis=1)
  crop_boxes = np.asarray(geometry.square_box(boxes, box_scale), np.float32)
  side = max(max(im.shape[0], im.shape[1]) for im in images)
  crop = jax.jit(functools.partial(sampling.crop_image, crop_size=crop_size))
  crops = []
  for image, box in zip(images, crop_boxes):
    padded = np.zeros((side, side, 3), np.uint8)  # one shape: compiles once
    padded[:image.shape[0], :image.shape[1]] = image
    # Pixels of the padding lie outside the photo: mask them as crop_image does outside.
    inside = np.zeros((side, side, 1), np.float32)
    inside[:image.shape[0], :image.shape[1]] = 1.0
    crops.append(np.asarray(crop(jnp.asarray(padded, jnp.float32) * inside, box)))
  landmarks = np.asarray(geometry.image_to_crop(landmarks_px, crop_boxes, crop_size), np.float32)
  return dict(crops=np.stack(crops), landmarks=landmarks, crop_boxes=crop_boxes)


def describe(describer: Callable, crops: np.ndarray, batch_size: int = 16) -> np.ndarray:
  """``[N, S, S, D]`` float32 descriptor maps of ``crops [N, S, S, 3]`` (last batch padded)."""
  # Parameters closed over; a point field is read at every pixel centre.
  run = jax.jit(lambda crops: descriptor_fields.to_dense_batch(describer(crops)))
  out = []
  for start in range(0, len(crops), batch_size):
    part = crops[start:start + batch_size]
    count = len(part)
    if count < batch_size:
      part = np.concatenate([part, np.repeat(part[-1:], batch_size - count, 0)])
    out.append(np.asarray(run(jnp.asarray(part)), np.float32)[:count])
  return np.concatenate(out)


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _errors_against(queries: jax.Array, map_b: jax.Array, landmarks_b: jax.Array,
                    chunk_size: int) -> jax.Array:
  """``[N, 51]`` pixel errors of every face's inner-landmark descriptors ``queries [N, 51, D]``
  matched over the whole map ``map_b [S, S, D]`` against ``landmarks_b [51, 2]``."""
  n, k, d = queries.shape
  mask = jnp.ones(map_b.shape[:2], bool)
  matched, _ = matching.match_descriptors(queries.reshape(n * k, d), map_b, mask,
                                          chunk_size=chunk_size)
  return jnp.linalg.norm(matched.reshape(n, k, 2) - landmarks_b[None], axis=-1)


def cross_person_errors(maps: np.ndarray, landmarks: np.ndarray,
                        chunk_size: int = 2048) -> np.ndarray:
  """``[N, N]`` mean inner-landmark error of A's descriptors found in B, normalised by B's
  outer-eye-corner distance (``errors[a, b]``; the diagonal is NaN).

  Args:
    maps: ``[N, S, S, D]`` descriptor maps of the crops.
    landmarks: ``[N, 68, 2]`` annotated points in crop pixels.
  """
  maps = jnp.asarray(maps, jnp.float32)
  landmarks = np.asarray(landmarks, np.float32)
  queries = jax.vmap(lambda m, p: matching.sample_descriptors(m, p)[0])(
      maps, jnp.asarray(landmarks[:, INNER]))
  inter_ocular = np.linalg.norm(landmarks[:, EYE_CORNERS[0]] - landmarks[:, EYE_CORNERS[1]],
                                axis=-1)
  n = len(landmarks)
  errors = np.zeros((n, n), np.float64)
  for b in range(n):
    pixel = np.asarray(_errors_against(queries, maps[b], jnp.asarray(landmarks[b, INNER]),
                                       chunk_size))
    errors[:, b] = pixel.mean(axis=1) / inter_ocular[b]
  np.fill_diagonal(errors, np.nan)
  return errors


def position_guess_errors(landmarks: np.ndarray) -> np.ndarray:
  """``[N, N]`` the same measure for the guess "A's landmark at the same crop position in B"."""
  landmarks = np.asarray(landmarks, np.float64)
  inner = landmarks[:, INNER]
  inter_ocular = np.linalg.norm(landmarks[:, EYE_CORNERS[0]] - landmarks[:, EYE_CORNERS[1]],
                                axis=-1)
  distance = np.linalg.norm(inner[:, None] - inner[None, :], axis=-1).mean(-1)
  errors = distance / inter_ocular[None, :]
  np.fill_diagonal(errors, np.nan)
  return errors


def summarise(errors: np.ndarray) -> Dict[str, float]:
  """Mean and median over the off-diagonal pairs, and the fraction of pairs under 0.1 / 0.2."""
  values = errors[np.isfinite(errors)]
  return dict(mean=float(values.mean()), median=float(np.median(values)),
              fraction_below_0_1=float(np.mean(values < 0.1)),
              fraction_below_0_2=float(np.mean(values < 0.2)), num_pairs=int(values.size))


def faces68_entries(data_dir: str, split: str, num_faces: int | None = None) -> list:
  """The faces a faces68 evaluation reads: the split's (``data_pipeline.readers.read_faces68``),
  the first ``num_faces`` (``None``: all). Cheap (the json and the image files' presence only):
  run before any model is loaded.

  Raises:
    ValueError: ``num_faces`` below 2, or fewer than 2 faces (every figure is over pairs of
      different faces); a missing folder, split or image (the reader's message).
  """
  from data_pipeline import readers  # pylint: disable=g-import-not-at-top
  if num_faces is not None and int(num_faces) < 2:
    raise ValueError(f"--num_faces must be >= 2 (every figure is over pairs of different "
                     f"faces), got {num_faces}; leave it out for the whole split")
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(f"--data_dir={data_dir}: no such folder; give a faces68-layout "
                            "folder (images/ and <split>.json)")
  entries = readers.read_faces68(data_dir, split)
  if num_faces is not None:
    entries = entries[:int(num_faces)]
  if len(entries) < 2:
    raise ValueError(f"the {split} split of {data_dir} has {len(entries)} face(s); the "
                     "matching figures need at least 2")
  return entries


def evaluate_faces68(data_dir: str, split: str, describers: Dict[str, Callable],
                     sift_cells: Sequence[int], num_faces: int | None = None,
                     crop_size: int = 128, box_scale: float = 1.25,
                     log: Callable[[str], None] = print,
                     entries: Sequence[object] | None = None) -> Dict[str, object]:
  """The real-photo matching figures of each method on a faces68-layout split.

  Args:
    data_dir, split: the faces (``data_pipeline.readers.read_faces68``).
    describers: ``name -> crops [B, S, S, 3] float32 in [0, 255] -> [B, S, S, D]`` (e.g. DFF).
    sift_cells: dense SIFT cell sizes (px, even, >= 2) to try; the best is reported as
      ``dense_sift``.
    num_faces: the first N faces only (at least 2; ``None``: all).
    entries: the faces already read (:func:`faces68_entries`); ``None``: read here.

  Returns:
    the summary: per method ``mean``, ``median``, fractions below 0.1 / 0.2, the dense SIFT
    figure of every cell size, the position guess, and the ratios the targets read.

  Raises:
    ValueError: bad ``num_faces`` / ``sift_cells`` or fewer than 2 faces (before any describing).
  """
  from dff_jax import image_io  # pylint: disable=g-import-not-at-top
  from dff_jax import sift  # pylint: disable=g-import-not-at-top
  from dff_jax.evaluation import matching as matching_eval  # pylint: disable=g-import-not-at-top
  sift_cells = [matching_eval.check_sift_cell(c) for c in sift_cells]
  if entries is None:
    entries = faces68_entries(data_dir, split, num_faces)
  images = [image_io.read_image(e.image_path) for e in entries]
  faces = face_crops(images, np.stack([e.landmarks_px for e in entries]), crop_size, box_scale)
  results: Dict[str, object] = {}
  for name, describer in describers.items():
    log(f"describing {len(entries)} crops with {name}")
    results[name] = summarise(cross_person_errors(describe(describer, faces["crops"]),
                                                  faces["landmarks"]))
    log(f"{name}: {results[name]}")
  by_cell = {}
  for cell in sift_cells:
    maps = describe(functools.partial(sift.dense_sift, cell_px=int(cell)), faces["crops"])
    by_cell[str(cell)] = summarise(cross_person_errors(maps, faces["landmarks"]))
    log(f"dense SIFT cell {cell} px: {by_cell[str(cell)]}")
  if by_cell:
    best = min(by_cell, key=lambda c: by_cell[c]["mean"])
    results["dense_sift"] = dict(by_cell[best], cell_px=int(best))
  results["position_guess"] = summarise(position_guess_errors(faces["landmarks"]))
  summary = dict(
      dataset="faces68", split=split, data_dir=str(data_dir), num_faces=len(entries),
      protocol=("for every ordered pair (A, B) of faces: A's descriptors at its 51 inner "
                "landmarks (17-67) matched by cosine over every pixel of B's crop; error = "
                "distance to B's landmark / B's outer-eye-corner distance (36, 45); mean over "
                "landmarks, then over pairs"),
      crop=dict(crop_size=crop_size, box_scale=box_scale,
                box="square box of the annotated landmark box"),
      methods=results, dense_sift_by_cell=by_cell)
  if "dff" in results and "dense_sift" in results:
    summary["dff_over_dense_sift"] = results["dff"]["mean"] / results["dense_sift"]["mean"]
    summary["dff_over_position_guess"] = (results["dff"]["mean"]
                                          / results["position_guess"]["mean"])
  return summary
