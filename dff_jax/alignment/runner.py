"""Running a trained cascade on image files: loading, batching, results as JSON, evaluation sets.

Shared by ``experiments/align.py`` (landmarks, pose and shape for any images) and
``experiments/eval_alignment.py`` (NME on synthetic faces, 300W-style folders, AFLW2000-3D).

**Batching (static shapes).** Images differ in size, so each face is first cut out **on the
host**: its square crop box ``geometry.square_box(box, config.box_scale)`` (the frame the cascade
works in) is resampled with Pillow's antialiasing bilinear filter to a *working image* of
``work_size = WORK_SCALE * crop_size`` pixels (area outside the image is black, as in
:func:`dff_jax.sampling.crop_image`). The face box is mapped into that working image, so inside
the jitted :func:`dff_jax.alignment.cascade.align_images` the crop box is the whole working image
and its resampling to ``crop_size`` is an exact 2 x 2 mean. Every batch is then
``[batch_size, work_size, work_size, 3]`` uint8 (the last one padded by repeating its last face),
so the function compiles once per run whatever the image sizes. Results are mapped back from the
working image to the original image pixels on the host (landmarks, crop box, pose scale and
translation; the rotation and the shape coefficients do not change).

**Face boxes.** ``(x0, y0, x1, y1)`` in image pixels (x right, y down, pixel ``(i, j)`` centred
at ``(j + 0.5, i + 0.5)``), the bounding box of the face's 68 landmarks, as the cascade was
trained. A job gives one box ``[4]``, several ``[N, 4]`` (each its own face and its own crop in
the batch), :data:`DETECT` / ``None`` (every face :func:`dff_jax.detection.detect_faces` finds,
with its score; possibly none) or :data:`WHOLE_IMAGE` (the centred square of side
``max(H, W) / box_scale``, so that the crop box is the square around the whole image).
Detection runs on the host, in the worker that decodes the image, before the working crops.

**Compilation.** The jitted function belongs to the :class:`CompiledCascade` (compiled ahead of
time once per batch size, :meth:`CompiledCascade.compile`); :func:`load_aligner` keeps the last
two of the process, so repeated calls with the same files compile once.

**Streaming.** :func:`run_jobs` takes its jobs lazily, prepares them (image decoding, host crop)
in a small thread pool a couple of batches ahead, and dispatches each batch to the jitted cascade
asynchronously, waiting for a batch's results only after the next one has been dispatched. The
number of decoded images in memory is bounded (``(prefetch_batches + 2) * batch_size``) whatever
the number of images, and :class:`RunStats` records the time split.

**Failures.** Loading a job (reading the image, its box, its annotation) that raises a
``ValueError`` / ``OSError`` (e.g. :class:`dff_jax.image_io.ImageReadError`, a bad box) or
produces a non-finite result yields an :class:`Outcome` with a one-line ``error`` and no face;
the other jobs go on.
"""

from __future__ import annotations

import collections
import dataclasses
import glob as glob_lib
import json
import math
import os
import threading
import time
from concurrent import futures as futures_lib
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from dff_jax import geometry
from dff_jax import image_io
from dff_jax import metrics
from dff_jax.file_io import json_safe
from dff_jax.alignment import cascade
from dff_jax.alignment import features as features_lib
from dff_jax.alignment import io as cascade_io
from dff_jax.alignment import results
from dff_jax.face_model import model as face_model_lib

Array = Any
ASSETS = features_lib.ASSETS
WORK_SCALE = 2
READ_ERRORS = (ValueError, OSError)
# A job's box: find every face with the detector / use the whole image as the face crop.
DETECT = "detect"
WHOLE_IMAGE = "whole"


def _readable_extensions(candidates: Sequence[str]) -> Tuple[str, ...]:
  """The candidates Pillow (imageio's reader for these formats) can open in this install."""
  Image.init()
  registered = Image.registered_extensions()
  return tuple(e for e in candidates if registered.get(e) in Image.OPEN)


# Common photo formats (folders are filtered by extension; the file's content decides how it is
# decoded): JPEG, PNG, BMP, GIF, TIFF, WebP, the Netpbm family, Targa, JPEG 2000, AVIF.
IMAGE_EXTENSIONS = _readable_extensions(
    (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".webp",
     ".ppm", ".pgm", ".pnm", ".pbm", ".tga", ".jp2", ".j2k", ".jpx", ".avif"))


# Shipped cascades by name (``--cascade=NAME``); each file names its encoder in its meta.
NAMED_CASCADES = {
    # Trained on real photos (faces68: research-use terms) and synthetic renders: the default.
    "default": "cascade_dff.npz",
    # Trained on synthetic renders of the embedded face model only (no research-use data).
    "synthetic": "cascade_dff_synthetic.npz",
}


def default_cascade_path(features: str) -> Path:
  """The shipped cascade for ``features`` (``dff_jax/assets/cascade_<features>.npz``)."""
  return ASSETS / f"cascade_{features}.npz"


def named_cascade_path(name: str | os.PathLike) -> Path:
  """``NAMED_CASCADES[name]`` under the assets, or ``name`` itself as a path."""
  if str(name) in NAMED_CASCADES:
    return ASSETS / NAMED_CASCADES[str(name)]
  return Path(name)


# ----------------------------------------------------------------------------------------------
# Loading a cascade and its descriptor (checks first, without touching JAX)
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AlignerSpec:
  """Resolved, existence-checked inputs of :func:`load_aligner`.

  Attributes:
    features: ``"dff"`` or ``"sift"``.
    cascade_path: the cascade file.
    checkpoint: the DFF bundle / workdir (``None`` for SIFT).
    face_model: face-model spec for :func:`dff_jax.face_model.load_face_model`.
    header: the cascade file's header.
  """
  features: str
  cascade_path: Path
  checkpoint: Optional[Path]
  face_model: str
  header: Dict[str, Any]


