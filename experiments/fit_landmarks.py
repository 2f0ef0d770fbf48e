r"""Fits pose, identity and expression of a face model to one file of 68 landmarks.

  python -m experiments.fit_landmarks --landmarks=face.pts [--image=face.jpg] \
      [--face_model=default|sfm|ict|PATH.npz] [--contour=nearest|silhouette|fixed] --out_dir=DIR

Writes ``DIR/<stem>.json``: ``landmarks_px`` (the 68 fitted landmarks reprojected, ``[68, 2]``
image (x, y) pixels, pixel (i, j) centred at (j + 0.5, i + 0.5)), ``pose`` (``yaw_deg``,
``pitch_deg``, ``roll_deg`` in our Euler convention ``R = Rz(roll) Ry(yaw) Rx(pitch)``, ``scale``
in pixels per mm, ``translation_px``), ``shape_coefficients``, ``expression_coefficients``,
``landmark_vertex_ids`` and the reprojection ``nme_inter_ocular``; with ``--image`` also
``DIR/<stem>_overlay.png`` (input landmarks green, fitted red). Files appear atomically (temp file
+ rename). Bad input: one line on stderr, exit status 1.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional

from absl import app
from absl import flags
import numpy as np

from dff_jax.file_io import write_bytes_atomic
from dff_jax.file_io import write_json_atomic

FLAGS = flags.FLAGS

INPUT_COLOUR = (40, 220, 40)
FITTED_COLOUR = (235, 40, 40)


# ----------------------------------------------------------------------------------------------
# Small helpers shared by the fitting commands (demo, compare_face_models)
# ----------------------------------------------------------------------------------------------


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


def write_png_atomic(path: Path, image: np.ndarray) -> None:
  """``[H, W, 3]`` uint8 image to PNG, atomically (``dff_jax.image_io`` when present)."""
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  try:
    from dff_jax import image_io  # pylint: disable=g-import-not-at-top
    image_io.write_png_atomic(path, image)
    return
  except (ImportError, AttributeError):
    pass
  import io  # pylint: disable=g-import-not-at-top
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  iio.imwrite(buffer, np.asarray(image, np.uint8), extension=".png")
  write_bytes_atomic(path, buffer.getvalue())


def read_image_rgb(path: Path) -> np.ndarray:
  """``[H, W, 3]`` uint8 RGB image (``dff_jax.image_io.read_image`` when present)."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"image {path} does not exist")
  try:
    from dff_jax import image_io  # pylint: disable=g-import-not-at-top
    image = image_io.read_image(path)
  except (ImportError, AttributeError):
    import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
    try:
      image = iio.imread(path)
    except Exception as error:  # imageio raises many types for bad files.
      raise ValueError(f"image {path} is not readable ({type(error).__name__}: {error})") from None
  image = np.asarray(image)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  image = image[..., :3]
  if image.dtype != np.uint8:
    image = np.clip(image * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
  return image


def draw_landmarks(image: np.ndarray, landmarks_px: np.ndarray, colour, radius: float) -> None:
  """Draws ``[68, 2]`` landmarks as dots and the iBUG outline polylines, in place."""
  from data_pipeline import draw  # pylint: disable=g-import-not-at-top
  polylines = [range(0, 17), range(17, 22), range(22, 27), range(27, 31), range(31, 36),
               list(range(36, 42)) + [36], list(range(42, 48)) + [42],
               list(range(48, 60)) + [48], list(range(60, 68)) + [60]]
  for line in polylines:
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


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------


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
  image = read_image_rgb(Path(image_path)) if image_path else None
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
    write_png_atomic(out_dir / f"{stem}_overlay.png", overlay)
  write_json_atomic(out_dir / f"{stem}.json", document)
  return document


def define_flags() -> None:
  """Defines the command's flags (only when run as a program, so modules can import each other)."""
  flags.DEFINE_string("landmarks", None, "68-landmark file (.pts, .ljson, .json, .npy, .mat).")
  flags.DEFINE_string("image", None, "Optional image; writes <stem>_overlay.png.")
  flags.DEFINE_string("face_model", "default", "'default', 'sfm', 'ict' or a face model path.")
  flags.DEFINE_enum("contour", None, ["nearest", "silhouette", "fixed"],
                    "Jaw correspondences (default: 'fixed' for AFLW2000-3D .mat files, whose "
                    "points are projected 3D landmarks, else 'nearest'); 'nearest' / "
                    "'silhouette' for annotations on the visible outline.")
  flags.DEFINE_float("regularisation", None, "Shape prior weight lambda (mm^2).")
  flags.DEFINE_integer("num_iterations", None, "Pose/shape alternations.")
  flags.DEFINE_string("out_dir", None, "Output folder.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.landmarks or not FLAGS.out_dir:
    sys.exit("fit_landmarks: error: --landmarks and --out_dir are required")
  try:
    document = fit_landmarks_file(FLAGS.landmarks, FLAGS.out_dir, FLAGS.image, FLAGS.face_model,
                                  FLAGS.contour, FLAGS.regularisation, FLAGS.num_iterations)
  except (OSError, ValueError) as error:
    from dff_jax.file_io import error_line  # pylint: disable=g-import-not-at-top
    sys.exit(f"fit_landmarks: error: {error_line(error)}")
  pose = document["pose"]
  print(json.dumps({"out_dir": str(FLAGS.out_dir), "nme_inter_ocular": document["nme_inter_ocular"],
                    "yaw_deg": pose["yaw_deg"], "pitch_deg": pose["pitch_deg"],
                    "roll_deg": pose["roll_deg"], "scale": pose["scale"]}))


if __name__ == "__main__":
  define_flags()
  app.run(main)
