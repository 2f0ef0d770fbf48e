r"""Aligns faces in image files: 68 landmarks, visibility, pose and 3DMM coefficients.

  python -m experiments.align --images=PATH|GLOB|DIR[,...] --out_dir=DIR \
      [--bbox=x0,y0,x1,y1 | --boxes=FILE.json] [--cascade=FILE] [--features=dff|sift] \
      [--checkpoint=DIR] [--face_model=default|PATH] [--batch_size=8] [--overlays=true|false] \
      [--workers=2] [--writers=2] [--prefetch_batches=2] [--run_summary]
  python -m experiments.align --images=IMG1,IMG2,...|DIR --multiview [--share_expression] ...

Inputs:
  * ``--images``: an image file, a directory (its image files, not recursive), a glob pattern,
    or a comma-separated list of those. Image files are recognised by extension (JPEG, PNG, BMP,
    GIF, TIFF, WebP, PPM / PGM / PNM / PBM, TGA, JPEG 2000, AVIF:
    ``dff_jax.alignment.streaming.IMAGE_EXTENSIONS``); the other files of a folder or glob are
    counted and named in one line ``align: warning: skipped N files ...`` on stderr.
  * Faces: **without a box every face of the image is found** by the face detector
    (:func:`dff_jax.detection.detect_faces`, MediaPipe BlazeFace; best first) and each is
    aligned. A face box ``(x0, y0, x1, y1)`` in image pixels (x right, y down, pixel (i, j)
    centred at (j + 0.5, i + 0.5)) is the bounding box of the face's 68 landmarks: ``--bbox``
    for every image (``--bbox=whole``: the whole image is the face crop), or ``--boxes``, a JSON
    object mapping image file names (or paths as given, or stems) to ``[x0, y0, x1, y1]``,
    ``[[x0, y0, x1, y1], ...]`` (several faces; ``[]`` none), ``null`` / ``"detect"`` (find the
    faces) or ``"whole"``; an image missing from the file is reported and skipped.
    (Before issue 13, ``null`` and no box meant the whole image: use ``"whole"`` for that now.)
  * ``--cascade``: a shipped cascade by name (``default``, ``synthetic``) or a file from
    ``experiments.train_alignment`` (default: the shipped default); ``--features`` defaults to
    the cascade's. ``--checkpoint``: the DFF encoder (default: the one the cascade names).

``--multiview``: the images show one person; they are aligned jointly (one identity shared by
all, each its own pose, landmarks and expression; see :mod:`experiments.align_multiview`), and
``DIR/multiview.json`` holds the shared identity.

Outputs, per image, written atomically (temporary file + rename):
  * ``DIR/<stem>.json`` (:func:`dff_jax.alignment.results.image_document`): ``image``,
    ``size_wh`` [W, H], ``faces`` (one entry per face, ``[]`` when none was found: each has
    ``landmarks_px`` [68, 2] image pixels, the jaw on the visible outline; ``landmarks_3d_px``
    [68, 2] the 3D jaw line; ``visibility`` [68] bool; ``pose`` {``yaw_deg``, ``pitch_deg``,
    ``roll_deg`` (R = Rz(roll) Ry(yaw) Rx(pitch), positive yaw = nose to the image right),
    ``scale`` (px per mm, weak perspective), ``translation_px`` (image position of the model
    origin)}; ``shape_coefficients``; ``expression_coefficients``; ``box`` (the face box used);
    ``score`` (the detector's, ``null`` for a given box); ``crop_box``), ``features``,
    ``cascade``, ``face_model``, ``box_source`` (``"detector: ..."``, ``"given"`` or
    ``"whole image"``).
  * ``DIR/<stem>_overlay.png``: every face drawn: the fitted mesh outline (cyan), pose axes from
    the nose tip (model x red, y green, z blue), visible landmarks as filled green discs and
    hidden ones as hollow red rings, the face box in grey with the detector's score above it.

Images are **streamed**: ``--workers`` threads decode them, find their faces when no box is
given, and cut each face's crop box at a
fixed working size (see :mod:`dff_jax.alignment.runner`) up to ``--prefetch_batches`` batches
ahead, while the jitted cascade runs on fixed-size batches (the last one padded; compiled once);
``--writers`` threads write each image's files as soon as its faces are done. The images in memory
stay bounded (about ``(prefetch_batches + 4) * batch_size``) whatever the folder size. A progress
bar shows on a terminal. ``--overlays=false`` skips the overlay PNGs, the expensive part of the
writing (``--overlay`` is the same flag).

At the end one summary line goes to stdout (images, written, failed, faces, wall seconds,
images/s, compile seconds, the decode + detect / align / write time split), followed by the JSON
line ``{"out_dir", "written", "failed", "faces"}``; with ``--run_summary`` the figures are also written to
``DIR/run_summary.json``. A bad image (unreadable, bad box) is reported on stderr in one line and
skipped; the exit status is 1 if any image failed, 2 (one-line message) for bad arguments or a
missing cascade / checkpoint.
"""