def resolve_aligner(cascade_path: Optional[str | os.PathLike] = None,
                    features: Optional[str] = None,
                    checkpoint: Optional[str | os.PathLike] = None,
                    face_model: Optional[str] = None) -> AlignerSpec:
  """Finds the cascade / checkpoint / face model to use and checks they exist (no JAX).

  Args:
    cascade_path: a cascade ``.npz``, or a shipped one by name (:data:`NAMED_CASCADES`:
      ``"default"``, ``"synthetic"``); ``None`` = the shipped ``cascade_<features>.npz``.
    features: ``"dff"`` / ``"sift"``; ``None`` = the cascade's own (``"dff"`` for the default).
      Must agree with the cascade file.
    checkpoint: DFF bundle / training workdir; ``None`` = the encoder the cascade names
      (:func:`dff_jax.alignment.features.encoder_for_cascade`), else the shipped
      ``dff_default`` bundle. Ignored for SIFT.
    face_model: ``"default"``, ``"ict"``, ``"sfm"`` or a path; ``None`` = the cascade's.

  Raises:
    FileNotFoundError / ValueError: with one-line messages naming the missing file and the flag
      that supplies it.
  """
  if features is not None and features not in features_lib.FEATURE_KINDS:
    raise ValueError(f"unknown features {features!r}: use one of {features_lib.FEATURE_KINDS}")
  if cascade_path is None:
    kind = features or "dff"
    path = default_cascade_path(kind)
    if not path.is_file():
      raise FileNotFoundError(
          f"the default {kind} cascade {path} is not shipped with this install yet: pass "
          "--cascade=FILE (train one with python -m experiments.train_alignment)")
  else:
    path = named_cascade_path(cascade_path)
  header = cascade_io.read_cascade_header(path)
  meta = header.get("meta", {})
  kind = str(meta.get("features", features or "dff"))
  if features is not None and features != kind:
    raise ValueError(f"--features={features} but cascade {path} was trained on {kind} "
                     f"descriptors; drop --features or pass a {features} cascade")
  if kind not in features_lib.FEATURE_KINDS:
    raise ValueError(f"cascade {path} names unknown features {kind!r}")
  bundle = None
  if kind == "dff":
    bundle = (Path(checkpoint) if checkpoint
              else features_lib.encoder_for_cascade(path, meta))
    if not bundle.exists():
      if checkpoint:
        raise FileNotFoundError(f"DFF checkpoint {bundle} does not exist: pass --checkpoint=DIR "
                                "with a training workdir or an exported bundle")
      raise FileNotFoundError(
          f"the default DFF encoder {bundle} is not shipped with this install yet: pass "
          "--checkpoint=DIR (a training workdir or an exported bundle)")
  model_spec = face_model or str(meta.get("face_model", "default"))
  if model_spec not in ("default", "ict", "sfm") and not Path(model_spec).is_file():
    raise FileNotFoundError(f"face model {model_spec} does not exist: pass --face_model=default "
                            "or the path of a face model file")
  return AlignerSpec(features=kind, cascade_path=path, checkpoint=bundle, face_model=model_spec,
                     header=header)


