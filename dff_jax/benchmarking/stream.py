r"""Throughput of the streaming align command on a folder (``--what=stream``): end to end vs the
jitted call alone, and dlib's landmark predictor on the same boxes when ``dlib`` is importable.

The folder (``data_dir``):

* a folder of photos (any image files, no ``dataset.json``): its first ``num_images`` images;
  face boxes from its ``boxes.json`` when present (``{"name": [x0, y0, x1, y1]}``, the first box
  of a list), else from an AFLW2000-3D annotation beside the photo (the 68 landmarks' box), else
  the best face :func:`dff_jax.detection.detect_faces` finds (photos without a
  face are left out: ``images_without_face``). Every measurement uses these same boxes.
* otherwise (``None``: a folder under the system temp dir named after the settings) the first
  run renders ``num_images`` synthetic faces (:class:`data_pipeline.faces.FaceSource`,
  ``image_size`` px, pipeline seed ``seed``, detector-like jittered boxes) as JPEG files
  (quality 90) with a ``boxes.json`` into it; later runs reuse them (about 0.1-0.2 s per face to
  render on a 2-core CPU). A function caller may name a new or empty folder for them; a folder
  holding other files is never rendered into. The command (``benchmark --what=stream``) renders
  only into the default folder: its ``--data_dir`` must hold photos (or be a complete cache of
  the same settings), else it stops before anything runs (:func:`check_data_dir`).

Then, with one aligner (``cascade`` / ``features`` / ``checkpoint``; default the shipped DFF
cascade and encoder, falling back to the shipped SIFT cascade with a message when they are not
installed), one record per measurement, ``what = "align_stream"``:

* ``mode = "jitted_call"``: the aligner's compiled cascade alone on the same batches of
  ``batch_size`` working images, already decoded and cropped in memory (the last batch
  padded): the ceiling for the streaming run.
* ``mode = "jitted_call_describe_all_first"``: the same batches through the previous layout of
  the call (:func:`describe_all_first`: sampled crops, every crop described before the cascade
  starts), timed in turns with ``jitted_call`` (median of ``passes``); ``ratio_to_jitted_call``
  is its faces/s over the current call's.
* ``mode = "jitted_call_per_face_head"`` (point-field descriptors only): the same call with the
  fields' ``shared_head`` cleared (:func:`per_face_head`), so the cascade applies every face's
  head as a product of its own, as before :func:`dff_jax.descriptor_fields.vmap_faces`; timed
  in the same turns, with ``ratio_to_jitted_call``.
* ``mode = "jitted_call_xla_conv"`` (DFF descriptors only): the same call with every 3x3
  convolution of the encoder XLA's own (:func:`xla_convolutions`; the aligner's call picks
  Winograd's where it is cheaper, :func:`dff_jax.convolution.conv3x3_algorithm`); timed in the
  same turns, with ``ratio_to_jitted_call``.
* ``mode = "host_costs"`` (photos only, :func:`host_costs`): the host's per-image work in one
  thread, decoding, working crop and JSON, each the way ``align`` does it now (grey decode,
  one-line JSON) and the way it did before (RGB, indented JSON).
* ``mode = "end_to_end"`` (once per ``overlays`` value and ``processes`` count):
  :func:`dff_jax.alignment.files.align_files` on the images with the boxes file: decoding in
  ``workers`` threads, the jitted batches, JSON (and overlay PNG) writing in ``writers``
  threads, into a temporary output folder that is deleted afterwards; with ``processes > 1``
  in that many worker processes (``align --processes``), each pinned to its share of the cores.
  ``ratio_to_jitted_call`` = its images/s over the jitted call's (in this process): the issue
  asks for >= 0.8 on a 2-core CPU (decoding and writing must not dominate); worker processes
  can exceed 1, as one process leaves cores idle. Their CPU (loading and compiling included)
  counts in ``cpu_s``; the ``rss_mb_*`` fields are this process's alone.
* ``mode = "dlib_predictor"`` (only when ``import dlib`` works; never required; one record per
  ``processes`` count): dlib's ``shape_predictor`` (the model file ``dlib_predictor``, default
  the one the optional ``face_recognition_models`` package ships; this project ships and
  downloads none) on the same images and boxes, one face at a time, each image decoded (luma)
  inside the timed loop, in that many processes (each pinned to its share of the cores, as
  ``align``'s workers); ``ratio_to_jitted_call`` and
  ``ratio_to_end_to_end`` (faces/s over ours; the end-to-end run of the first ``overlays``
  value with the same process count). Without a model file one record says ``skipped``.

Fields: ``what``, ``mode``, ``batch_size``, ``items_per_second`` (faces/s: one box per image),
``ms_per_item`` (ms per face), ``compile_s`` (lowering + compiling the cascade for the batch
size, once per run), ``num_images``, ``features``, ``cascade``, ``mirror``, ``matmul_dtype``
(the encoder's product operands, ``align --matmul_dtype``; ``None``: its own), ``source``
(``"rendered"`` or ``"photos"``); end to end also ``overlays``, ``wall_s``, ``failures``, the time split
``decode_s`` / ``write_s`` (summed over their threads) and ``align_s`` (the calling thread in the
jitted calls) and ``wait_decode_s`` (waiting for decoding), ``max_images_in_memory`` (decoded
images held at once), and the resident memory over time: ``rss_mb_start``, ``rss_mb_peak``,
``rss_mb_end`` and ``rss_mb_by_tenth`` (the peak in each tenth of the run: flat means steady
memory); ``jitted_call`` also ``step_s`` (median seconds per batch) and ``prepare_s`` (decoding +
cropping all images in one thread). Both modes give ``cpu_s`` (process CPU seconds, all threads)
and ``items_per_cpu_second``; end to end also ``cpu_ratio_to_jitted_call``, the CPU-cost ratio,
which stays meaningful on a shared machine (when the cascade keeps both cores busy, the
wall-time ratio on a quiet machine approaches it; when it does not, decoding and writing run on
the idle core and the wall ratio is higher). Every record has ``loadavg``.

Length: a little over 500 lines: the stream's modes (jitted call, end to end, host costs,
optional dlib) measured on the same photos and boxes in one run, as they must be compared.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from dff_jax import benchmarking

DATASET_FILE = "dataset.json"
BOXES_FILE = "boxes.json"


def rss_mb() -> float:
  """Current resident set size of this process (MB), from /proc (0 where unavailable)."""
  try:
    with open("/proc/self/statm") as stream:
      pages = int(stream.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
  except (OSError, ValueError, IndexError):
    return 0.0


class RssSampler:
  """Samples the process's resident memory every ``interval_s`` in a background thread.

  Use as a context manager; ``samples`` is a list of ``(seconds since start, MB)``.
  """

  def __init__(self, interval_s: float = 0.05):
    self.interval_s = interval_s
    self.samples: List[tuple] = []
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

  def _run(self) -> None:
    start = time.perf_counter()
    while True:
      self.samples.append((time.perf_counter() - start, rss_mb()))
      if self._stop.wait(self.interval_s):
        break
    self.samples.append((time.perf_counter() - start, rss_mb()))

  def __enter__(self) -> "RssSampler":
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    self._thread.join()

  def summary(self) -> Dict[str, Any]:
    """``rss_mb_start`` / ``_peak`` / ``_end`` and ``rss_mb_by_tenth`` (peak per tenth of the
    run)."""
    if not self.samples:
      return {}
    duration = max(self.samples[-1][0], 1e-9)
    tenths = [0.0] * 10
    for t, mb in self.samples:
      index = min(int(10 * t / duration), 9)
      tenths[index] = max(tenths[index], mb)
    for i in range(1, 10):  # a tenth without a sample: carry the previous value
      tenths[i] = tenths[i] or tenths[i - 1]
    return {"rss_mb_start": round(self.samples[0][1], 1),
            "rss_mb_peak": round(max(mb for _, mb in self.samples), 1),
            "rss_mb_end": round(self.samples[-1][1], 1),
            "rss_mb_by_tenth": [round(v, 1) for v in tenths]}


# ----------------------------------------------------------------------------------------------
# The folder: rendered once and cached, or the user's photos
# ----------------------------------------------------------------------------------------------


def default_data_dir(image_size: int, seed: int) -> Path:
  """The default cache folder of the rendered faces (under the system temp dir)."""
  return Path(tempfile.gettempdir()) / f"dff_jax_bench_stream_{image_size}_{seed}"


def _cache_settings(num_images: int, image_size: int, seed: int, quality: int) -> dict:
  """What ``dataset.json`` of a rendered cache records."""
  return dict(num_images=int(num_images), image_size=int(image_size), seed=int(seed),
              quality=int(quality), source="data_pipeline.faces.FaceSource")


def cache_is_complete(data_dir: str | os.PathLike, num_images: int = 1000,
                      image_size: int = 224, seed: int = 50_000, quality: int = 90) -> bool:
  """Whether ``data_dir`` is a cache of rendered faces (:func:`make_dataset`) with these
  settings and at least ``num_images`` faces: reused as it is, nothing rendered."""
  data_dir = Path(data_dir)
  marker = data_dir / DATASET_FILE
  if not (marker.is_file() and (data_dir / BOXES_FILE).is_file()):
    return False
  try:
    cached = json.loads(marker.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError):
    return False
  return (isinstance(cached, dict) and cached.get("num_images", 0) >= num_images
          and {**cached, "num_images": int(num_images)}
          == _cache_settings(num_images, image_size, seed, quality))


def check_data_dir(data_dir: str | os.PathLike, num_images: int = 1000, image_size: int = 224,
                   seed: int = 50_000) -> None:
  """The command's ``--data_dir`` (``benchmark --what=stream``), checked before anything runs:
  a folder of photos, or a complete cache of rendered faces with these settings (only read).
  Rendering happens only into the default cache (``--data_dir`` left out), never into a folder
  the user names.

  Raises:
    FileNotFoundError: no such folder. ValueError: no image files in it, or a cache of other
      settings (one line, naming the flag and what to give).
  """
  where = f"--data_dir={data_dir}"
  leave_out = ("or leave --data_dir out to benchmark rendered faces (cached under "
               f"{default_data_dir(image_size, seed)})")
  path = Path(data_dir)
  if not path.is_dir():
    raise FileNotFoundError(f"{where}: no such folder; give a folder of photos (with "
                            f"{BOXES_FILE} or detected boxes), {leave_out}")
  if (path / DATASET_FILE).exists():
    if not cache_is_complete(path, num_images, image_size, seed):
      raise ValueError(f"{where} is a cache of rendered faces made with other settings or fewer "
                       f"faces than --num_images={num_images} --image_size={image_size} "
                       f"--seed={seed} (see its {DATASET_FILE}); give those settings, {leave_out}")
    return
  if not photo_paths(path):
    raise ValueError(f"{where} holds no image files (.jpg, .png, ...); give a folder of photos "
                     f"(with {BOXES_FILE} or detected boxes), {leave_out}")


def make_dataset(data_dir: str | os.PathLike, num_images: int = 1000, image_size: int = 224,
                 seed: int = 50_000, quality: int = 90,
                 report: Callable[[str], None] = lambda m: None) -> List[Path]:
  """Renders ``num_images`` synthetic faces as JPEGs plus ``boxes.json`` into ``data_dir``
  (reused when ``data_dir/dataset.json`` records the same settings and at least as many
  images: face ``i`` depends only on the seed and ``i``).

  Returns:
    The ``num_images`` image files (``data_dir/images/face_00000.jpg``, ...); the boxes file is
    ``data_dir/boxes.json`` (``{"face_00000.jpg": [x0, y0, x1, y1], ...}``, image pixels,
    jittered detector-like boxes).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from data_pipeline import faces as faces_lib  # pylint: disable=g-import-not-at-top
  from data_pipeline.config import pipeline_config_from_dict  # pylint: disable=g-import-not-at-top
  from dff_jax import file_io  # pylint: disable=g-import-not-at-top
  data_dir = Path(data_dir)
  images = data_dir / "images"
  names = [f"face_{i:05d}.jpg" for i in range(int(num_images))]
  marker = data_dir / DATASET_FILE
  settings = _cache_settings(num_images, image_size, seed, quality)
  if cache_is_complete(data_dir, num_images, image_size, seed, quality):
    return [images / name for name in names]
  images.mkdir(parents=True, exist_ok=True)
  config = pipeline_config_from_dict(dict(image_size=int(image_size), num_views=2,
                                          num_correspondences=16), seed=int(seed))
  source = faces_lib.FaceSource(config, faces_lib.BoxJitter(), num_examples=int(num_images))
  boxes = {}
  start = time.perf_counter()
  for i, name in enumerate(names):
    example = source[i]
    Image.fromarray(example["image"]).save(images / name, quality=int(quality))
    boxes[name] = [round(float(v), 3) for v in example["box"]]
    if (i + 1) % 100 == 0:
      report(f"benchmark stream: rendered {i + 1}/{num_images} faces "
             f"({time.perf_counter() - start:.0f} s)")
  file_io.write_json_atomic(data_dir / BOXES_FILE, boxes)
  file_io.write_json_atomic(marker, settings)
  return [images / name for name in names]


