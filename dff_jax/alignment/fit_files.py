r"""The files of ``python -m experiments.fit_landmarks``: fit pose, identity and expression of a
face model to one file of 68 landmarks, write its JSON document (and overlay).

:func:`fit_landmarks_file` writes ``DIR/<stem>.json``: ``landmarks_px`` (the 68 fitted
landmarks reprojected, ``[68, 2]`` image (x, y) pixels, pixel (i, j) centred at (j + 0.5,
i + 0.5)), ``pose`` (``yaw_deg``, ``pitch_deg``, ``roll_deg`` in our Euler convention
``R = Rz(roll) Ry(yaw) Rx(pitch)``, ``scale`` in pixels per mm, ``translation_px``),
``shape_coefficients``, ``expression_coefficients``, ``landmark_vertex_ids`` and the reprojection
``nme_inter_ocular``; with an image also ``DIR/<stem>_overlay.png`` (input landmarks green,
fitted red). Files appear atomically (temp file + rename). The helpers (:func:`load_model`,
:func:`draw_landmarks`, :func:`fit_result_document`) also serve the demo and the face-model
comparison.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from dff_jax import image_io
from dff_jax.file_io import write_json_atomic

INPUT_COLOUR = (40, 220, 40)
FITTED_COLOUR = (235, 40, 40)
# The iBUG-68 outline polylines (jaw, brows, nose bridge, nostrils, eyes, lips; 0-based).
OUTLINE = [range(0, 17), range(17, 22), range(22, 27), range(27, 31), range(31, 36),
           list(range(36, 42)) + [36], list(range(42, 48)) + [42],
           list(range(48, 60)) + [48], list(range(60, 68)) + [60]]


def load_model(spec: str):
  """``dff_jax.face_model.load_face_model(spec)``.

  Note: while the embedded default asset is not built yet, ``"default"`` falls back to the ICT
  model in ../shared (with a note on stderr).
  """
  from dff_jax.face_model import load_face_model  # pylint: disable=g-import-not-at-top
  try:
    return load_face_model(spec)
  except FileNotFoundError:
    if spec != "default":
      raise
    print("note: embedded default face model missing; using ../shared ICT model",
          file=sys.stderr)
    return load_face_model("ict")


def draw_landmarks(image: np.ndarray, landmarks_px: np.ndarray, colour, radius: float) -> None:
  """Draws ``[68, 2]`` landmarks (image (x, y) pixels) as dots and the iBUG outline polylines
  into ``image`` ``[H, W, 3]`` uint8, in place."""
  from data_pipeline import draw  # pylint: disable=g-import-not-at-top
  for line in OUTLINE:
    line = list(line)
    for a, b in zip(line[:-1], line[1:]):
      draw.draw_line(image, landmarks_px[a], landmarks_px[b], colour)
  for point in landmarks_px:
    draw.draw_dot(image, point, colour, radius)


def fit_result_document(result, input_landmarks_px: np.ndarray, model_name: str,
                        contour: str) -> Dict[str, Any]:
  """JSON-ready dict of one :class:`dff_jax.alignment.FitResult` (unbatched)."""
  from dff_jax import metrics  # pylint: disable=g-import-not-at-top
  fitted = np.asarray(result.landmarks_px, np.float64)
  nme = float(metrics.nme(fitted, np.asarray(input_landmarks_px, np.float64), "inter_ocular"))
  return {
      "landmarks_px": np.round(fitted, 3).tolist(),
      "pose": {
          "yaw_deg": float(np.degrees(result.yaw_rad)),
          "pitch_deg": float(np.degrees(result.pitch_rad)),
          "roll_deg": float(np.degrees(result.roll_rad)),
          "scale": float(result.scale),
          "translation_px": np.asarray(result.translation_px, np.float64).tolist(),
      },
      "shape_coefficients": np.asarray(result.shape_coefficients, np.float64).tolist(),
      "expression_coefficients": np.asarray(result.expression_coefficients, np.float64).tolist(),
      "landmark_vertex_ids": np.asarray(result.landmark_vertex_ids).astype(int).tolist(),
      "nme_inter_ocular": nme,
      "face_model": model_name,
      "contour": contour,
  }


def fit_landmarks_file(landmarks_path: str | os.PathLike, out_dir: str | os.PathLike,
                       image_path: Optional[str | os.PathLike] = None,
                       face_model: str = "default", contour: Optional[str] = None,
                       regularisation: Optional[float] = None,
                       num_iterations: Optional[int] = None) -> Dict[str, Any]:
  """Reads landmarks (and an image), fits, writes ``<stem>.json`` (and ``<stem>_overlay.png``).

  Args:
    landmarks_path: ``.pts`` / ``.ljson`` / ``.json`` / ``.npy`` / ``.mat`` with 68 points
      (``data_pipeline.readers.read_landmarks``).
    out_dir: output folder (created).
    image_path: optional image for the overlay.
    face_model: ``load_face_model`` spec.
    contour, regularisation, num_iterations: fit options (defaults of
      :func:`dff_jax.alignment.fit_landmarks`, except ``contour="fixed"`` for AFLW2000-3D
      ``.mat`` files, whose jaw points follow the 3D jaw line).

  Returns:
    the JSON document written.

  Raises:
    FileNotFoundError, ValueError: missing or bad input (nothing is written then).
  """
  landmarks_path = Path(landmarks_path)
  if not landmarks_path.is_file():
    raise FileNotFoundError(f"landmark file {landmarks_path} does not exist")
  if image_path and not Path(image_path).is_file():
    raise FileNotFoundError(f"image {image_path} does not exist")
  from data_pipeline import readers  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import fitting  # pylint: disable=g-import-not-at-top
  landmarks = np.asarray(readers.read_landmarks(landmarks_path), np.float32)
  image = image_io.read_image(Path(image_path)) if image_path else None
  model = load_model(face_model)
  if contour is None:  # AFLW2000-3D .mat points are projected 3D landmarks: fixed jaw line.
    contour = "fixed" if landmarks_path.suffix.lower() == ".mat" else fitting.DEFAULT_CONTOUR
  options = dict(contour=contour,
                 regularisation=(fitting.DEFAULT_REGULARISATION if regularisation is None
                                 else regularisation),
                 num_iterations=num_iterations or fitting.DEFAULT_NUM_ITERATIONS)
  result = fitting.fit_landmarks(model, landmarks, **options)
  document = fit_result_document(result, landmarks, model.name, options["contour"])
  out_dir = Path(out_dir)
  stem = landmarks_path.stem
  if image is not None:
    overlay = image.copy()
    radius = max(1.5, 0.004 * max(image.shape[:2]))
    draw_landmarks(overlay, landmarks, INPUT_COLOUR, radius)
    draw_landmarks(overlay, np.asarray(result.landmarks_px), FITTED_COLOUR, radius)
    out_dir.mkdir(parents=True, exist_ok=True)
    image_io.write_png_atomic(out_dir / f"{stem}_overlay.png", overlay)
  write_json_atomic(out_dir / f"{stem}.json", document)
  return document
