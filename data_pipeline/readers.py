"""Landmark-file readers for real data sets, converted to the project's pixel convention.

NumPy (and SciPy for ``.mat``) only; never imports JAX.

Our convention (DESIGN.md section 3): points are ``(x, y)``, x right, y down, pixels, pixel
``(i, j)`` (row, column) centred at ``(j + 0.5, i + 0.5)``; landmarks in the iBUG 68 order,
0-based. The file conventions converted here:

* **300W ``.pts``** and **AFLW2000-3D ``pt3d_68``**: 1-based Matlab-style pixel coordinates, the
  first pixel's centre at ``1.0``: ``x_ours = x_file - 0.5``. This conversion happens in exactly
  one place, :func:`one_based_to_pixel_centres` (and its inverse for :func:`write_pts`).
* **menpo ``.ljson``** (versions 1, 2, 3): menpo stores image points as ``[y, x]`` (first axis
  the image row) with pixel centres at integer coordinates (its ``.pts`` importer subtracts 1
  from the 1-based values), so ``(x_ours, y_ours) = (point[1] + 0.5, point[0] + 0.5)``.
  Sources: menpo's ``menpo/io/input/landmark.py`` (``pts_importer``, ``_parse_ljson_v1..v3``)
  and its LJSON exporter docstring ("the first axis of the format represents the image
  y-axis").
* **``.npy`` / ``.json``** arrays: already in our convention, ``[68, 2]`` (x, y). A ``.json``
  file holds either the bare list of pairs or an object with a ``"landmarks_px"`` entry; a
  ``.json`` file with menpo's layout is read as LJSON.

Every problem (missing file, wrong point count, NaN/Inf coordinates, unparsable content) raises
:class:`LandmarkReadError`, a ``ValueError`` whose message names the file and the problem.

Length: a little over 500 lines: one reader per annotation format, each short, with the
error type they share.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, List, Optional, Tuple

import numpy as np

NUM_LANDMARKS = 68
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
ONE_BASED_TO_PIXEL_CENTRE_PX = 0.5  # 1-based file value minus this = our coordinate.


class LandmarkReadError(ValueError):
  """A landmark file is missing, unreadable or holds unusable values (message names the file)."""


# ----------------------------------------------------------------------------------------------
# The one place for coordinate conventions
# ----------------------------------------------------------------------------------------------


def one_based_to_pixel_centres(points: np.ndarray) -> np.ndarray:
  """1-based pixel coordinates (first pixel centre at 1.0: .pts, Matlab) -> ours (centre 0.5).

  Args:
    points: ``[..., 2]`` (x, y) in 1-based pixel coordinates.

  Returns:
    ``[..., 2]`` float32 (x, y) with pixel ``(i, j)`` centred at ``(j + 0.5, i + 0.5)``.
  """
  return (np.asarray(points, np.float64) - ONE_BASED_TO_PIXEL_CENTRE_PX).astype(np.float32)


def pixel_centres_to_one_based(points_px: np.ndarray) -> np.ndarray:
  """Inverse of :func:`one_based_to_pixel_centres`; ``[..., 2]`` float64."""
  return np.asarray(points_px, np.float64) + ONE_BASED_TO_PIXEL_CENTRE_PX


def menpo_to_pixel_centres(points_yx: np.ndarray) -> np.ndarray:
  """menpo image points ``[..., 2]`` (y, x), centres at integers -> ours ``[..., 2]`` (x, y)."""
  points_yx = np.asarray(points_yx, np.float64)
  return (points_yx[..., ::-1] + 0.5).astype(np.float32)


def _check_points(points: Any, path: Path, num_points: Optional[int]) -> np.ndarray:
  """Validates an ``[N, 2]`` array read from ``path``; returns it as float32."""
  try:
    points = np.asarray(points, dtype=np.float64)
  except (TypeError, ValueError) as error:
    raise LandmarkReadError(f"{path}: landmark values are not numbers ({error}).") from None
  if points.ndim != 2 or points.shape[1] != 2:
    raise LandmarkReadError(f"{path}: expected landmarks of shape [N, 2] (x, y), got shape "
                            f"{points.shape}.")
  if num_points is not None and points.shape[0] != num_points:
    raise LandmarkReadError(f"{path}: expected {num_points} landmarks (iBUG 68 layout), found "
                            f"{points.shape[0]}.")
  bad = ~np.isfinite(points).all(axis=1)
  if bad.any():
    raise LandmarkReadError(f"{path}: landmarks {np.flatnonzero(bad).tolist()} have NaN or "
                            "infinite coordinates (missing annotations are not supported).")
  return points.astype(np.float32)


def _require_file(path: str | os.PathLike) -> Path:
  path = Path(path)
  if not path.exists():
    raise LandmarkReadError(f"{path}: landmark file not found; check the path.")
  if not path.is_file():
    raise LandmarkReadError(f"{path}: is not a regular file (a directory?); pass a landmark file.")
  return path


def _read_text(path: Path) -> str:
  try:
    return path.read_text(encoding="utf-8-sig")  # tolerates a byte-order mark.
  except UnicodeDecodeError:
    raise LandmarkReadError(f"{path}: not a text file (cannot decode as UTF-8).") from None


# ----------------------------------------------------------------------------------------------
# 300W .pts
# ----------------------------------------------------------------------------------------------


def parse_pts(text: str, path: str | os.PathLike = "<string>",
              num_points: Optional[int] = NUM_LANDMARKS) -> np.ndarray:
  """Parses the text of a 300W ``.pts`` file; see :func:`read_pts`."""
  path = Path(path)
  lines = [line.strip() for line in text.splitlines()]
  lines = [line for line in lines if line and not line.startswith("#")]
  try:
    open_index = lines.index("{")
    close_index = lines.index("}", open_index)
  except ValueError:
    raise LandmarkReadError(
        f"{path}: not a .pts file (no '{{' ... '}}' block of points).") from None
  declared = None
  for line in lines[:open_index]:
    key, _, value = line.partition(":")
    if key.strip().lower() == "n_points":
      try:
        declared = int(value)
      except ValueError:
        raise LandmarkReadError(f"{path}: bad header line {line!r}.") from None
  rows = []
  for line in lines[open_index + 1:close_index]:
    fields = line.split()
    try:
      rows.append([float(fields[0]), float(fields[1])])
    except (ValueError, IndexError):
      raise LandmarkReadError(
          f"{path}: cannot parse point line {line!r} (expected 'x y').") from None
  if declared is not None and declared != len(rows):
    raise LandmarkReadError(f"{path}: header says n_points: {declared} but the file lists "
                            f"{len(rows)} points.")
  points = _check_points(np.reshape(np.asarray(rows, np.float64), (-1, 2)), path, num_points)
  return one_based_to_pixel_centres(points)


def read_pts(path: str | os.PathLike, num_points: Optional[int] = NUM_LANDMARKS) -> np.ndarray:
  """Reads a 300W / iBUG ``.pts`` file.

  Layout: ``version: 1``, ``n_points: N``, ``{``, N lines ``x y``, ``}`` (blank lines, ``#``
  comments and CRLF line ends are tolerated).

  Args:
    path: the ``.pts`` file; its values are 1-based (first pixel centre at 1.0).
    num_points: required point count (``None``: any).

  Returns:
    ``[N, 2]`` float32 (x, y) in our convention (``x_ours = x_pts - 0.5``).
  """
  path = _require_file(path)
  return parse_pts(_read_text(path), path, num_points)


def write_pts(path: str | os.PathLike, landmarks_px: np.ndarray) -> None:
  """Writes landmarks as a 300W ``.pts`` file (1-based, so ``x_pts = x_ours + 0.5``).

  Args:
    path: output file (overwritten).
    landmarks_px: ``[N, 2]`` (x, y) in our convention; must be finite.
  """
  path = Path(path)
  points = pixel_centres_to_one_based(_check_points(landmarks_px, path, None))
  body = "\n".join(f"{x:.6f} {y:.6f}" for x, y in points)
  path.write_text(f"version: 1\nn_points: {len(points)}\n{{\n{body}\n}}\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# menpo .ljson, .json, .npy
# ----------------------------------------------------------------------------------------------


def _ljson_points(document: Any, path: Path, group: Optional[str]) -> List[Any]:
  """The ``[y, x]`` point list of a menpo LJSON document (versions 1, 2, 3)."""
  version = document.get("version")
  if version == 1:
    return [landmark["point"] for g in document["groups"] for landmark in g["landmarks"]]
  if version == 2:
    return document["landmarks"]["points"]
  if version == 3:
    groups = document["groups"]
    if group is None:
      if len(groups) == 1:
        group = next(iter(groups))
      else:
        sized = [k for k, g in groups.items() if len(g["landmarks"]["points"]) == NUM_LANDMARKS]
        if len(sized) != 1:
          raise LandmarkReadError(f"{path}: LJSON v3 has groups {sorted(groups)}; pass group=.")
        group = sized[0]
    if group not in groups:
      raise LandmarkReadError(f"{path}: LJSON group {group!r} not in {sorted(groups)}.")
    return groups[group]["landmarks"]["points"]
  raise LandmarkReadError(f"{path}: unknown LJSON version {version!r} (supported: 1, 2, 3).")


def _is_ljson(document: Any) -> bool:
  return isinstance(document, dict) and "version" in document and (
      "groups" in document or isinstance(document.get("landmarks"), dict))


def _load_json(path: Path) -> Any:
  try:
    return json.loads(_read_text(path))
  except json.JSONDecodeError as error:
    raise LandmarkReadError(f"{path}: not valid JSON ({error}).") from None


def read_ljson(path: str | os.PathLike, group: Optional[str] = None,
               num_points: Optional[int] = NUM_LANDMARKS) -> np.ndarray:
  """Reads a menpo LJSON landmark file (versions 1, 2, 3).

  Args:
    path: the ``.ljson`` file; its image points are ``[y, x]`` with pixel centres at integers;
      ``null`` (missing) coordinates are rejected.
    group: LJSON v3 group name; by default the only group, or the only one with 68 points.
    num_points: required point count (``None``: any).

  Returns:
    ``[N, 2]`` float32 (x, y) in our convention.
  """
  path = _require_file(path)
  document = _load_json(path)
  if not _is_ljson(document):
    raise LandmarkReadError(f"{path}: not a menpo LJSON document (no 'version' and "
                            "'landmarks'/'groups').")
  try:
    raw = _ljson_points(document, path, group)
    points = np.asarray([[math.nan if v is None else v for v in point] for point in raw],
                        np.float64).reshape(-1, 2)
  except (KeyError, TypeError, ValueError) as error:
    if isinstance(error, LandmarkReadError):
      raise
    raise LandmarkReadError(f"{path}: malformed LJSON ({type(error).__name__}: {error}).") from None
  points = _check_points(points, path, num_points)
  return menpo_to_pixel_centres(points)


def read_landmarks_json(path: str | os.PathLike,
                        num_points: Optional[int] = NUM_LANDMARKS) -> np.ndarray:
  """Reads ``.json`` landmarks already in our convention (a menpo layout is read as LJSON).

  Args:
    path: a file holding ``[[x, y], ...]`` or ``{"landmarks_px": [[x, y], ...], ...}``.
    num_points: required point count (``None``: any).

  Returns:
    ``[N, 2]`` float32 (x, y).
  """
  path = _require_file(path)
  document = _load_json(path)
  if _is_ljson(document):
    return read_ljson(path, num_points=num_points)
  if isinstance(document, dict):
    if "landmarks_px" not in document:
      raise LandmarkReadError(f"{path}: JSON object has no 'landmarks_px' entry (keys: "
                              f"{sorted(document)[:10]}).")
    document = document["landmarks_px"]
  return _check_points(document, path, num_points)


def read_npy(path: str | os.PathLike, num_points: Optional[int] = NUM_LANDMARKS) -> np.ndarray:
  """Reads an ``.npy`` ``[N, 2]`` (x, y) array already in our convention; float32."""
  path = _require_file(path)
  try:
    array = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError) as error:
    raise LandmarkReadError(f"{path}: not a readable .npy array ({error}).") from None
  return _check_points(array, path, num_points)


# ----------------------------------------------------------------------------------------------
# AFLW2000-3D .mat
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AFLW2000Annotation:
  """One AFLW2000-3D annotation in our conventions.

  Attributes:
    landmarks_px: ``[68, 2]`` float32 (x, y) image pixels, ours (from ``pt3d_68`` rows 0, 1, minus
      0.5). These are projected 3D landmarks: on turned faces the jaw follows the 3D jaw line.
    landmarks_depth: ``[68]`` float32 third row of ``pt3d_68`` (the file's depth, same scale as
      the pixels; larger is nearer the camera), as stored.
    pitch_rad, yaw_rad, roll_rad: pose in OUR Euler convention
      (:func:`dff_jax.geometry.euler_to_matrix`: positive yaw = nose to the image right). The
      file's ``Pose_Para`` angles follow 3DDFA, whose rotation is the transpose of ours for the
      same three numbers (checked on the data: relative rotations between faces agree with the
      landmarks to ~2 degrees), so for small angles each is about minus the file value.
    file_pose_rad: ``(pitch, yaw, roll)`` exactly as in ``Pose_Para`` (3DDFA convention).
    translation: ``[3]`` float32 ``Pose_Para[3:6]`` (tx, ty, tz) as stored (3DDFA frame).
    scale: ``Pose_Para[6]`` as stored.
    mat_path: the annotation file.
    image_path: the same-stem ``.jpg`` (or other image) next to it, or ``None`` if absent.
  """
  landmarks_px: np.ndarray
  landmarks_depth: np.ndarray
  pitch_rad: float
  yaw_rad: float
  roll_rad: float
  file_pose_rad: Tuple[float, float, float]
  translation: np.ndarray
  scale: float
  mat_path: Path
  image_path: Optional[Path]

  @property
  def pose_rad(self) -> Tuple[float, float, float]:
    """``(pitch, yaw, roll)`` radians, our convention."""
    return (self.pitch_rad, self.yaw_rad, self.roll_rad)

  @property
  def pose_deg(self) -> Tuple[float, float, float]:
    """``(pitch, yaw, roll)`` degrees, our convention (|yaw| is what the yaw bins use)."""
    return tuple(math.degrees(a) for a in self.pose_rad)

  @property
  def yaw_deg(self) -> float:
    return math.degrees(self.yaw_rad)


def _same_stem_image(path: Path) -> Optional[Path]:
  for extension in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
    candidate = path.with_suffix(extension)
    if candidate.is_file():
      return candidate
  return None


def file_pose_to_ours(pitch_rad: float, yaw_rad: float, roll_rad: float) -> Tuple[float, ...]:
  """3DDFA / AFLW2000-3D ``Pose_Para`` angles -> our ``(pitch, yaw, roll)`` radians.

  3DDFA builds ``R = Rx(-pitch) @ Ry(-yaw) @ Rz(-roll)`` (its ``RotationMatrix``), which in our
  frame is ``euler_to_matrix(pitch, yaw, roll).T``; we decompose that with our Euler order.
  """
  from dff_jax import geometry  # pylint: disable=g-import-not-at-top  (NumPy only, no JAX)
  rotation = geometry.euler_to_matrix(np.float64(pitch_rad), np.float64(yaw_rad),
                                      np.float64(roll_rad))
  return tuple(float(a) for a in geometry.matrix_to_euler(np.swapaxes(rotation, -1, -2)))


def read_aflw2000(path: str | os.PathLike) -> AFLW2000Annotation:
  """Reads one AFLW2000-3D ``imageNNNNN.mat`` (``pt3d_68`` 3 x 68 1-based, ``Pose_Para`` 1 x 7).

  Args:
    path: the ``.mat`` file.

  Returns:
    :class:`AFLW2000Annotation` (landmarks and pose in our conventions).
  """
  import scipy.io  # pylint: disable=g-import-not-at-top  (only this reader needs SciPy)
  path = _require_file(path)
  try:
    content = scipy.io.loadmat(str(path))
  except Exception as error:  # SciPy raises many types for a bad file.
    raise LandmarkReadError(f"{path}: not a readable MATLAB .mat file "
                            f"({type(error).__name__}: {error}).") from None
  for key in ("pt3d_68", "Pose_Para"):
    if key not in content:
      raise LandmarkReadError(f"{path}: no '{key}' entry; is this an AFLW2000-3D annotation?")
  pt3d = np.asarray(content["pt3d_68"], np.float64)
  if pt3d.ndim != 2 or pt3d.shape[0] < 2:
    raise LandmarkReadError(f"{path}: pt3d_68 has shape {pt3d.shape}, expected 3 x 68.")
  landmarks = one_based_to_pixel_centres(_check_points(pt3d[:2].T, path, NUM_LANDMARKS))
  depth = (pt3d[2] if pt3d.shape[0] > 2 else np.zeros(pt3d.shape[1])).astype(np.float32)
  pose = np.asarray(content["Pose_Para"], np.float64).reshape(-1)
  if pose.shape[0] != 7 or not np.all(np.isfinite(pose)):
    raise LandmarkReadError(f"{path}: Pose_Para must hold 7 finite numbers (pitch, yaw, roll, "
                            f"tx, ty, tz, scale), got {pose.tolist()}.")
  pitch, yaw, roll = file_pose_to_ours(*pose[:3])
  return AFLW2000Annotation(
      landmarks_px=landmarks, landmarks_depth=depth, pitch_rad=pitch, yaw_rad=yaw,
      roll_rad=roll, file_pose_rad=tuple(float(a) for a in pose[:3]),
      translation=pose[3:6].astype(np.float32), scale=float(pose[6]), mat_path=path,
      image_path=_same_stem_image(path))


# ----------------------------------------------------------------------------------------------
# Dispatch and folders
# ----------------------------------------------------------------------------------------------


def read_landmarks(path: str | os.PathLike) -> np.ndarray:
  """Reads 68 landmarks from any supported file, dispatching on the extension.

  ``.pts`` (300W, 1-based), ``.ljson`` (menpo), ``.json`` / ``.npy`` (ours), ``.mat``
  (AFLW2000-3D ``pt3d_68``). See the module docstring for each convention.

  Args:
    path: the landmark file.

  Returns:
    ``[68, 2]`` float32 (x, y) image pixels, pixel ``(i, j)`` centred at ``(j + 0.5, i + 0.5)``.
  """
  suffix = Path(path).suffix.lower()
  readers = {".pts": read_pts, ".ljson": read_ljson, ".json": read_landmarks_json,
             ".npy": read_npy, ".mat": lambda p: read_aflw2000(p).landmarks_px}
  if suffix not in readers:
    raise LandmarkReadError(f"{path}: unsupported landmark file extension {suffix!r}; use one of "
                            f"{sorted(readers)}.")
  return readers[suffix](path)


def _require_folder(folder: str | os.PathLike) -> Path:
  folder = Path(folder)
  if not folder.is_dir():
    raise LandmarkReadError(f"{folder}: data folder not found (or not a directory).")
  return folder


def _image_files(folder: Path, recursive: bool) -> List[Path]:
  files = folder.rglob("*") if recursive else folder.iterdir()
  return sorted(p for p in files if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def list_300w(folder: str | os.PathLike, recursive: bool = True) -> List[Tuple[Path, Path]]:
  """Image / annotation pairs of a 300W-style folder (image + same-stem ``.pts``).

  Images without a ``.pts`` file are skipped (300W ships some in its folders).

  Args:
    folder: root folder (e.g. ``300W/`` with ``afw/``, ``helen/trainset/``, ...).
    recursive: search subfolders too.

  Returns:
    sorted list of ``(image_path, pts_path)``; raises :class:`LandmarkReadError` when empty.
  """
  folder = _require_folder(folder)
  pairs = [(image, image.with_suffix(".pts")) for image in _image_files(folder, recursive)
           if image.with_suffix(".pts").is_file()]
  if not pairs:
    raise LandmarkReadError(f"{folder}: no image with a same-stem .pts file found.")
  return pairs


def list_aflw2000(folder: str | os.PathLike) -> List[Tuple[Path, Path]]:
  """Image / annotation pairs of an AFLW2000-3D folder (``imageNNNNN.jpg`` + ``.mat``).

  Args:
    folder: the folder holding both files of each example.

  Returns:
    sorted list of ``(image_path, mat_path)``; raises :class:`LandmarkReadError` when empty.
  """
  folder = _require_folder(folder)
  pairs = [(image, image.with_suffix(".mat")) for image in _image_files(folder, False)
           if image.with_suffix(".mat").is_file()]
  if not pairs:
    raise LandmarkReadError(f"{folder}: no image with a same-stem .mat annotation found.")
  return pairs


# ----------------------------------------------------------------------------------------------
# faces68 (real photos with 68 points; research use, see ../shared/datasets/faces68/README.md)
# ----------------------------------------------------------------------------------------------

FACES68_SPLITS = ("train", "val")


@dataclasses.dataclass(frozen=True)
class Faces68Entry:
  """One face of a faces68-layout folder.

  Attributes:
    name: the image stem (``images/<name>.jpg``).
    image_path: the image file.
    landmarks_px: ``[68, 2]`` float32 (x, y) pixels of the crop, pixel ``(i, j)`` centred at
      ``(j + 0.5, i + 0.5)`` (the data set's own convention, no conversion); the 300-W jaw
      (visible outline on turned faces).
    source: the ``source`` field (``helen-train``, ``afw``, ``ytf-train``, ...).
    size_wh: ``(width, height)`` of the image as recorded in the json.
  """
  name: str
  image_path: Path
  landmarks_px: np.ndarray
  source: str
  size_wh: Tuple[int, int]


def read_faces68(folder: str | os.PathLike, split: str = "train",
                 json_path: Optional[str | os.PathLike] = None) -> List[Faces68Entry]:
  """The faces of a faces68-layout folder (``images/<name>.jpg`` + ``<split>.json``).

  Args:
    folder: the data set folder.
    split: ``"train"`` or ``"val"`` (reads ``<folder>/<split>.json``).
    json_path: another json file of faces in the same layout (overrides ``split``).

  Returns:
    the entries sorted by name. Raises :class:`LandmarkReadError` for a missing folder or json,
    a malformed entry (names the face), or a missing image.
  """
  folder = _require_folder(folder)
  if json_path is None:
    if split not in FACES68_SPLITS:
      raise LandmarkReadError(f"split must be one of {FACES68_SPLITS}, got {split!r}")
    json_path = folder / f"{split}.json"
  json_path = _require_file(json_path)
  document = _load_json(json_path)
  if not isinstance(document, dict) or not document:
    raise LandmarkReadError(f"{json_path}: expected an object {{name: {{landmarks_px, ...}}}} "
                            "with at least one face.")
  entries = []
  for name in sorted(document):
    item = document[name]
    if not isinstance(item, dict) or "landmarks_px" not in item:
      raise LandmarkReadError(f"{json_path}: face {name!r} has no 'landmarks_px' entry.")
    landmarks = _check_points(item["landmarks_px"], json_path, NUM_LANDMARKS)
    image_path = folder / "images" / f"{name}.jpg"
    if not image_path.is_file():
      raise LandmarkReadError(f"{json_path}: face {name!r}: image {image_path} not found.")
    size = item.get("size_wh", (0, 0))
    entries.append(Faces68Entry(name=name, image_path=image_path,
                                landmarks_px=landmarks.astype(np.float32),
                                source=str(item.get("source", "")),
                                size_wh=(int(size[0]), int(size[1]))))
  return entries