@dataclasses.dataclass
class CompiledCascade:
  """A loaded cascade with its descriptor and face model, ready for :func:`run_jobs` (the
  machinery under the public :class:`dff_jax.Aligner`).

  Attributes:
    spec: what was loaded.
    describer: the descriptor function (DFF encoder or dense SIFT).
    face_model: the 3DMM (NumPy arrays; for drawing and JSON).
    alignment_model: the same model as JAX arrays plus normals (for the cascade).
    params: the cascade regressors.
    config: the cascade's static settings.
    meta: the cascade file's meta (features, training notes).
    work_size: side of the host-side working image (``WORK_SCALE * crop_size``).
  """
  spec: AlignerSpec
  describer: features_lib.Describer
  face_model: face_model_lib.FaceModel
  alignment_model: cascade.AlignmentModel
  params: cascade.CascadeParams
  config: cascade.CascadeConfig
  meta: Dict[str, Any]
  work_size: int
  _jitted: Optional[Callable] = None
  _compiled: Dict[int, Any] = dataclasses.field(default_factory=dict)
  compile_seconds: Dict[int, float] = dataclasses.field(default_factory=dict)

  @property
  def name(self) -> str:
    return self.spec.features

  def compile(self, batch_size: int) -> float:
    """Compiles the jitted cascade for ``batch_size`` faces (once per aligner and batch size).

    Returns:
      The seconds spent lowering and compiling (``0.0`` when it was compiled already; the first
      time is kept in ``compile_seconds[batch_size]``).
    """
    batch_size = int(batch_size)
    if batch_size in self._compiled:
      return 0.0
    if self._jitted is None:
      describer, config = self.describer, self.config

      def run(describer_params, alignment_model, params, images, boxes):
        return cascade.align_images(lambda crops: describer.apply(describer_params, crops),
                                    alignment_model, params, images, boxes, config)
      self._jitted = jax.jit(run)
    size = self.work_size
    start = time.perf_counter()
    self._compiled[batch_size] = self._jitted.lower(
        self.describer.params, self.alignment_model, self.params,
        jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.uint8),
        jax.ShapeDtypeStruct((batch_size, 4), jnp.float32)).compile()
    self.compile_seconds[batch_size] = time.perf_counter() - start
    return self.compile_seconds[batch_size]

  def dispatch(self, work_images: np.ndarray, work_boxes: np.ndarray) -> Any:
    """Starts the jitted cascade on one batch and returns at once (JAX's asynchronous dispatch).

    Args:
      work_images: ``[B, S, S, 3]`` uint8, ``S = work_size``.
      work_boxes: ``[B, 4]`` float32 face boxes in working-image pixels.

    Returns:
      The device-side :class:`dff_jax.alignment.cascade.AlignmentResult` (not yet computed);
      pass it to :meth:`fetch`. The function is compiled on the first batch of each size.
    """
    work_images = np.asarray(work_images)
    if (work_images.ndim != 4 or work_images.shape[1:] != (self.work_size, self.work_size, 3)
        or work_images.dtype != np.uint8):
      raise ValueError(f"expected [B, {self.work_size}, {self.work_size}, 3] uint8 working "
                       f"images, got {work_images.shape} {work_images.dtype}")
    batch_size = work_images.shape[0]
    self.compile(batch_size)
    return self._compiled[batch_size](self.describer.params, self.alignment_model, self.params,
                                      jnp.asarray(work_images),
                                      jnp.asarray(work_boxes, jnp.float32))

  @staticmethod
  def fetch(result: Any) -> Dict[str, np.ndarray]:
    """Waits for a :meth:`dispatch` result; its fields as NumPy arrays (working frame)."""
    return {k: np.asarray(v) for k, v in dataclasses.asdict(jax.device_get(result)).items()}

  def align_working(self, work_images: np.ndarray, work_boxes: np.ndarray) -> Dict[str, np.ndarray]:
    """The jitted cascade on one batch of working images (:meth:`dispatch` + :meth:`fetch`).

    Args:
      work_images: ``[B, S, S, 3]`` uint8, ``S = work_size``.
      work_boxes: ``[B, 4]`` float32 face boxes in working-image pixels.

    Returns:
      :class:`dff_jax.alignment.cascade.AlignmentResult` fields as NumPy arrays (working frame).
    """
    return self.fetch(self.dispatch(work_images, work_boxes))


_ALIGNER_CACHE: Dict[Tuple, CompiledCascade] = {}
_ALIGNER_CACHE_SIZE = 2


def _file_stamp(path: Optional[Path]) -> Tuple:
  if path is None or not path.exists():
    return (str(path),)
  stat = path.stat()
  return (str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def load_aligner(spec: AlignerSpec, cache: bool = True) -> CompiledCascade:
  """Loads everything :func:`resolve_aligner` found into a :class:`CompiledCascade`.

  The last two aligners are cached in the process (keyed by the files' paths, sizes and
  modification times), so repeated calls reuse the compiled cascade.

  Raises:
    ValueError: unreadable files, or a cascade whose descriptor size differs from the encoder's.
  """
  key = (spec.features, _file_stamp(spec.cascade_path), _file_stamp(spec.checkpoint),
         spec.face_model)
  if cache and key in _ALIGNER_CACHE:
    return _ALIGNER_CACHE[key]
  aligner = _load_aligner(spec)
  if cache:
    while len(_ALIGNER_CACHE) >= _ALIGNER_CACHE_SIZE:
      _ALIGNER_CACHE.pop(next(iter(_ALIGNER_CACHE)))
    _ALIGNER_CACHE[key] = aligner
  return aligner


def _load_aligner(spec: AlignerSpec) -> CompiledCascade:
  from dff_jax.face_model import load_face_model  # pylint: disable=g-import-not-at-top
  params, config, meta = cascade_io.load_cascade(spec.cascade_path)
  describer = features_lib.make_describer(spec.features, spec.checkpoint)
  if describer.descriptor_dim != params.descriptor_dim:
    raise ValueError(f"cascade {spec.cascade_path} expects {params.descriptor_dim}-d descriptors "
                     f"but {describer.source} gives {describer.descriptor_dim}-d ones: pass the "
                     "--checkpoint the cascade was trained with")
  model = load_face_model(spec.face_model)
  return CompiledCascade(spec=spec, describer=describer, face_model=model,
                 alignment_model=cascade.make_alignment_model(model), params=params,
                 config=config, meta=meta, work_size=WORK_SCALE * config.crop_size)


# ----------------------------------------------------------------------------------------------
# Host-side crops
# ----------------------------------------------------------------------------------------------


def whole_image_box(height: int, width: int, box_scale: float) -> np.ndarray:
  """``[4]`` face box of :data:`WHOLE_IMAGE`: its crop box is the square around the whole image."""
  side = max(height, width) / box_scale
  cx, cy = width / 2.0, height / 2.0
  return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float32)


def check_box(box: Any, height: int, width: int, where: str = "") -> np.ndarray:
  """Validates a face box against its image; returns it as ``[4]`` float32.

  Raises:
    ValueError: not 4 finite numbers, ``x1 <= x0`` or ``y1 <= y0``, smaller than 2 px, or not
      overlapping the ``width x height`` image.
  """
  prefix = f"{where}: " if where else ""
  try:
    values = np.asarray(box, np.float64).reshape(-1)
  except (TypeError, ValueError):
    raise ValueError(f"{prefix}face box {box!r} is not 4 numbers [x0, y0, x1, y1]") from None
  if values.shape != (4,) or not np.all(np.isfinite(values)):
    raise ValueError(f"{prefix}face box {box!r} must be 4 finite numbers [x0, y0, x1, y1]")
  x0, y0, x1, y1 = values
  if x1 - x0 < 2 or y1 - y0 < 2:
    raise ValueError(f"{prefix}face box {values.tolist()} is empty or inverted (need x1 > x0 "
                     "and y1 > y0, at least 2 px)")
  if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
    raise ValueError(f"{prefix}face box {values.tolist()} lies outside the {width}x{height} image")
  return values.astype(np.float32)