def photo_paths(data_dir: Optional[str | os.PathLike]) -> List[Path]:
  """The image files of ``data_dir`` when it is a folder of photos (no ``dataset.json``), else
  ``[]`` (the rendered cache, or nothing there yet)."""
  if data_dir is None or not Path(data_dir).is_dir() or (Path(data_dir) / DATASET_FILE).exists():
    return []
  from dff_jax.alignment import streaming  # pylint: disable=g-import-not-at-top
  try:
    return streaming.list_images(str(data_dir))
  except FileNotFoundError:
    return []


def photo_boxes(paths: Sequence[Path], boxes_file: Optional[Path]
                ) -> Tuple[Dict[Path, List[float]], int]:
  """One face box per photo: ``boxes_file``'s (the first of a list) where it has one, else the
  box of the 68 landmarks of an AFLW2000-3D annotation beside it (``<stem>.mat``, the protocol
  of ``eval_alignment --dataset=aflw2000``), else the detector's best face.

  Returns:
    ``({path: [x0, y0, x1, y1]}, number of photos left out for want of a face)``.
  """
  from dff_jax import detection, image_io  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import streaming  # pylint: disable=g-import-not-at-top
  given = streaming.read_boxes_file(boxes_file) if boxes_file else {}
  boxes: Dict[Path, List[float]] = {}
  for path in paths:
    _, box = streaming.box_for(given, path)
    if isinstance(box, list) and box and isinstance(box[0], (list, tuple)):
      box = box[0]
    if not (isinstance(box, list) and len(box) == 4) and path.with_suffix(".mat").is_file():
      from data_pipeline import readers  # pylint: disable=g-import-not-at-top
      from dff_jax.evaluation import alignment as evaluation  # pylint: disable=g-import-not-at-top
      landmarks = readers.read_aflw2000(path.with_suffix(".mat")).landmarks_px
      box = [float(v) for v in evaluation.landmark_box(landmarks)]
    if not (isinstance(box, list) and len(box) == 4):
      found, _ = detection.detect_faces(image_io.read_image(path))
      box = found[0].tolist() if len(found) else None
    if box is not None:
      boxes[path] = [round(float(v), 3) for v in box]
  return boxes, len(paths) - len(boxes)


