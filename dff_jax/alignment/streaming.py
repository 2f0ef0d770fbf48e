"""Streaming a trained cascade over image files: jobs, fixed-size batches, outcomes, image lists
and boxes files.

Shared by ``experiments/align.py`` (landmarks, pose and shape for any images),
:mod:`dff_jax.evaluation.alignment` (``experiments/eval_alignment.py``) and
:class:`dff_jax.Aligner`. Loading and compiling the cascade, the host-side working crops and the
face boxes of an image are :mod:`dff_jax.alignment.runner`.

**Streaming.** :func:`run_jobs` takes its jobs lazily, prepares them (image decoding, host crop)
in a small thread pool a couple of batches ahead while the jitted cascade runs the current batch
(one batch at a time in the process: :mod:`dff_jax.alignment.runner`, "Threads"). The number of
decoded images in memory is bounded (``(prefetch_batches + 2) * batch_size``) whatever the number
of images, and :class:`RunStats` records the time split.

**Refinement.** A face the detector found is aligned again from the box of its own
``landmarks_px`` (:func:`refined_box`: the landmark bounding box, the box convention the cascade
was trained around), up to ``refine`` times (:data:`REFINE_DETECTED`), until the crop stops
moving (:func:`refinement_converged`, :data:`REFINE_MIN_CHANGE`); a detector's box, even
corrected, is a cruder start than that (WORKSPACE.md sections 11, 13 and 14). Given boxes are
aligned once unless their :class:`Loaded` asks for passes: the public entry points
(:meth:`dff_jax.Aligner.align`, ``experiments.align``) ask for them unless the boxes are said to
be landmark boxes (:data:`BOX_CONVENTIONS`, :func:`given_box_passes`).

**Failures.** Loading a job (reading the image, its box, its annotation) that raises a
``ValueError`` / ``OSError`` (e.g. :class:`dff_jax.image_io.ImageReadError`, a bad box) or
produces a non-finite result yields an :class:`Outcome` with a one-line ``error`` and no face;
the other jobs go on.

Length: a little over 500 lines: :func:`run_jobs` (the batching loop, its threads and the
refinement passes) with the jobs and image lists it consumes.
"""
from __future__ import annotations

import collections
import dataclasses
import glob as glob_lib
import json
import os
import threading
import time
from concurrent import futures as futures_lib
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from dff_jax import geometry
from dff_jax.alignment import results
from dff_jax.alignment.runner import DETECT, WHOLE_IMAGE, CompiledCascade, asks_detection
from dff_jax.alignment.runner import check_box, face_boxes, to_image_frame, working_crop

Face = results.Face  # one face's alignment, image pixels (see dff_jax.alignment.results)
READ_ERRORS = (ValueError, OSError)
# The most extra passes for a face the detector found (or a detector's box), each from the box
# of the last pass's landmarks, ...
REFINE_DETECTED = 2
# ... stopping once the crop the next pass would cut has converged: its centre and side move by
# at most this fraction of the current crop's side (refinement_converged). Chosen on faces68 val
# and AFLW2000-3D dev (WORKSPACE.md section 14, "Boxes from another detector").
REFINE_MIN_CHANGE = 0.05
# What a given face box is (given_box_passes): "detector", any face detector's box (dlib's,
# OpenCV's, a hand-drawn one), refined like a detection; "landmarks", the bounding box of the
# face's 68 landmarks (the 300-W / AFLW2000-3D evaluation protocol), aligned once.
BOX_CONVENTIONS = ("detector", "landmarks")

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