def working_crop(image: np.ndarray, box_xyxy: np.ndarray, config: cascade.CascadeConfig,
                 work_size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Cuts a face's crop box out of the image at the working resolution (host, Pillow).

  Args:
    image: ``[H, W, 3]`` uint8 RGB.
    box_xyxy: ``[4]`` face box, image pixels.
    config: the cascade settings (``box_scale``).
    work_size: side of the working image.

  Returns:
    ``(work_image [S, S, 3] uint8, crop_box [4] float64 image pixels, work_box [4] float32)``:
    the crop box resampled (antialiased bilinear, black outside the image), the square crop box,
    and the face box in working-image pixels.
  """
  box = np.asarray(box_xyxy, np.float64)
  crop_box = np.asarray(geometry.square_box(box, config.box_scale), np.float64)
  x0, y0, x1, y1 = crop_box
  ix0, iy0 = int(math.floor(x0)), int(math.floor(y0))
  ix1, iy1 = max(int(math.ceil(x1)), ix0 + 1), max(int(math.ceil(y1)), iy0 + 1)
  region = Image.fromarray(np.ascontiguousarray(image, np.uint8)).crop((ix0, iy0, ix1, iy1))
  work = region.resize((work_size, work_size), Image.BILINEAR,
                       box=(x0 - ix0, y0 - iy0, x1 - ix0, y1 - iy0))
  work_box = geometry.image_to_crop(box.reshape(2, 2), crop_box, work_size).reshape(4)
  return np.asarray(work, np.uint8), crop_box, work_box.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# One face's result
# ----------------------------------------------------------------------------------------------


Face = results.Face  # one face's alignment, image pixels (see dff_jax.alignment.results)


def to_image_frame(result: Dict[str, np.ndarray], index: int, crop_box: np.ndarray,
                   box: np.ndarray, work_size: int, score: Optional[float] = None) -> Face:
  """Face ``index`` of a working-frame batch result mapped back to image pixels (``score``: the
  detector's, ``None`` for a given box)."""
  factor = (crop_box[2] - crop_box[0]) / work_size
  origin = crop_box[:2]
  pose = results.Pose(
      yaw_rad=float(result["yaw_rad"][index]), pitch_rad=float(result["pitch_rad"][index]),
      roll_rad=float(result["roll_rad"][index]), scale=float(result["scale"][index] * factor),
      translation_px=(result["translation_px"][index] * factor + origin).astype(np.float32))
  return Face(
      landmarks_px=(result["landmarks_px"][index] * factor + origin).astype(np.float32),
      landmarks_3d_px=(result["landmarks_3d_px"][index] * factor + origin).astype(np.float32),
      visibility=result["visibility"][index] > 0.5, pose=pose,
      shape_coefficients=result["shape_coefficients"][index].astype(np.float32),
      expression_coefficients=result["expression_coefficients"][index].astype(np.float32),
      box=np.asarray(box, np.float32), score=None if score is None else float(score),
      crop_box=np.asarray(crop_box, np.float32))


# ----------------------------------------------------------------------------------------------
# Jobs and batches
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Loaded:
  """What a job's loader returns.

  Attributes:
    image: ``[H, W, 3]`` uint8 RGB.
    box: the face box(es) in image pixels: ``[4]`` one face, ``[N, 4]`` several (``N = 0``:
      none), ``None`` / :data:`DETECT` every face the detector finds, :data:`WHOLE_IMAGE` the
      whole image as the face crop.
    truth: optional ground truth (e.g. ``landmarks_px [68, 2]``, ``yaw_deg``) passed through.
    scores: optional ``[N]`` scores of given boxes (e.g. from an earlier detection), reported
      as each face's ``score``.
  """
  image: np.ndarray
  box: Any = None
  truth: Optional[Dict[str, Any]] = None
  scores: Optional[Sequence[float]] = None


@dataclasses.dataclass
class Job:
  """One image to align: a name (for messages and output files) and a loader."""
  name: str
  load: Callable[[], Loaded]


@dataclasses.dataclass
class Outcome:
  """The result of one :class:`Job`: its ``faces`` (in box order; detections best first;
  empty when none was found or on failure) or a one-line ``error``."""
  job: Job
  faces: List[Face] = dataclasses.field(default_factory=list)
  loaded: Optional[Loaded] = None
  error: Optional[str] = None

  @property
  def face(self) -> Optional[Face]:
    """The first face (the only one for a job with one box), ``None`` when there is none."""
    return self.faces[0] if self.faces else None


def one_line(error: BaseException) -> str:
  return " ".join(str(error).split()) or type(error).__name__


def face_boxes(image: np.ndarray, box: Any, box_scale: float, where: str = "",
               scores: Optional[Sequence[float]] = None,
               detect: Optional[Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]] = None
               ) -> Tuple[np.ndarray, List[Optional[float]]]:
  """The face boxes of one image (see :class:`Loaded` for ``box``) and their scores.

  Args:
    image: ``[H, W, 3]`` uint8.
    box: ``[4]``, ``[N, 4]``, ``None`` / :data:`DETECT` or :data:`WHOLE_IMAGE`.
    box_scale: the cascade's ``box_scale`` (for the whole-image box).
    where: prefix of error messages (the image's name).
    scores: optional ``[N]`` scores of given boxes.
    detect: ``image -> (boxes [N, 4], scores [N])`` (default
      :func:`dff_jax.detection.detect_faces`).

  Returns:
    ``(boxes [N, 4] float32, scores [N] floats or None)``; given boxes are checked
    (:func:`check_box`).

  Raises:
    ValueError: a bad box, an unknown word, or ``scores`` of another length.
  """
  height, width = image.shape[:2]
  if box is None or (isinstance(box, str) and box == DETECT):
    if detect is None:
      from dff_jax import detection  # pylint: disable=g-import-not-at-top
      detect = detection.detect_faces
    found, found_scores = detect(image)
    found = np.asarray(found, np.float32).reshape(-1, 4)
    return found, [float(v) for v in np.asarray(found_scores).reshape(-1)]
  if isinstance(box, str):
    if box != WHOLE_IMAGE:
      raise ValueError(f"{where + ': ' if where else ''}unknown face box {box!r}: give "
                       f"[x0, y0, x1, y1], a list of them, {DETECT!r} or {WHOLE_IMAGE!r}")
    return whole_image_box(height, width, box_scale)[None], [None]
  try:
    array = np.asarray(box, np.float64)
  except (TypeError, ValueError):
    raise ValueError(f"{where + ': ' if where else ''}face box {box!r} is not [x0, y0, x1, y1] "
                     "or a list of them") from None
  if array.size == 0:  # an empty list: no face in this image
    boxes = []
  elif array.ndim == 2 and array.shape[1] == 4:
    boxes = [check_box(b, height, width, where) for b in array]
  else:  # one box (check_box says what is wrong with anything else)
    boxes = [check_box(box, height, width, where)]
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  if scores is None:
    return boxes, [None] * len(boxes)
  scores = [None if v is None else float(v) for v in scores]
  if len(scores) != len(boxes):
    raise ValueError(f"{where + ': ' if where else ''}{len(scores)} scores for {len(boxes)} "
                     "face boxes")
  return boxes, scores


def _prepare(aligner: CompiledCascade, job: Job, detect=None):
  """Loads a job and cuts the working crop of each of its faces.

  Returns ``(loaded, [(box, score, work_image, crop_box, work_box), ...])``."""
  loaded = job.load()
  image = np.asarray(loaded.image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f"{job.name}: expected an [H, W, 3] uint8 image, got {image.shape} "
                     f"{image.dtype}")
  boxes, scores = face_boxes(image, loaded.box, aligner.config.box_scale, job.name,
                             loaded.scores, detect)
  entries = []
  for box, score in zip(boxes, scores):
    work_image, crop_box, work_box = working_crop(image, box, aligner.config, aligner.work_size)
    entries.append((box, score, work_image, crop_box, work_box))
  return loaded, entries


@dataclasses.dataclass
class RunStats:
  """Counts and times of one :func:`run_jobs` call, filled in as it runs.

  Attributes:
    jobs: jobs taken from the input so far.
    faces: faces aligned (finite result).
    failures: jobs that yielded an ``error`` outcome.
    batches: jitted calls made (the last one padded).
    prepare_s: seconds spent loading jobs (image decoding) and cutting working crops, summed over
      the worker threads (with several workers this may exceed the wall time).
    align_s: seconds the calling thread spent dispatching batches and waiting for their results.
    wait_prepare_s: seconds the calling thread waited for the next prepared job (near zero when
      decoding keeps up with alignment).
    max_in_memory: the most jobs loaded (image decoded) and not yet yielded at any moment.
  """
  jobs: int = 0
  faces: int = 0
  failures: int = 0
  batches: int = 0
  prepare_s: float = 0.0
  align_s: float = 0.0
  wait_prepare_s: float = 0.0
  max_in_memory: int = 0
  in_memory: int = 0

  def as_dict(self) -> Dict[str, Any]:
    """The fields as a JSON-ready dict (seconds rounded to ms)."""
    return {k: (round(v, 3) if isinstance(v, float) else v)
            for k, v in dataclasses.asdict(self).items() if k != "in_memory"}


class _Deferred:
  """A call run when its ``result()`` is asked for (the ``workers=0`` path of :func:`run_jobs`;
  the same interface as a :class:`concurrent.futures.Future`)."""

  def __init__(self, fn: Callable[..., Any], *args: Any):
    self._fn, self._args = fn, args

  def result(self) -> Any:
    return self._fn(*self._args)

  def cancel(self) -> bool:
    return True


_END = object()


@dataclasses.dataclass
class _Record:
  """An image whose faces are in the batches: its outcome is yielded when the last is done."""
  job: Job
  loaded: Loaded
  faces: List[Optional[Face]]
  remaining: int


def run_jobs(aligner: CompiledCascade, jobs: Iterable[Job], batch_size: int = 8,
             progress: bool = True, total: Optional[int] = None,
             keep_loaded: bool = True, workers: int = 2, prefetch_batches: int = 2,
             stats: Optional[RunStats] = None,
             detect: Optional[Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]] = None
             ) -> Iterator[Outcome]:
  """Aligns the faces of ``jobs`` in fixed-size batches; yields one :class:`Outcome` per job.

  **Streaming.** Jobs are taken from ``jobs`` lazily and prepared (loaded, i.e. image decoded,
  faces found when the job gives no box (:func:`face_boxes`), boxes checked, one working crop
  cut per face: :func:`working_crop`) by ``workers`` threads, up to
  ``prefetch_batches * batch_size`` jobs ahead, while the previous batch runs in the jitted
  cascade: each batch is *dispatched* asynchronously and its results are only waited for once
  the next batch has been dispatched (or the input has ended). So at most
  ``(prefetch_batches + 2) * batch_size`` jobs are loaded and not yet yielded at any moment,
  whatever the number of jobs (``stats.max_in_memory`` records the peak). Decoding and
  resampling run in Pillow / NumPy, which release the GIL. With ``workers=0`` every job is
  prepared in the calling thread when its turn comes (no threads; the same outcomes).
  Loaders must be thread-safe when ``workers > 0``.

  **Several faces.** Each face of a job is its own crop in the batches (the faces of one image
  may span two batches); the job's outcome comes when its last face is done, with ``faces`` in
  box order (detections best first).

  A job whose loading raises ``ValueError`` / ``OSError`` (unreadable image, bad box, bad
  annotation) yields an outcome with ``error`` set as soon as its turn comes, and so does a job
  with no face (``faces == []``, no error); one with a non-finite result yields an error outcome
  with its batch; the rest go on. Outcomes of jobs with faces come when their batch is done, in
  input order. The jitted function is compiled once per cascade and batch size (the last batch
  is padded by repeating its last face).

  Args:
    aligner: from :func:`load_aligner`.
    jobs: the images (any iterable; consumed lazily).
    batch_size: faces per jitted call.
    progress: show a tqdm bar on stderr (when stderr is a terminal).
    total: number of jobs, for the bar.
    keep_loaded: attach the :class:`Loaded` image / truth to each outcome (for overlays); with
      ``False`` the image is dropped as soon as its working crops are cut.
    workers: threads preparing jobs (``0``: in the calling thread).
    prefetch_batches: how many batches of jobs are prepared ahead (``>= 1`` with workers).
    stats: a :class:`RunStats` to fill in (counts, time split, peak jobs in memory).
    detect: the face detector for jobs without a box, ``image -> (boxes [N, 4], scores [N])``
      (default :func:`dff_jax.detection.detect_faces`).

  Raises:
    ValueError: ``batch_size < 1``, ``workers < 0`` or ``prefetch_batches < 1``.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if workers < 0:
    raise ValueError(f"workers must be >= 0, got {workers}")
  if prefetch_batches < 1:
    raise ValueError(f"prefetch_batches must be >= 1, got {prefetch_batches}")
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  stats = RunStats() if stats is None else stats
  lock = threading.Lock()
  bar = tqdm(total=total, unit="image", desc=f"align ({aligner.name})", dynamic_ncols=True,
             disable=None if progress else True)
  pool = (futures_lib.ThreadPoolExecutor(workers, thread_name_prefix="dff-align-prepare")
          if workers > 0 else None)
  window_size = prefetch_batches * batch_size if pool is not None else 1
  window: collections.deque = collections.deque()
  source = iter(jobs)
  exhausted = False

  def prepare(job: Job):
    start = time.perf_counter()
    try:
      prepared = _prepare(aligner, job, detect)
    finally:
      elapsed = time.perf_counter() - start
      with lock:
        stats.prepare_s += elapsed
    with lock:
      stats.in_memory += 1
      stats.max_in_memory = max(stats.max_in_memory, stats.in_memory)
    return prepared

  def fill():
    nonlocal exhausted
    while not exhausted and len(window) < window_size:
      job = next(source, _END)
      if job is _END:
        exhausted = True
        break
      stats.jobs += 1
      window.append((job, pool.submit(prepare, job) if pool is not None
                     else _Deferred(prepare, job)))

  def release():
    with lock:
      stats.in_memory -= 1

  def dispatch(entries):
    """``entries``: ``(record, index, box, score, work_image, crop_box, work_box)`` per face."""
    images = np.stack([e[4] for e in entries])
    boxes = np.stack([e[6] for e in entries])
    count = len(entries)
    if count < batch_size:
      images = np.concatenate([images, np.repeat(images[-1:], batch_size - count, 0)])
      boxes = np.concatenate([boxes, np.repeat(boxes[-1:], batch_size - count, 0)])
    start = time.perf_counter()
    result = aligner.dispatch(images, boxes)
    stats.align_s += time.perf_counter() - start
    stats.batches += 1
    return [e[:4] + (e[5],) for e in entries], result

  def collect(batch):
    entries, device_result = batch
    start = time.perf_counter()
    result = aligner.fetch(device_result)
    stats.align_s += time.perf_counter() - start
    for n, (record, index, box, score, crop_box) in enumerate(entries):
      record.faces[index] = to_image_frame(result, n, crop_box, box, aligner.work_size, score)
      record.remaining -= 1
      if record.remaining:
        continue
      release()
      bar.update(1)
      if all(face.is_finite() for face in record.faces):
        stats.faces += len(record.faces)
        yield Outcome(job=record.job, faces=list(record.faces), loaded=record.loaded)
      else:
        stats.failures += 1
        yield Outcome(job=record.job, loaded=record.loaded,
                      error=f"{record.job.name}: alignment diverged (non-finite result)")

  pending: List[Tuple[Any, ...]] = []
  in_flight = None
  try:
    fill()
    while window:
      job, future = window.popleft()
      fill()
      start = time.perf_counter()
      try:
        loaded, entries = future.result()
      except READ_ERRORS as error:
        stats.wait_prepare_s += time.perf_counter() - start
        message = one_line(error)
        if job.name not in message:
          message = f"{job.name}: {message}"
        stats.failures += 1
        bar.update(1)
        yield Outcome(job=job, error=message)
        continue
      stats.wait_prepare_s += time.perf_counter() - start
      if not keep_loaded:
        loaded = Loaded(image=np.zeros((0, 0, 3), np.uint8), truth=loaded.truth)
      if not entries:  # no face in this image
        release()
        bar.update(1)
        yield Outcome(job=job, faces=[], loaded=loaded)
        continue
      record = _Record(job=job, loaded=loaded, faces=[None] * len(entries),
                       remaining=len(entries))
      for index, (box, score, work_image, crop_box, work_box) in enumerate(entries):
        pending.append((record, index, box, score, work_image, crop_box, work_box))
        if len(pending) == batch_size:
          started = dispatch(pending)
          pending = []
          if in_flight is not None:
            yield from collect(in_flight)
          in_flight = started
    if pending:
      started = dispatch(pending)
      pending = []
      if in_flight is not None:
        yield from collect(in_flight)
      in_flight = started
    if in_flight is not None:
      batch, in_flight = in_flight, None
      yield from collect(batch)
  finally:
    bar.close()
    if pool is not None:
      for _, future in window:
        future.cancel()
      pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------------------
# Image lists and box files (experiments/align.py)
# ----------------------------------------------------------------------------------------------


def find_images(spec: str) -> Tuple[List[Path], List[Path]]:
  """Image files named by ``spec`` and the files passed over.

  ``spec`` is a file, a directory (its files with an :data:`IMAGE_EXTENSIONS` extension,
  sorted, not recursive), a glob pattern (its matches with such an extension), or a
  comma-separated list of those. A file named directly is always taken (its content decides).

  Returns:
    ``(images, skipped)``: ``skipped`` are the other files of the directories and glob
    matches (sub-directories are not counted), for :func:`skipped_files_line`.

  Raises:
    FileNotFoundError: a part matches nothing, or no image at all (the message names the
      skipped files).
  """
  paths: List[Path] = []
  skipped: List[Path] = []

  def take(candidates):
    for path in candidates:
      (paths if path.suffix.lower() in IMAGE_EXTENSIONS else skipped).append(path)

  for part in [p for p in spec.split(",") if p]:
    path = Path(part)
    if path.is_dir():
      take(sorted(p for p in path.iterdir() if p.is_file()))
    elif path.is_file():
      paths.append(path)
    elif glob_lib.has_magic(part):
      take(sorted(Path(p) for p in glob_lib.glob(part) if Path(p).is_file()))
    else:
      raise FileNotFoundError(f"--images={part}: no such file or directory")
  if not paths:
    passed = f" ({skipped_files_line(skipped)})" if skipped else ""
    raise FileNotFoundError(f"--images={spec}: no image files found{passed}")
  return paths, skipped


def list_images(spec: str) -> List[Path]:
  """The image files of :func:`find_images` (without the skipped ones)."""
  return find_images(spec)[0]


def skipped_files_line(skipped: Sequence[Path], limit: int = 20) -> str:
  """``"skipped N files that are not images (no image extension): a.txt, b.csv"`` (the first
  ``limit`` named, then ``"and M more"``)."""
  names = [str(p) for p in skipped[:limit]]
  if len(skipped) > limit:
    names.append(f"and {len(skipped) - limit} more")
  noun = "file that is not an image" if len(skipped) == 1 else "files that are not images"
  return f"skipped {len(skipped)} {noun} (no image extension): {', '.join(names)}"


def read_boxes_file(path: str | os.PathLike) -> Dict[str, Any]:
  """Reads ``{"image name": box, ...}`` (values checked per image later, see
  :func:`face_boxes`): ``[x0, y0, x1, y1]`` one face, ``[[x0, y0, x1, y1], ...]`` several
  (``[]``: none), ``null`` or ``"detect"`` every face the detector finds, ``"whole"`` the whole
  image as the face crop.

  Raises:
    FileNotFoundError / ValueError: missing file, bad JSON or not an object.
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"--boxes file {path} does not exist")
  try:
    document = json.loads(path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as error:
    raise ValueError(f"--boxes file {path} is not valid JSON ({one_line(error)})") from None
  if not isinstance(document, dict):
    raise ValueError(f"--boxes file {path} must hold a JSON object mapping image file names to "
                     "[x0, y0, x1, y1]")
  return document


def box_for(boxes: Dict[str, Any], image_path: Path) -> Tuple[bool, Any]:
  """``(found, box)`` for an image: keys are tried as the path given, the file name, then the
  stem."""
  for key in (str(image_path), image_path.name, image_path.stem):
    if key in boxes:
      return True, boxes[key]
  return False, None


def parse_bbox(text: str) -> np.ndarray | str:
  """``"x0,y0,x1,y1"`` -> ``[4]`` float32 (finite, non-empty); ``"whole"`` / ``"detect"`` are
  returned as they are (:data:`WHOLE_IMAGE`, :data:`DETECT`)."""
  if text.strip() in (WHOLE_IMAGE, DETECT):
    return text.strip()
  try:
    values = [float(v) for v in text.split(",")]
  except ValueError:
    raise ValueError(f"--bbox={text}: expected four numbers x0,y0,x1,y1 (or {WHOLE_IMAGE!r}, "
                     f"{DETECT!r})") from None
  if len(values) != 4 or not np.all(np.isfinite(values)) or values[2] <= values[0] \
      or values[3] <= values[1]:
    raise ValueError(f"--bbox={text}: expected four finite numbers x0,y0,x1,y1 with x1 > x0 and "
                     "y1 > y0")
  return np.asarray(values, np.float32)


def output_stems(paths: Sequence[Path]) -> List[str]:
  """One distinct output stem per image (``name`` or ``name_ext`` when stems collide)."""
  counts: Dict[str, int] = {}
  for path in paths:
    counts[path.stem] = counts.get(path.stem, 0) + 1
  stems, used = [], set()
  for path in paths:
    stem = path.stem if counts[path.stem] == 1 else f"{path.stem}_{path.suffix.lstrip('.')}"
    base, n = stem, 1
    while stem in used:
      n += 1
      stem = f"{base}_{n}"
    used.add(stem)
    stems.append(stem)
  return stems


# ----------------------------------------------------------------------------------------------
# Evaluation sets (experiments/eval_alignment.py)
# ----------------------------------------------------------------------------------------------

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
  """``[68, 2]`` -> ``[4]`` bounding box of the points (x0, y0, x1, y1)."""
  landmarks_px = np.asarray(landmarks_px, np.float32)
  return np.concatenate([landmarks_px.min(0), landmarks_px.max(0)])


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
                               yaw_deg=float(np.degrees(example["pose"][2]))))
    return Job(name=f"synthetic_{seed}_{i:06d}", load=load)

  return EvalSet(name="synthetic", jobs=[job(i) for i in range(int(num_faces))],
                 normaliser="bbox", yaw_source="rendering pose",
                 box_protocol="jittered detector-like box around the ground-truth landmarks "
                              f"(data_pipeline.faces.BoxJitter {dict(box_jitter or {})})",
                 pipeline=dict(dataclasses.asdict(config)))