# ----------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------


def resolve_with_fallback(cascade: Optional[str], features: Optional[str],
                          checkpoint: Optional[str], face_model: Optional[str],
                          report: Callable[[str], None], mirror: bool = False,
                          matmul_dtype: Optional[str] = None):
  """:func:`dff_jax.alignment.runner.resolve_aligner`; with no ``cascade`` and the shipped DFF
  assets missing, falls back to the shipped SIFT cascade (with a message).

  Raises:
    FileNotFoundError: nothing usable (the message says to pass ``--cascade``).
  """
  from dff_jax.alignment import runner  # pylint: disable=g-import-not-at-top
  try:
    return runner.resolve_aligner(cascade, features, checkpoint, face_model, mirror=mirror,
                                  matmul_dtype=matmul_dtype)
  except FileNotFoundError as error:
    if cascade is not None or features == "sift":
      raise
    first = " ".join(str(error).split())
  report(f"benchmark stream: {first}; falling back to the shipped SIFT cascade "
         f"{runner.default_cascade_path('sift')}")
  try:
    return runner.resolve_aligner(None, "sift", None, face_model, mirror=mirror)
  except FileNotFoundError:
    raise FileNotFoundError(
        f"{first}; the shipped SIFT cascade {runner.default_cascade_path('sift')} is missing "
        "too: pass --cascade=FILE (and --features=sift for a SIFT cascade)") from None