# ----------------------------------------------------------------------------------------------
# Jobs and batches
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Loaded:
  """What a job's loader returns.

  Attributes:
    image: ``[H, W, 3]`` uint8 RGB, or ``[H, W, 1]`` uint8 grey (BT.601 luma) when the aligner
      reads only the luma and nothing else needs colour (no overlay, no detection).
    box: the face box(es) in image pixels: ``[4]`` one face, ``[N, 4]`` several (``N = 0``:
      none), ``None`` / :data:`DETECT` every face the detector finds, :data:`WHOLE_IMAGE` the
      whole image as the face crop.
    truth: optional ground truth (e.g. ``landmarks_px [68, 2]``, ``yaw_deg``) passed through.
    scores: optional ``[N]`` scores of given boxes (e.g. from an earlier detection), reported
      as each face's ``score``.
    refine: extra passes for each face of this image, each from the box of the previous pass's
      ``landmarks_px`` (:func:`refined_box`); ``None``: :func:`run_jobs`'s ``refine`` for
      detected faces, 0 for given boxes.
  """
  image: np.ndarray
  box: Any = None
  truth: Optional[Dict[str, Any]] = None
  scores: Optional[Sequence[float]] = None
  refine: Optional[int] = None


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


def check_box_convention(box_convention: str) -> str:
  """``box_convention`` if it is one of :data:`BOX_CONVENTIONS`.

  Raises:
    ValueError: an unknown convention (the message lists the known ones).
  """
  if box_convention not in BOX_CONVENTIONS:
    raise ValueError(f"box_convention must be one of {BOX_CONVENTIONS}, got {box_convention!r}")
  return box_convention


def given_box_passes(box: Any, box_convention: str, refine: int) -> Optional[int]:
  """The refinement passes of an image's faces (:class:`Loaded`'s ``refine``): ``None`` (the
  run's ``refine``) when its faces are to be detected, 0 for :data:`WHOLE_IMAGE` (the crop is
  given), else ``refine`` for boxes of the ``"detector"`` convention and 0 for ``"landmarks"``
  boxes (:data:`BOX_CONVENTIONS`).

  Raises:
    ValueError: an unknown ``box_convention``.
  """
  check_box_convention(box_convention)
  if asks_detection(box):
    return None
  if isinstance(box, str) and box == WHOLE_IMAGE:
    return 0
  return int(refine) if box_convention == "detector" else 0


def refinement_converged(crop_box: np.ndarray, next_box: np.ndarray, box_scale: float,
                         min_change: float) -> bool:
  """Whether the crop a refinement pass would cut around ``next_box`` (the square of side
  ``box_scale * max(w, h)``) is within ``min_change`` of the current ``crop_box`` (both
  ``[4]`` image pixels): its centre moved by at most ``min_change`` times the current side and
  its side changed by at most that much. ``min_change = 0`` never counts as converged."""
  crop_box = np.asarray(crop_box, np.float64)
  next_crop = np.asarray(geometry.square_box(np.asarray(next_box, np.float32), box_scale),
                         np.float64)
  side = crop_box[2] - crop_box[0]
  moved = np.linalg.norm((next_crop[:2] + next_crop[2:]) / 2 - (crop_box[:2] + crop_box[2:]) / 2)
  resized = abs((next_crop[2] - next_crop[0]) - side)
  return bool(min_change > 0 and max(moved, resized) <= min_change * side)


def refined_box(face: Face, height: int, width: int) -> Optional[np.ndarray]:
  """The box a refinement pass starts from: the bounding box ``[4]`` float32 of
  ``face.landmarks_px`` (image pixels), or ``None`` when :func:`check_box` would refuse it
  (not finite, under 2 px, outside the image)."""
  try:
    return check_box(geometry.landmark_box(np.asarray(face.landmarks_px, np.float32)), height,
                     width)
  except ValueError:
    return None