def aflw2000_set(data_dir: str | os.PathLike, num_faces: Optional[int] = None) -> EvalSet:
  """AFLW2000-3D (``imageNNNNN.jpg`` + ``.mat``): 68 projected 3D landmarks, yaw from
  ``Pose_Para`` in our convention (:func:`data_pipeline.readers.read_aflw2000`); the face box is
  the ground-truth landmark bounding box (the usual protocol)."""
  from data_pipeline import readers  # pylint: disable=g-import-not-at-top
  pairs = readers.list_aflw2000(data_dir)
  if num_faces:
    pairs = pairs[:int(num_faces)]

  def job(image_path, mat_path):
    def load():
      annotation = readers.read_aflw2000(mat_path)
      return Loaded(image=image_io.read_image(image_path),
                    box=landmark_box(annotation.landmarks_px),
                    truth=dict(landmarks_px=annotation.landmarks_px,
                               yaw_deg=float(annotation.yaw_deg)))
    return Job(name=str(image_path), load=load)

  return EvalSet(name="aflw2000", jobs=[job(*p) for p in pairs], normaliser="bbox",
                 yaw_source="AFLW2000-3D Pose_Para (our Euler convention)",
                 box_protocol="ground-truth landmark bounding box", landmark_convention="3d")


def faces68_set(data_dir: str | os.PathLike, split: str = "val",
                json_path: Optional[str | os.PathLike] = None,
                num_faces: Optional[int] = None) -> EvalSet:
  """A faces68-layout folder (``images/<name>.jpg`` + ``<split>.json`` or ``json_path``):
  300-W-convention landmarks (the jaw on the visible outline), NME by the outer-eye-corner
  distance, the ground-truth landmark box as the face box; the yaw of the bins is estimated by
  fitting the 3DMM to the annotation (as for ``300w``)."""
  from data_pipeline import readers  # pylint: disable=g-import-not-at-top
  entries = readers.read_faces68(data_dir, split, json_path)
  if num_faces:
    entries = entries[:int(num_faces)]

  def job(entry):
    def load():
      return Loaded(image=image_io.read_image(entry.image_path),
                    box=landmark_box(entry.landmarks_px),
                    truth=dict(landmarks_px=entry.landmarks_px, yaw_deg=None))
    return Job(name=str(entry.image_path), load=load)

  return EvalSet(name="faces68", jobs=[job(e) for e in entries], normaliser="inter_ocular",
                 yaw_source="estimated: 3DMM fitted to the ground-truth landmarks "
                            "(dff_jax.alignment.fit_landmarks, contour='nearest')",
                 box_protocol="ground-truth landmark bounding box")