def describe_all_first(aligner) -> Callable[[np.ndarray, np.ndarray], Any]:
  """The previous layout of the jitted call, for comparison (``mode =
  "jitted_call_describe_all_first"``): crops read from the working images by bilinear sampling
  (:func:`dff_jax.sampling.crop_image`), every crop of the batch described (8 at a time) before
  the cascade runs on all of them (with the aligner's mirroring). Same results as the aligner's
  call within float rounding.

  Returns:
    ``(work_images [B, S, S, 3] uint8, work_boxes [B, 4]) -> AlignmentResult`` fields as NumPy.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import cascade  # pylint: disable=g-import-not-at-top
  describer, config, mirror = aligner.describer, aligner.config, aligner.spec.mirror

  @jax.jit
  def run(describer_params, alignment_model, params, images, boxes):
    crops, crop_boxes = cascade.crop_faces(images, boxes, config)
    fields = cascade.map_in_chunks(lambda c: describer.apply(describer_params, c), crops, 8)
    mirrored = (cascade.map_in_chunks(lambda c: describer.apply(describer_params, c),
                                      crops[:, :, ::-1], 8) if mirror else None)
    states = cascade.align_crops(alignment_model, params, fields, config,
                                 mirrored_maps=mirrored)
    return cascade.state_to_image(states, crop_boxes, config.crop_size, alignment_model)

  def call(images, boxes):
    return aligner.fetch(run(describer.params, aligner.alignment_model, aligner.params,
                             jnp.asarray(images), jnp.asarray(boxes, jnp.float32)))
  return call


def per_face_head(aligner) -> Optional[Callable[[np.ndarray, np.ndarray], Any]]:
  """The aligner's call with every face's point head applied separately (``mode =
  "jitted_call_per_face_head"``): the described fields' ``shared_head`` is cleared, so the
  cascade's reads fall back to a plain ``vmap`` over the broadcast head. Same values as the
  aligner's call; ``None`` when the descriptor gives dense maps (no head).

  Returns:
    ``(work_images [B, S, S, C] uint8, work_boxes [B, 4]) -> AlignmentResult`` fields as NumPy.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dff_jax import descriptor_fields  # pylint: disable=g-import-not-at-top
  describer, config = aligner.describer, aligner.config
  probe = jax.eval_shape(lambda p: describer.apply(
      p, jnp.zeros((1, config.crop_size, config.crop_size, aligner.channels), jnp.float32)),
      describer.params)
  if not isinstance(probe, descriptor_fields.PointField):
    return None
  return _call_describing_with(
      aligner, lambda p, crops: describer.apply(p, crops).replace(shared_head=False),
      describer.params)


def xla_convolutions(aligner) -> Optional[Callable[[np.ndarray, np.ndarray], Any]]:
  """The aligner's call with its encoder's 3x3 convolutions all computed by XLA's convolution
  (``mode = "jitted_call_xla_conv"``; :func:`dff_jax.alignment.features.dff_describer` with
  ``conv="xla"``). The same values to float32 rounding; ``None`` for SIFT descriptors.

  Returns:
    ``(work_images [B, S, S, C] uint8, work_boxes [B, 4]) -> AlignmentResult`` fields as NumPy.
  """
  from dff_jax.alignment import features  # pylint: disable=g-import-not-at-top
  if aligner.describer.kind != "dff":
    return None
  describer = features.dff_describer(aligner.describer.source, conv="xla",
                                     matmul_dtype=aligner.spec.matmul_dtype)
  return _call_describing_with(aligner, describer.apply, describer.params)