def _prepare(aligner: CompiledCascade, job: Job, detect=None, refine: int = REFINE_DETECTED):
  """Loads a job and cuts the working crop of each of its faces.

  Returns ``(loaded, passes, [(box, score, work_image, crop_box), ...])``: ``passes`` is the
  number of refinement passes of each face (:class:`Loaded`'s ``refine``)."""
  loaded = job.load()
  image = np.asarray(loaded.image)
  if image.ndim != 3 or image.shape[-1] not in (1, 3) or image.dtype != np.uint8:
    raise ValueError(f"{job.name}: expected an [H, W, 3] (or grey [H, W, 1]) uint8 image, got "
                     f"{image.shape} {image.dtype}")
  passes = (int(loaded.refine) if loaded.refine is not None
            else refine if asks_detection(loaded.box) else 0)
  if passes < 0:
    raise ValueError(f"{job.name}: refine must be >= 0, got {passes}")
  boxes, scores = face_boxes(image, loaded.box, aligner.config.box_scale, job.name,
                             loaded.scores, detect)
  entries = []
  for box, score in zip(boxes, scores):
    work_image, crop_box, _ = working_crop(image, box, aligner.config, aligner.work_size,
                                           aligner.channels)
    entries.append((box, score, work_image, crop_box))
  return loaded, passes, entries