from __future__ import annotations

import collections
import json
import sys
import threading
import time
from concurrent import futures as futures_lib
from pathlib import Path
from typing import Any, Dict, List, Optional

from absl import app
from absl import flags
from dff_jax import file_io

FLAGS = flags.FLAGS
RUN_SUMMARY = "run_summary.json"


def define_flags() -> None:
  """Defines the command's flags (only when run as a program)."""
  flags.DEFINE_string("images", None, "Image file, directory, glob, or comma-separated list.")
  flags.DEFINE_string("bbox", None, "Face box x0,y0,x1,y1 (image pixels) for every image, or "
                      "'whole' (the whole image); default: find every face with the detector.")
  flags.DEFINE_string("boxes", None, "JSON file mapping image file names to [x0, y0, x1, y1], "
                      "a list of boxes, null (find the faces) or 'whole'.")
  flags.DEFINE_string("cascade", None, "Cascade .npz, or a shipped one by name: default (real + "
                      "synthetic faces), synthetic (renders only).")
  flags.DEFINE_enum("features", None, ["dff", "sift"], "Descriptor kind (default: the cascade's).")
  flags.DEFINE_string("checkpoint", None, "DFF inference bundle or training workdir.")
  flags.DEFINE_string("face_model", None, "'default', 'ict', 'sfm' or a face-model file "
                      "(default: the cascade's).")
  flags.DEFINE_integer("batch_size", 8, "Faces per jitted batch.")
  flags.DEFINE_boolean("overlay", True, "Write <stem>_overlay.png (also --overlays).")
  flags.DEFINE_alias("overlays", "overlay")
  flags.DEFINE_integer("workers", 2, "Threads decoding images and cutting crops (0: none).")
  flags.DEFINE_integer("writers", 2, "Threads writing JSON / overlay files (0: none).")
  flags.DEFINE_integer("prefetch_batches", 2, "Batches of images decoded ahead.")
  flags.DEFINE_boolean("run_summary", False, f"Also write DIR/{RUN_SUMMARY} (counts, wall "
                       "seconds, images/s, time split).")
  flags.DEFINE_boolean("multiview", False, "The images show one person: align them jointly "
                       "(shared identity; see experiments/align_multiview.py).")
  flags.DEFINE_boolean("share_expression", False, "With --multiview: one expression for all.")
  flags.DEFINE_boolean("prior_per_view", True, "With --multiview: count the identity prior "
                       "once per image (else once: the plain MAP fit).")
  flags.DEFINE_string("out_dir", None, "Output folder.")