def _call_describing_with(aligner, apply: Callable[[Any, Any], Any], describer_params: Any
                          ) -> Callable[[np.ndarray, np.ndarray], Any]:
  """The aligner's jitted call on working images with the crops described by ``apply(params,
  crops [B, S, S, C] float32 in [0, 255]) -> fields`` instead of the aligner's describer (the
  variants of :func:`per_face_head` and :func:`xla_convolutions`).

  Returns:
    ``(work_images [B, S, S, C] uint8, work_boxes [B, 4]) -> AlignmentResult`` fields as NumPy.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import cascade  # pylint: disable=g-import-not-at-top
  config, mirror = aligner.config, aligner.spec.mirror

  @jax.jit
  def run(params_of_describer, alignment_model, params, images):
    return cascade.align_working_images(lambda crops: apply(params_of_describer, crops),
                                        alignment_model, params, images, config, mirror=mirror)

  def call(images, _):
    return aligner.fetch(run(describer_params, aligner.alignment_model, aligner.params,
                             jnp.asarray(images)))
  return call


def host_costs(aligner, paths: Sequence[Path], boxes: Dict[Path, List[float]],
               batch_size: int, count: int = 200) -> Dict[str, Any]:
  """The host's share of ``align`` per image, one thread, in milliseconds (``mode =
  "host_costs"``), on the first ``count`` photos: decoding (``decode_rgb_ms``, and
  ``decode_grey_ms``: the luma plane alone, what ``align`` decodes for a grey descriptor when no
  overlay is drawn and no detector runs), cutting the working crop (``crop_rgb_ms``: RGB, the
  layout before grey decoding; ``crop_grey_ms``: one channel from the grey decode) and writing
  the image's JSON (``write_indented_ms``: indented, the layout before; ``write_one_line_ms``:
  one line, as ``align`` writes it now). ``rgb_path_ms`` / ``grey_path_ms`` are the sums of the
  old and the current path; each figure is the median of 3 passes. The JSON is that of the first
  photo's face, aligned in one batch of ``batch_size`` (the size compiled already)."""
  from dff_jax import file_io, image_io  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import results, runner  # pylint: disable=g-import-not-at-top
  paths = list(paths)[:int(count)]
  work = [runner.working_crop(image_io.read_image(p, grey=True), boxes[p], aligner.config,
                              aligner.work_size, aligner.channels) for p in paths[:1]]
  result = aligner.align_working(np.repeat(work[0][0][None], batch_size, axis=0))
  face = runner.to_image_frame(result, 0, work[0][1], np.asarray(boxes[paths[0]]),
                               aligner.work_size)
  document = results.image_document(str(paths[0]), [1, 1], [face],
                                    features=aligner.spec.features,
                                    cascade=str(aligner.spec.cascade_path),
                                    face_model=aligner.face_model.name, box_source="given")
  rgb = [image_io.read_image(p) for p in paths]
  grey = [image_io.read_image(p, grey=True) for p in paths]
  out = Path(tempfile.mkdtemp(prefix="dff_jax_bench_host_"))
  steps = {
      "decode_rgb_ms": lambda i: image_io.read_image(paths[i]),
      "decode_grey_ms": lambda i: image_io.read_image(paths[i], grey=True),
      "crop_rgb_ms": lambda i: runner.working_crop(rgb[i], boxes[paths[i]], aligner.config,
                                                   aligner.work_size, 3),
      "crop_grey_ms": lambda i: runner.working_crop(grey[i], boxes[paths[i]], aligner.config,
                                                    aligner.work_size, aligner.channels),
      "write_indented_ms": lambda i: file_io.write_json_atomic(out / f"{i}.json", document,
                                                               durable=False),
      "write_one_line_ms": lambda i: file_io.write_json_atomic(out / f"{i}.json", document,
                                                               durable=False, indent=None),
  }
  record: Dict[str, Any] = {"mode": "host_costs", "num_images": len(paths),
                            "channels": aligner.channels}
  try:
    for name, step in steps.items():
      passes = []
      for _ in range(3):
        start = time.perf_counter()
        for i in range(len(paths)):
          step(i)
        passes.append((time.perf_counter() - start) / len(paths) * 1e3)
      record[name] = round(float(np.median(passes)), 3)
  finally:
    shutil.rmtree(out, ignore_errors=True)
  record["rgb_path_ms"] = round(record["decode_rgb_ms"] + record["crop_rgb_ms"]
                                + record["write_indented_ms"], 3)
  record["grey_path_ms"] = round(record["decode_grey_ms"] + record["crop_grey_ms"]
                                 + record["write_one_line_ms"], 3)
  return record