@dataclasses.dataclass
class RunStats:
  """Counts and times of one :func:`run_jobs` call, filled in as it runs.

  Attributes:
    jobs: jobs taken from the input so far.
    faces: faces aligned (finite result).
    failures: jobs that yielded an ``error`` outcome.
    batches: jitted calls made (the last one padded).
    refinement_passes: refinement passes run (over all faces; 0 without refinement).
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
  refinement_passes: int = 0
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
  """An image whose faces are in the batches: its outcome is yielded when the last is done.
  ``image`` is kept while one of its faces still has a refinement pass to run."""
  job: Job
  loaded: Loaded
  faces: List[Optional[Face]]
  remaining: int
  image: Optional[np.ndarray] = None


def run_jobs(aligner: CompiledCascade, jobs: Iterable[Job], batch_size: int = 8,
             progress: bool = True, total: Optional[int] = None,
             keep_loaded: bool = True, workers: int = 2, prefetch_batches: int = 2,
             stats: Optional[RunStats] = None,
             detect: Optional[Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]] = None,
             refine: int = REFINE_DETECTED,
             refine_min_change: Optional[float] = None) -> Iterator[Outcome]:
  """Aligns the faces of ``jobs`` in fixed-size batches; yields one :class:`Outcome` per job.

  **Streaming.** Jobs are taken from ``jobs`` lazily and prepared (loaded, i.e. image decoded,
  faces found when the job gives no box (:func:`face_boxes`), boxes checked, one working crop
  cut per face: :func:`working_crop`) by ``workers`` threads, up to
  ``prefetch_batches * batch_size`` jobs ahead, while the current batch runs in the jitted
  cascade (:meth:`dff_jax.alignment.runner.CompiledCascade.dispatch`, one batch at a time in the
  process). So at most
  ``(prefetch_batches + 2) * batch_size`` jobs are loaded and not yet yielded at any moment,
  whatever the number of jobs (``stats.max_in_memory`` records the peak). Decoding and
  resampling run in Pillow / NumPy, which release the GIL. With ``workers=0`` every job is
  prepared in the calling thread when its turn comes (no threads; the same outcomes).
  Loaders must be thread-safe when ``workers > 0``.

  **Several faces.** Each face of a job is its own crop in the batches (the faces of one image
  may span two batches); the job's outcome comes when its last face is done, with ``faces`` in
  box order (detections best first).

  **Refinement.** A face with passes left (``refine`` for detected faces, or its
  :class:`Loaded`'s ``refine``) goes back into the batches, cut again around
  :func:`refined_box` of its result, when its batch is done, unless that crop has converged
  (``refine_min_change``); its ``box`` stays the one it
  started from and its ``crop_box`` is the last pass's. Its job's outcome comes after the last
  pass, so jobs with refined faces may come later than jobs given after them, and their images
  stay in memory for those passes (a batch more each, beyond the bound above).

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
    refine: the most refinement passes of each detected face (:data:`REFINE_DETECTED`; 0: none).
    refine_min_change: a face's refinement stops once the next pass's crop would move by at
      most this fraction of its side (:func:`refinement_converged`; 0: every pass is run;
      ``None``: :data:`REFINE_MIN_CHANGE`).

  Raises:
    ValueError: ``batch_size < 1``, ``workers < 0``, ``prefetch_batches < 1`` or
      ``refine < 0``.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if workers < 0:
    raise ValueError(f"workers must be >= 0, got {workers}")
  if prefetch_batches < 1:
    raise ValueError(f"prefetch_batches must be >= 1, got {prefetch_batches}")
  if refine < 0:
    raise ValueError(f"refine must be >= 0, got {refine}")
  if refine_min_change is None:
    refine_min_change = REFINE_MIN_CHANGE
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
      prepared = _prepare(aligner, job, detect, refine)
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
    """``entries``: ``(record, index, box, score, work_image, crop_box, passes)`` per face."""
    images = np.stack([e[4] for e in entries])
    count = len(entries)
    if count < batch_size:
      images = np.concatenate([images, np.repeat(images[-1:], batch_size - count, 0)])
    start = time.perf_counter()
    result = aligner.dispatch(images)
    stats.align_s += time.perf_counter() - start
    stats.batches += 1
    return [e[:4] + e[5:] for e in entries], result

  def collect(batch):
    """Yields the outcomes the batch completes; faces with passes left go back to ``pending``."""
    entries, device_result = batch
    start = time.perf_counter()
    result = aligner.fetch(device_result)
    stats.align_s += time.perf_counter() - start
    for n, (record, index, box, score, crop_box, passes) in enumerate(entries):
      face = to_image_frame(result, n, crop_box, box, aligner.work_size, score)
      again = (refined_box(face, *record.image.shape[:2])
               if passes and face.is_finite() else None)
      if again is not None and refinement_converged(crop_box, again, aligner.config.box_scale,
                                                    refine_min_change):
        again = None
      if again is not None:
        work_image, crop_box, _ = working_crop(record.image, again, aligner.config,
                                               aligner.work_size, aligner.channels)
        pending.append((record, index, box, score, work_image, crop_box, passes - 1))
        stats.refinement_passes += 1
        continue
      record.faces[index] = face
      record.remaining -= 1
      if record.remaining:
        continue
      record.image = None
      release()
      bar.update(1)
      if all(face.is_finite() for face in record.faces):
        stats.faces += len(record.faces)
        yield Outcome(job=record.job, faces=list(record.faces), loaded=record.loaded)
      else:
        stats.failures += 1
        yield Outcome(job=record.job, loaded=record.loaded,
                      error=f"{record.job.name}: alignment diverged (non-finite result)")

  def pump(final: bool):
    """Runs full batches (every remaining face when ``final``) and yields what each completes
    (a face with passes left goes back to ``pending``)."""
    nonlocal pending
    while len(pending) >= batch_size or (final and pending):
      batch = dispatch(pending[:batch_size])
      pending = pending[batch_size:]
      yield from collect(batch)

  pending: List[Tuple[Any, ...]] = []
  try:
    fill()
    while window:
      job, future = window.popleft()
      fill()
      start = time.perf_counter()
      try:
        loaded, passes, entries = future.result()
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
      image = loaded.image if passes and entries else None
      if not keep_loaded:
        loaded = Loaded(image=np.zeros((0, 0, 3), np.uint8), truth=loaded.truth)
      if not entries:  # no face in this image
        release()
        bar.update(1)
        yield Outcome(job=job, faces=[], loaded=loaded)
        continue
      record = _Record(job=job, loaded=loaded, faces=[None] * len(entries),
                       remaining=len(entries), image=image)
      for index, (box, score, work_image, crop_box) in enumerate(entries):
        pending.append((record, index, box, score, work_image, crop_box, passes))
        yield from pump(final=False)
    yield from pump(final=True)
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