def align_files(images: str, out_dir: str | Path, bbox: Optional[str] = None,
                boxes: Optional[str] = None, cascade: Optional[str] = None,
                features: Optional[str] = None, checkpoint: Optional[str] = None,
                face_model: Optional[str] = None, batch_size: int = 8, overlay: bool = True,
                progress: bool = True, report=None, workers: int = 2, writers: int = 2,
                prefetch_batches: int = 2, run_summary: bool = False) -> Dict[str, Any]:
  """The command as a function: streams the images through the aligner and writes the results.

  Images are decoded by ``workers`` threads a few batches ahead of the jitted cascade
  (:func:`dff_jax.alignment.streaming.run_jobs`), and each face's JSON / overlay is written by
  ``writers`` threads as soon as its batch is done (at most ``2 * batch_size`` faces queued for
  writing), so the number of images in memory stays bounded whatever the folder size. Images
  given no box have their faces found by the detector while they are decoded; each face is its
  own crop in the batches and each image gets one JSON document listing its faces.

  Args:
    images, bbox, boxes, cascade, features, checkpoint, face_model, batch_size: as the flags.
    out_dir: output folder (created).
    overlay: write the overlay PNGs.
    progress: show the tqdm bar (on a terminal).
    report: ``callable(message)`` for per-image failures and the skipped-files warning
      (default: print to stderr).
    workers: image decoding threads (``0``: decode in this thread when the image's turn comes).
    writers: output writing threads (``0``: write in this thread).
    prefetch_batches: batches decoded ahead (see ``run_jobs``).
    run_summary: also write the run figures to ``out_dir/run_summary.json``.

  Returns:
    ``{"out_dir", "written": [stems, input order], "failed": [one-line messages], "images",
    "failures", "faces", "faces_detected", "images_without_faces", "skipped_files", "wall_s", "images_per_second", "compile_s", "decode_s", "align_s", "wait_decode_s",
    "write_s", "max_images_in_memory", "batch_size", "workers", "writers", "overlays"}``:
    ``wall_s`` runs from the first image read to the last file written (the cascade is
    compiled before, ``compile_s``, ``0`` when this process compiled it already);
    ``images_per_second = images / wall_s`` counts every input image; ``decode_s`` and
    ``write_s`` are summed over their threads, ``align_s`` is the time this thread spent in the
    jitted calls (dispatch and wait), ``wait_decode_s`` the time it waited for decoding.

  Raises:
    FileNotFoundError / ValueError: bad arguments, missing cascade / checkpoint (nothing written).
  """
  from dff_jax.alignment import runner  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import streaming  # pylint: disable=g-import-not-at-top
  if report is None:
    def report(message):
      print(message, file=sys.stderr, flush=True)
  if bbox and boxes:
    raise ValueError("pass either --bbox or --boxes, not both")
  if batch_size < 1:
    raise ValueError(f"--batch_size must be >= 1, got {batch_size}")
  if workers < 0 or writers < 0:
    raise ValueError(f"--workers and --writers must be >= 0, got {workers} and {writers}")
  if prefetch_batches < 1:
    raise ValueError(f"--prefetch_batches must be >= 1, got {prefetch_batches}")
  paths, skipped = streaming.find_images(images)
  common_box = streaming.parse_bbox(bbox) if bbox else None
  box_map = streaming.read_boxes_file(boxes) if boxes else None
  spec = runner.resolve_aligner(cascade, features, checkpoint, face_model)
  from dff_jax import detection  # pylint: disable=g-import-not-at-top
  from dff_jax import image_io  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import draw  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import results  # pylint: disable=g-import-not-at-top
  aligner = runner.load_aligner(spec)
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  if skipped:
    report(f"align: warning: {streaming.skipped_files_line(skipped)}")
  outline = draw.mesh_outline_structure(aligner.face_model) if overlay else None

  def box_source(box) -> str:
    if box is None or (isinstance(box, str) and box == runner.DETECT):
      return f"detector: {detection.DETECTOR_NAME}"
    return "whole image" if isinstance(box, str) and box == runner.WHOLE_IMAGE else "given"

  def job(index: int, path: Path, stem: str):
    def load():
      if box_map is not None:
        found, box = streaming.box_for(box_map, path)
        if not found:
          raise ValueError(f"{path}: no entry for {path.name} in --boxes file {boxes}")
      else:
        box = common_box
      image = image_io.read_image(path)
      return streaming.Loaded(image=image, box=box,
                              truth=dict(index=index, stem=stem, path=str(path),
                                      size_wh=[image.shape[1], image.shape[0]],
                                      box_source=box_source(box)))
    return streaming.Job(name=str(path), load=load)

  lock = threading.Lock()
  write_seconds = [0.0]

  def write(outcome) -> Optional[str]:
    """Writes one image's outputs; returns a one-line message on failure."""
    start = time.perf_counter()
    truth = outcome.loaded.truth
    document = results.image_document(
        truth["path"], truth["size_wh"], outcome.faces, features=aligner.spec.features,
        cascade=str(aligner.spec.cascade_path), face_model=aligner.face_model.name,
        box_source=truth["box_source"])
    try:
      if overlay:
        picture = draw.render_faces_overlay(outcome.loaded.image, outcome.faces,
                                            aligner.face_model, outline)
        file_io.write_bytes_atomic(out_dir / f"{truth['stem']}_overlay.png", png_bytes(picture))
      file_io.write_json_atomic(out_dir / f"{truth['stem']}.json", document)
    except OSError as error:
      return f"{outcome.job.name}: cannot write outputs ({streaming.one_line(error)})"
    finally:
      with lock:
        write_seconds[0] += time.perf_counter() - start
    return None

  stems = streaming.output_stems(paths)
  jobs = [job(n, p, s) for n, (p, s) in enumerate(zip(paths, stems))]
  written: List[Any] = []  # (input index, stem)
  failed: List[str] = []
  face_counts = collections.Counter()  # faces written by box source; images without a face
  queue: collections.deque = collections.deque()  # (outcome, future) in input order
  max_queued = 2 * batch_size

  def drain(limit: int) -> None:
    while len(queue) > limit:
      outcome, future = queue.popleft()
      message = future.result() if writers else future
      if message is None:
        truth = outcome.loaded.truth
        written.append((truth["index"], truth["stem"]))
        face_counts[truth["box_source"].split(":")[0]] += len(outcome.faces)
        face_counts["no face"] += not outcome.faces
      else:
        failed.append(message)
        report(f"align: skipped {message}")

  compile_s = aligner.compile(batch_size)
  given = list(box_map.values()) if box_map is not None else [common_box]
  if any(box is None or (isinstance(box, str) and box == runner.DETECT) for box in given):
    compile_s += _warm_up_detector(detection)  # some images are given no box
  stats = streaming.RunStats()
  pool = (futures_lib.ThreadPoolExecutor(writers, thread_name_prefix="dff-align-write")
          if writers else None)
  start = time.perf_counter()
  try:
    for outcome in streaming.run_jobs(aligner, jobs, batch_size, progress=progress,
                                      total=len(jobs), keep_loaded=overlay, workers=workers,
                                      prefetch_batches=prefetch_batches, stats=stats):
      if outcome.error is not None:
        failed.append(outcome.error)
        report(f"align: skipped {outcome.error}")
        continue
      queue.append((outcome, pool.submit(write, outcome) if pool else write(outcome)))
      drain(max_queued)
    drain(0)
  finally:
    if pool is not None:
      pool.shutdown(wait=True, cancel_futures=True)
  wall_s = time.perf_counter() - start
  summary = {
      "out_dir": str(out_dir), "written": [stem for _, stem in sorted(written)],
      "failed": failed, "images": len(jobs), "failures": len(failed),
      "faces": sum(v for k, v in face_counts.items() if k != "no face"),
      "faces_detected": face_counts["detector"],
      "images_without_faces": face_counts["no face"],
      "skipped_files": [str(p) for p in skipped], "wall_s": round(wall_s, 3),
      "images_per_second": round(len(jobs) / max(wall_s, 1e-9), 2),
      "compile_s": round(compile_s, 3), "decode_s": round(stats.prepare_s, 3),
      "align_s": round(stats.align_s, 3), "wait_decode_s": round(stats.wait_prepare_s, 3),
      "write_s": round(write_seconds[0], 3), "max_images_in_memory": stats.max_in_memory,
      "batch_size": batch_size, "workers": workers, "writers": writers, "overlays": overlay,
      "features": aligner.spec.features,
  }
  if run_summary:
    document = {k: v for k, v in summary.items() if k not in ("written", "failed")}
    document["failed"] = failed
    try:
      file_io.write_json_atomic(out_dir / RUN_SUMMARY, document)
    except OSError as error:
      report(f"align: cannot write {out_dir / RUN_SUMMARY} ({file_io.error_line(error)})")
  return summary