def _jitted_call(aligner, paths: Sequence[Path], boxes: Dict[Path, List[float]],
                 batch_size: int, passes: int = 3) -> List[Dict[str, Any]]:
  """The compiled cascade alone on batches of images decoded and cropped beforehand, and the
  variants it is compared with (:func:`describe_all_first`, :func:`per_face_head` for point
  fields, :func:`xla_convolutions` for DFF) on the same batches, all timed in turns
  (``passes`` times each over all batches; the median pass counts), so that all see the same
  machine. Returns the records' fields, the aligner's call first."""
  from dff_jax import image_io  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import runner  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  crops, work_boxes = [], []
  for path in paths:
    image = image_io.read_image(path, grey=aligner.channels == 1)  # as `align` reads them
    box = runner.check_box(boxes[path], *image.shape[:2], where=str(path))
    work, _, work_box = runner.working_crop(image, box, aligner.config, aligner.work_size,
                                            aligner.channels)
    crops.append(work)
    work_boxes.append(work_box)
  prepare_s = time.perf_counter() - start
  batches = []
  for first in range(0, len(crops), batch_size):
    images = np.stack(crops[first:first + batch_size])
    batch_boxes = np.stack(work_boxes[first:first + batch_size])
    if len(images) < batch_size:
      extra = batch_size - len(images)
      images = np.concatenate([images, np.repeat(images[-1:], extra, 0)])
      batch_boxes = np.concatenate([batch_boxes, np.repeat(batch_boxes[-1:], extra, 0)])
    batches.append((images, batch_boxes))
  del crops, work_boxes
  calls = {"jitted_call": lambda images, _: aligner.align_working(images),
           "jitted_call_describe_all_first": describe_all_first(aligner)}
  for name, variant in (("jitted_call_per_face_head", per_face_head(aligner)),
                        ("jitted_call_xla_conv", xla_convolutions(aligner))):
    if variant is not None:
      calls[name] = variant
  timings: Dict[str, List[Tuple[float, float, List[float]]]] = {name: [] for name in calls}
  for name, call in calls.items():
    call(*batches[0])  # warm-up (compiles)
  for _ in range(max(1, int(passes))):
    for name, call in calls.items():
      steps = []
      start, cpu_start = time.perf_counter(), time.process_time()
      for images, batch_boxes in batches:
        step_start = time.perf_counter()
        call(images, batch_boxes)  # Returns host arrays: the device has finished.
        steps.append(time.perf_counter() - step_start)
      timings[name].append((time.perf_counter() - start, time.process_time() - cpu_start, steps))
  out = []
  for name in calls:
    wall_s, cpu_s, steps = sorted(timings[name], key=lambda t: t[0])[len(timings[name]) // 2]
    rate = len(paths) / wall_s
    out.append({"mode": name, "items_per_second": round(rate, 2),
                "ms_per_item": round(1e3 / rate, 3), "wall_s": round(wall_s, 3),
                "cpu_s": round(cpu_s, 3), "items_per_cpu_second": round(len(paths) / cpu_s, 2),
                "step_s": round(statistics.median(steps), 4), "prepare_s": round(prepare_s, 3),
                "passes": max(1, int(passes))})
  for record in out[1:]:
    record["ratio_to_jitted_call"] = round(record["items_per_second"]
                                           / out[0]["items_per_second"], 3)
  return out


def _dlib_worker(paths: Sequence[str], boxes: Sequence[List[float]], predictor_path: str,
                 barrier, results, cores: Optional[List[int]] = None) -> None:
  """One process of :func:`dlib_predictor_record`: pinned to ``cores`` as ``align``'s workers
  are (:func:`dff_jax.cpu_processes.pin`; ``None``: not pinned), loads dlib's predictor, warms
  up, waits for the others, then decodes (luma, as ``align`` decodes for a grey descriptor) and
  predicts its share of the faces (:meth:`dff_jax.evaluation.dlib_baseline.DlibBaseline.predict`:
  the 68 points as an array, as the evaluation reads them); puts ``(faces, start, end, cpu_s)``
  (``time.time()``) on ``results``."""
  from dff_jax import cpu_processes, image_io  # pylint: disable=g-import-not-at-top
  from dff_jax.evaluation import dlib_baseline  # pylint: disable=g-import-not-at-top
  if barrier is not None:
    cpu_processes.pin(cores)
  baseline = dlib_baseline.load(predictor_path)

  def one(path, box):
    baseline.predict(image_io.read_image(path, grey=True), box)

  one(paths[0], boxes[0])  # warm-up
  if barrier is not None:
    barrier.wait()
  start, cpu_start = time.time(), time.process_time()
  for path, box in zip(paths, boxes):
    one(path, box)
  results.put((len(paths), start, time.time(), time.process_time() - cpu_start))


def dlib_predictor_record(paths: Sequence[Path], boxes: Dict[Path, List[float]],
                          predictor_path: Optional[str], jitted_rate: float,
                          stream_rate: Optional[float], processes: int = 1
                          ) -> Optional[Dict[str, Any]]:
  """dlib's ``shape_predictor`` on the same images and boxes, one face at a time, each image
  decoded (its luma plane, as ``align`` decodes a photo for a grey descriptor) and predicted in
  ``processes`` processes (the images dealt out in turn, each process pinned to its share of
  the cores as ``align --processes`` pins its workers; timed from when every process has loaded
  the model and warmed up); ``None`` when ``dlib`` is not importable (it is optional).
  ``predictor_path`` defaults to the model file of the ``face_recognition_models`` package
  (:func:`dff_jax.evaluation.dlib_baseline.default_predictor_path`)."""
  try:
    import dlib  # pylint: disable=g-import-not-at-top  # Optional: never a requirement.
  except ImportError:
    return None
  from dff_jax.evaluation import dlib_baseline  # pylint: disable=g-import-not-at-top
  predictor_path = predictor_path or dlib_baseline.default_predictor_path()
  record: Dict[str, Any] = {"mode": "dlib_predictor", "dlib_version": str(
      getattr(dlib, "__version__", "unknown")), "dlib_predictor": predictor_path,
                            "processes": int(processes), "includes": "decode (luma) + predictor"}
  if not predictor_path or not Path(predictor_path).is_file():
    record.update(items_per_second=None, skipped=(
        "dlib is importable but no landmark model was given: pass --dlib_predictor="
        "shape_predictor_68_face_landmarks.dat or " + dlib_baseline.INSTALL_HINT))
    return record
  face_boxes = [list(boxes[path]) for path in paths]
  names = [str(path) for path in paths]
  if processes == 1:
    import queue  # pylint: disable=g-import-not-at-top
    results = queue.Queue()
    _dlib_worker(names, face_boxes, predictor_path, None, results)
    shares = [results.get()]
  else:
    from dff_jax import cpu_processes  # pylint: disable=g-import-not-at-top
    context = cpu_processes.context()
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_dlib_worker, args=(
        names[k::processes], face_boxes[k::processes], predictor_path, barrier, results, cores))
               for k, cores in enumerate(cpu_processes.core_groups(processes))]
    for worker in workers:
      worker.start()
    shares = [results.get(timeout=600) for _ in workers]
    for worker in workers:
      worker.join()
  wall_s = max(s[2] for s in shares) - min(s[1] for s in shares)
  cpu_s = sum(s[3] for s in shares)
  rate = len(paths) / wall_s
  record.update(items_per_second=round(rate, 2), ms_per_item=round(1e3 / rate, 3),
                wall_s=round(wall_s, 3), cpu_s=round(cpu_s, 3),
                items_per_cpu_second=round(len(paths) / cpu_s, 2),
                ratio_to_jitted_call=round(rate / jitted_rate, 3))
  if stream_rate:
    record["ratio_to_end_to_end"] = round(rate / stream_rate, 3)
  return record


