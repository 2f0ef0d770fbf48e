"""dlib's face detector and 68-point predictor as an optional baseline (never a requirement).

The evaluation compares our aligner with dlib on the same photos and boxes: dlib's HOG face
detector gives the boxes of the "detector boxes" protocol (``eval_alignment --boxes=dlib``), and
dlib's ``shape_predictor`` (trained on 300-W, the outline convention) is scored beside our
methods on the same faces. Neither package is in ``requirements.txt``: install the optional
``requirements-compare.txt`` (``dlib-bin`` and ``face-recognition-models``, whose wheel ships
dlib's 68-point model file ``shape_predictor_68_face_landmarks.dat``). Without them,
:func:`load` raises ``FileNotFoundError`` with that advice.

Frames: dlib's rectangles and parts are integer pixel indices (a rectangle's ``right`` and
``bottom`` are inclusive); ours are continuous image coordinates with pixel ``(i, j)`` centred
at ``(j + 0.5, i + 0.5)``. So a rectangle is the box ``(left, top, right + 1, bottom + 1)`` and a
part ``(x, y)`` is the point ``(x + 0.5, y + 0.5)`` (:func:`rectangle_to_box`,
:func:`box_to_rectangle`).
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any, Optional

import numpy as np

INSTALL_HINT = ("pip install -r requirements-compare.txt (dlib-bin and face-recognition-models; "
                "optional, for comparisons only)")
PREDICTOR_ADVICE = ("pass dlib's 68-point model shape_predictor_68_face_landmarks.dat "
                    "(--dlib_predictor=FILE) or leave it out to use the face_recognition_models "
                    "package's")
# Upsampling of dlib's detector: 1 (the image doubled once) finds faces down to about 40 px, as
# dlib's own examples and the face_recognition package use it.
DETECTOR_UPSAMPLE = 1


def rectangle_to_box(left: int, top: int, right: int, bottom: int) -> np.ndarray:
  """dlib rectangle (inclusive pixel indices) -> box ``[4]`` float32 ``(x0, y0, x1, y1)``."""
  return np.array([left, top, right + 1, bottom + 1], np.float32)


def box_to_rectangle(box) -> tuple:
  """Box ``(x0, y0, x1, y1)`` (image coordinates) -> dlib ``(left, top, right, bottom)``
  integer pixel indices (the inverse of :func:`rectangle_to_box` on integer boxes)."""
  x0, y0, x1, y1 = [float(v) for v in np.asarray(box, np.float64).reshape(4)]
  return (int(round(x0)), int(round(y0)), int(round(x1)) - 1, int(round(y1)) - 1)


def _dlib_image(image: np.ndarray) -> np.ndarray:
  """``[H, W, 3]`` RGB or ``[H, W, 1]`` grey uint8 -> what dlib reads (``[H, W]`` for grey),
  C-contiguous."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  return np.ascontiguousarray(image, np.uint8)


@dataclasses.dataclass
class DlibBaseline:
  """dlib's HOG face detector and 68-point ``shape_predictor`` (thread-safe: one call at a time).

  Attributes:
    predictor_path: the ``shape_predictor`` model file.
    version: ``dlib.__version__``.
  """
  predictor_path: str
  version: str
  _detector: Any = None
  _predictor: Any = None
  _dlib: Any = None
  _lock: Any = dataclasses.field(default_factory=threading.Lock)

  def detect(self, image: np.ndarray, upsample: int = DETECTOR_UPSAMPLE) -> np.ndarray:
    """Face boxes ``[N, 4]`` float32 ``(x0, y0, x1, y1)`` of dlib's HOG detector, image
    pixels, in dlib's order."""
    with self._lock:
      rectangles = self._detector(_dlib_image(image), int(upsample))
    return np.stack([rectangle_to_box(r.left(), r.top(), r.right(), r.bottom())
                     for r in rectangles]) if len(rectangles) else np.zeros((0, 4), np.float32)

  def predict(self, image: np.ndarray, box) -> np.ndarray:
    """dlib's 68 landmarks ``[68, 2]`` float32 (iBUG order, outline jaw) from ``box``
    ``(x0, y0, x1, y1)``, image pixels."""
    rectangle = self._dlib.rectangle(*box_to_rectangle(box))
    with self._lock:
      shape = self._predictor(_dlib_image(image), rectangle)
    return np.array([[p.x + 0.5, p.y + 0.5] for p in shape.parts()], np.float32)

  def num_points(self) -> Optional[int]:
    """The number of points the predictor gives (one prediction on a blank 8 x 8 image), or
    ``None`` where dlib does not say."""
    try:
      with self._lock:
        shape = self._predictor(np.zeros((8, 8), np.uint8), self._dlib.rectangle(0, 0, 7, 7))
      return int(shape.num_parts)
    except (RuntimeError, AttributeError, TypeError):
      return None

  def describe(self) -> dict:
    """JSON-ready description for a summary."""
    return {"dlib_version": self.version, "predictor": Path(self.predictor_path).name,
            "detector": f"dlib.get_frontal_face_detector() (HOG), upsample {DETECTOR_UPSAMPLE}"}


def default_predictor_path() -> Optional[str]:
  """The 68-point model file of the ``face_recognition_models`` package, or ``None``."""
  try:
    import face_recognition_models  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return str(face_recognition_models.pose_predictor_model_location())


def load(predictor_path: Optional[str] = None) -> DlibBaseline:
  """dlib's detector and predictor.

  Args:
    predictor_path: a ``shape_predictor`` model file (default: the one of the
      ``face_recognition_models`` package).

  Raises:
    FileNotFoundError: dlib is not installed, or no model file (the message says what to
      install or pass).
    ValueError: the model file is not a dlib shape-predictor model (:func:`check_68_points`
      checks the number of points).
  """
  try:
    import dlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise FileNotFoundError(f"dlib is not installed: {INSTALL_HINT}") from None
  path = predictor_path or default_predictor_path()
  if path is None:
    raise FileNotFoundError("no dlib 68-point model file: pass its path or " + INSTALL_HINT)
  if not Path(path).is_file():
    raise FileNotFoundError(f"dlib 68-point model file {path} not found")
  predictor = _read_predictor(dlib, str(path))
  return DlibBaseline(predictor_path=str(path), version=str(getattr(dlib, "__version__", "?")),
                      _detector=dlib.get_frontal_face_detector(),
                      _predictor=predictor, _dlib=dlib)


def _read_predictor(dlib, path: str):
  """``dlib.shape_predictor(path)``.

  Raises:
    ValueError: the file is not a dlib shape-predictor model (dlib cannot deserialise it; one
      line naming the file).
  """
  try:
    return dlib.shape_predictor(path)
  except RuntimeError as error:
    reason = " ".join(str(error).split())
    raise ValueError(f"{path} is not a dlib shape-predictor model (dlib: {reason}); "
                     f"{PREDICTOR_ADVICE}") from None


def check_68_points(baseline: Any) -> None:
  """Checks that a loaded :class:`DlibBaseline`'s predictor gives 68 points (one prediction on
  a blank 8 x 8 image); anything else (a stand-in) is not checked.

  Raises:
    ValueError: a shape predictor of another number of points (e.g. dlib's 5-point model).
  """
  if not isinstance(baseline, DlibBaseline):
    return
  parts = baseline.num_points()
  if parts is not None and parts != 68:
    raise ValueError(f"{baseline.predictor_path} is a dlib shape predictor of {parts} points, "
                     f"not the 68-point model; {PREDICTOR_ADVICE}")