def _warm_up_detector(detection) -> float:
  """Compiles the face detector before the timed run; returns the seconds it took."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  detection.detect_faces(np.zeros((detection.INPUT_SIZE, detection.INPUT_SIZE, 3), np.uint8))
  return time.perf_counter() - start


def png_bytes(picture) -> bytes:
  """``[H, W, 3]`` uint8 as PNG bytes with zlib level 1: about 4x faster to encode than
  Pillow's default level 6 (the bulk of an overlay's cost) for files ~15% larger."""
  import io  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(picture, np.uint8)).save(buffer, format="PNG",
                                                               compress_level=1)
  return buffer.getvalue()


def summary_line(summary: Dict[str, Any]) -> str:
  """The one-line human summary of :func:`align_files`' result."""
  found = (f" ({summary['faces_detected']} found by the detector, "
           f"{summary['images_without_faces']} images without a face)"
           if summary["faces_detected"] or summary["images_without_faces"] else "")
  return (f"align: {summary['images']} images, {len(summary['written'])} written, "
          f"{summary['failures']} failed; {summary['faces']} faces{found} in "
          f"{summary['wall_s']:.2f} s = {summary['images_per_second']:.1f} images/s (compile "
          f"{summary['compile_s']:.1f} s; decode + detect {summary['decode_s']:.1f} s, align "
          f"{summary['align_s']:.1f} s, write {summary['write_s']:.1f} s summed over threads)")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.images or not FLAGS.out_dir:
    print("align: error: --images and --out_dir are required", file=sys.stderr)
    sys.exit(2)
  if FLAGS.multiview:
    return _main_multiview()
  try:
    summary = align_files(FLAGS.images, FLAGS.out_dir, FLAGS.bbox, FLAGS.boxes, FLAGS.cascade,
                          FLAGS.features, FLAGS.checkpoint, FLAGS.face_model, FLAGS.batch_size,
                          FLAGS.overlay, workers=FLAGS.workers, writers=FLAGS.writers,
                          prefetch_batches=FLAGS.prefetch_batches,
                          run_summary=FLAGS.run_summary)
  except (OSError, ValueError) as error:
    print(f"align: error: {file_io.error_line(error)}", file=sys.stderr)
    sys.exit(2)
  print(summary_line(summary), flush=True)
  print(json.dumps({"out_dir": summary["out_dir"], "written": len(summary["written"]),
                    "failed": len(summary["failed"]), "faces": summary["faces"]}))
  if summary["failed"]:
    sys.exit(1)


def _main_multiview():
  """``--multiview``: :func:`experiments.align_multiview.align_multiview_files`."""
  from experiments import align_multiview  # pylint: disable=g-import-not-at-top
  align_multiview.run_from_flags(FLAGS, "align")


if __name__ == "__main__":
  define_flags()
  app.run(main)