def bench_stream(data_dir: Optional[str] = None, num_images: int = 1000, image_size: int = 224,
                 batch_size: int = 64, cascade: Optional[str] = None,
                 features: Optional[str] = None, checkpoint: Optional[str] = None,
                 face_model: Optional[str] = None, workers: int = 2, writers: int = 2,
                 prefetch_batches: int = 2, overlays: Sequence[bool] = (False, True),
                 seed: int = 50_000, dlib_predictor: Optional[str] = None,
                 report: Optional[Callable[[str], None]] = None,
                 mirror: bool = False, processes: Sequence[int] = (1,),
                 matmul_dtype: Optional[str] = None) -> Iterator[Dict[str, Any]]:
  """Times the jitted cascade alone, then the streaming align command end to end, then dlib's
  predictor (when importable), on one folder.

  Args:
    data_dir: a folder of photos, or where the rendered faces are cached (``None``:
      :func:`default_data_dir`); see the module docstring.
    num_images: images used (the first ones of the folder); image_size, seed: the rendered set.
    batch_size: faces per jitted call.
    cascade, features, checkpoint, face_model: the aligner (as ``experiments.align``).
    workers, writers, prefetch_batches: the streaming settings of ``experiments.align``.
    overlays: one end-to-end run per value (with / without overlay PNGs).
    dlib_predictor: dlib's landmark model file (used only when ``dlib`` is importable).
    report: progress messages (default: stderr).
    mirror: the aligner with test-time mirroring (``align --mirror``).
    processes: one end-to-end run per overlays value and worker-process count
      (``align --processes``).
    matmul_dtype: the encoder's matrix products in this operand dtype (``align
      --matmul_dtype``; ``None``: the encoder's own).

  Yields:
    One record per measurement (see the module docstring).

  Raises:
    ValueError: no photo of ``data_dir`` has a face; ``data_dir`` holds other files but no
      image and no rendered cache (nothing is rendered into it).
  """
  from dff_jax import file_io  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import files, runner  # pylint: disable=g-import-not-at-top
  if report is None:
    def report(message):
      print(message, file=sys.stderr, flush=True)
  batch_size = int(batch_size)
  photos = photo_paths(data_dir)[:int(num_images)]
  scratch = Path(tempfile.mkdtemp(prefix="dff_jax_bench_stream_"))
  try:
    extra: Dict[str, Any] = {"source": "photos" if photos else "rendered"}
    if photos:
      given = Path(data_dir) / BOXES_FILE
      boxes, without_face = photo_boxes(photos, given if given.is_file() else None)
      if not boxes:
        raise ValueError(f"--data_dir={data_dir}: no face found in its {len(photos)} images")
      paths = [p for p in photos if p in boxes]
      boxes_path = scratch / BOXES_FILE
      file_io.write_json_atomic(boxes_path, {str(p): boxes[p] for p in paths})
      extra["images_without_face"] = without_face
    else:
      cache = Path(data_dir) if data_dir else default_data_dir(image_size, seed)
      if (data_dir and cache.is_dir() and not (cache / DATASET_FILE).exists()
          and any(cache.iterdir())):
        # Never render into a folder of other files (a misspelt or image-less data folder).
        raise ValueError(f"--data_dir={data_dir} holds no image files and is not a cache of "
                         "rendered faces; give a folder of photos, or leave --data_dir out to "
                         "benchmark rendered faces")
      paths = make_dataset(cache, num_images, image_size, seed, report=report)
      boxes_path = cache / BOXES_FILE
      given = json.loads(boxes_path.read_text())
      boxes = {p: given[p.name] for p in paths}
      extra["image_size"] = image_size
    spec = resolve_with_fallback(cascade, features, checkpoint, face_model, report, mirror,
                                 matmul_dtype)
    aligner = runner.load_aligner(spec)
    compile_s = aligner.compile(batch_size) or aligner.compile_seconds[batch_size]
    common = {"what": "align_stream", "batch_size": batch_size, "num_images": len(paths),
              **extra, "features": spec.features, "cascade": str(spec.cascade_path),
              "mirror": spec.mirror, "matmul_dtype": spec.matmul_dtype,
              "compile_s": round(compile_s, 2)}

    # 1. The jitted call alone on the same batches, images decoded and cropped beforehand.
    jitted, *compared = _jitted_call(aligner, paths, boxes, batch_size)
    for record in (jitted, *compared):
      yield {**common, **record, "maxrss_mb": round(benchmarking.maxrss_mb(), 1),
             "loadavg": benchmarking.loadavg()}
    jitted_rate = len(paths) / jitted["wall_s"]
    jitted_cpu_rate = len(paths) / jitted["cpu_s"]
    if photos:
      yield {**common, **host_costs(aligner, paths, boxes, batch_size),
             "loadavg": benchmarking.loadavg()}

    # 2. The align command end to end, with and without overlays.
    stream_rates: Dict[int, float] = {}  # the first overlays value's run per process count
    for overlay, count in itertools.product(overlays, processes):
      out_dir = Path(tempfile.mkdtemp(prefix="dff_jax_bench_stream_out_"))
      messages: List[str] = []
      cpu_start = time.process_time() + benchmarking.children_cpu_s()
      try:
        with RssSampler() as sampler:
          summary = files.align_files(
              ",".join(str(p) for p in paths), out_dir, boxes=str(boxes_path),
              cascade=str(spec.cascade_path), features=spec.features,
              checkpoint=None if spec.checkpoint is None else str(spec.checkpoint),
              face_model=spec.face_model, batch_size=batch_size, overlay=bool(overlay),
              progress=False, report=messages.append, workers=workers, writers=writers,
              prefetch_batches=prefetch_batches, mirror=spec.mirror, processes=int(count),
              box_convention="landmarks", matmul_dtype=spec.matmul_dtype)
        # The worker processes' CPU, loading and compiling included (they are joined now).
        cpu_s = time.process_time() + benchmarking.children_cpu_s() - cpu_start
      finally:
        shutil.rmtree(out_dir, ignore_errors=True)
      for message in messages[:3]:
        report(f"benchmark stream: {message}")
      rate = summary["images_per_second"]
      stream_rates.setdefault(int(count), rate)
      yield {**common, "mode": "end_to_end", "overlays": bool(overlay), "items_per_second": rate,
             "ms_per_item": round(1e3 / rate, 3) if rate else None,
             "ratio_to_jitted_call": round(rate / jitted_rate, 3), "wall_s": summary["wall_s"],
             "cpu_s": round(cpu_s, 3),
             "items_per_cpu_second": round(summary["images"] / cpu_s, 2),
             "cpu_ratio_to_jitted_call": round(summary["images"] / cpu_s / jitted_cpu_rate, 3),
             "failures": summary["failures"], "decode_s": summary["decode_s"],
             "align_s": summary["align_s"], "wait_decode_s": summary["wait_decode_s"],
             "write_s": summary["write_s"],
             "max_images_in_memory": summary["max_images_in_memory"], "workers": workers,
             "writers": writers, "prefetch_batches": prefetch_batches,
             "processes": summary["processes"], **sampler.summary(),
             "maxrss_mb": round(benchmarking.maxrss_mb(), 1), "loadavg": benchmarking.loadavg()}

    # 3. dlib's predictor on the same boxes (only when dlib is importable), in as many
    #    processes as each end-to-end run.
    for count in (processes or (1,)):
      record = dlib_predictor_record(paths, boxes, dlib_predictor, jitted_rate,
                                     stream_rates.get(int(count)), processes=int(count))
      if record is None:
        if dlib_predictor:
          report("benchmark stream: --dlib_predictor given but dlib is not importable; skipped")
        break
      yield {**common, "compile_s": 0.0, **record, "loadavg": benchmarking.loadavg()}
      if "skipped" in record:  # no model file: said once
        break
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