def folder_300w_set(data_dir: str | os.PathLike, num_faces: Optional[int] = None) -> EvalSet:
  """A 300W-style folder (images + same-stem 1-based ``.pts``, searched recursively); NME by the
  outer-eye-corner distance; the face box is the ground-truth landmark bounding box. 300W has no
  pose: the yaw of the bins is estimated by fitting the 3DMM to the ground truth
  (:func:`add_estimated_yaw`)."""
  from data_pipeline import readers  # pylint: disable=g-import-not-at-top
  pairs = readers.list_300w(data_dir)
  if num_faces:
    pairs = pairs[:int(num_faces)]

  def job(image_path, pts_path):
    def load():
      landmarks = readers.read_pts(pts_path)
      return Loaded(image=image_io.read_image(image_path), box=landmark_box(landmarks),
                    truth=dict(landmarks_px=landmarks, yaw_deg=None, pts_path=str(pts_path)))
    return Job(name=str(image_path), load=load)

  return EvalSet(name="300w", jobs=[job(*p) for p in pairs], normaliser="inter_ocular",
                 yaw_source="estimated: 3DMM fitted to the ground-truth landmarks "
                            "(dff_jax.alignment.fit_landmarks, contour='nearest')",
                 box_protocol="ground-truth landmark bounding box")


def estimate_yaw_deg(model: face_model_lib.FaceModel, landmarks_px: np.ndarray,
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
