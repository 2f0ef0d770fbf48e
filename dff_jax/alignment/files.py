"""Aligning image files and writing their results: the library side of ``experiments.align``
(:func:`align_files`, streamed) and ``experiments.align --multiview`` /
``experiments.align_multiview`` (:func:`align_multiview_files`, one person's images jointly).

The outputs (per image ``<stem>.json`` and ``<stem>_overlay.png``, ``run_summary.json``,
``multiview.json``) are described in those commands' docstrings; every file is written
atomically.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
import threading
import time
from concurrent import futures as futures_lib
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from dff_jax import cpu_processes
from dff_jax import file_io

RUN_SUMMARY = "run_summary.json"
_COMPILED: Dict[Any, Any] = {}


def _given_box(path: Path, common_box: Any, box_map: Optional[Dict[str, Any]],
               boxes_file: Optional[str]) -> Any:
  """The box given for one image: its ``--boxes`` entry when a boxes file is given (a
  ``ValueError`` when it has none), else the common ``--bbox`` (``None``: find the faces)."""
  from dff_jax.alignment import streaming  # pylint: disable=g-import-not-at-top
  if box_map is None:
    return common_box
  found, box = streaming.box_for(box_map, path)
  if not found:
    raise ValueError(f"{path}: no entry for {path.name} in --boxes file {boxes_file}")
  return box


def _read_inputs(bbox: Optional[str], boxes: Optional[str], cascade: Optional[str],
                 features: Optional[str], checkpoint: Optional[str], face_model: Optional[str],
                 mirror: bool = False, matmul_dtype: Optional[str] = None
                 ) -> Tuple[Any, Optional[Dict[str, Any]], Any]:
  """``(common box, box map, aligner spec)`` of the flags: ``--bbox`` parsed (``None``: find the
  faces), the ``--boxes`` file read (``None`` without one), the cascade / encoder / face model
  resolved (:func:`dff_jax.alignment.runner.resolve_aligner`).

  Raises:
    FileNotFoundError / ValueError: a bad box or boxes file, missing model files.
  """
  from dff_jax.alignment import runner  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import streaming  # pylint: disable=g-import-not-at-top
  common_box = streaming.parse_bbox(bbox) if bbox else None
  box_map = streaming.read_boxes_file(boxes) if boxes else None
  spec = runner.resolve_aligner(cascade, features, checkpoint, face_model, mirror=mirror,
                                matmul_dtype=matmul_dtype)
  return common_box, box_map, spec


def align_files(images: str, out_dir: str | Path, bbox: Optional[str] = None,
                boxes: Optional[str] = None, cascade: Optional[str] = None,
                features: Optional[str] = None, checkpoint: Optional[str] = None,
                face_model: Optional[str] = None, batch_size: int = 8, overlay: bool = True,
                progress: bool = True, report=None, workers: int = 2, writers: int = 2,
                prefetch_batches: int = 2, run_summary: bool = False,
                refine: Optional[int] = None, mirror: bool = False,
                processes: int = 1, box_convention: str = "detector",
                matmul_dtype: Optional[str] = None) -> Dict[str, Any]:
  """``experiments.align``: streams the images through the aligner and writes the results.

  Images are decoded by ``workers`` threads a few batches ahead of the jitted cascade
  (:func:`dff_jax.alignment.streaming.run_jobs`), and each face's JSON / overlay is written by
  ``writers`` threads as soon as its batch is done (at most ``2 * batch_size`` faces queued for
  writing), so the number of images in memory stays bounded whatever the folder size. Images
  given no box have their faces found by the detector while they are decoded; each face is its
  own crop in the batches and each image gets one JSON document listing its faces.

  **Processes** (``processes > 1``, CPU hosts): the images are dealt out in turn to that many
  worker processes (:mod:`multiprocessing`, "spawn"), each streaming its share as above into
  the same ``out_dir`` with the same output names as one process would write. Each process is
  given an equal share of the cores this process may use (its CPU affinity) and sizes XLA's
  thread pool to it; on XLA:CPU one program keeps its threads poorly busy (:mod:`dff_jax.cpu_processes`),
  so separate processes, one per core, align more faces per second (WORKSPACE.md section 15). Each process loads and compiles the aligner itself (seconds, and
  its own memory), so this pays on large folders, not on a few images. From a script of your
  own, call it under ``if __name__ == "__main__":`` (the workers import the main module).

  Args:
    images, bbox, boxes, cascade, features, checkpoint, face_model, batch_size: as the flags.
    out_dir: output folder (created).
    overlay: write the overlay PNGs.
    progress: show the tqdm bar (on a terminal).
    report: ``callable(message)`` for per-image failures and the skipped-files warning
      (default: print to stderr).
    workers: image decoding threads (``0``: decode in this thread when the image's turn comes),
      per process.
    writers: output writing threads (``0``: write in this thread), per process.
    prefetch_batches: batches decoded ahead (see ``run_jobs``).
    run_summary: also write the run figures to ``out_dir/run_summary.json``.
    refine: extra passes for each detected face and each face of a ``"detector"`` box
      (:func:`dff_jax.alignment.streaming.run_jobs`; ``None``:
      :data:`dff_jax.alignment.streaming.REFINE_DETECTED`).
    box_convention: what ``bbox`` / ``boxes`` are
      (:data:`dff_jax.alignment.streaming.BOX_CONVENTIONS`: ``"detector"``, any face
      detector's box, refined; ``"landmarks"``, the 68 points' bounding box, aligned once).
    mirror, matmul_dtype: test-time mirroring, the encoder's matrix products
      (:class:`dff_jax.alignment.runner.AlignerSpec`).
    processes: worker processes (``1``: align in this process).

  Returns:
    ``{"out_dir", "written": [stems, input order], "failed": [one-line messages], "images",
    "failures", "faces", "faces_detected", "images_without_faces", "skipped_files", "wall_s",
    "images_per_second", "compile_s", "decode_s", "align_s", "wait_decode_s", "write_s",
    "max_images_in_memory", "batch_size", "workers", "writers", "overlays", "processes"}``:
    ``wall_s`` runs from the first image read to the last file written (the cascade is
    compiled before, ``compile_s``, ``0`` when this process compiled it already; with several
    processes every one has compiled before any starts, and ``compile_s`` is the slowest's);
    ``images_per_second = images / wall_s`` counts every input image; ``decode_s``,
    ``write_s`` and ``max_images_in_memory`` are summed over threads (and processes),
    ``align_s`` is the time spent in the jitted calls (dispatch and wait, summed over
    processes), ``wait_decode_s`` the time the aligning threads waited for decoding.

  Raises:
    FileNotFoundError / ValueError: bad arguments, missing cascade / checkpoint (nothing
      written); ValueError also when a worker process fails (its one-line message).
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
  if processes < 1:
    raise ValueError(f"--processes must be >= 1, got {processes}")
  if refine is not None and refine < 0:
    raise ValueError(f"--refine must be >= 0 (0: align once from the box), got {refine}")
  streaming.check_box_convention(box_convention)
  paths, skipped = streaming.find_images(images)
  check_outputs_spare_inputs(paths, streaming.output_stems(paths), out_dir, overlay)
  # Bad boxes and missing or unreadable model files fail here, before anything is written.
  inputs = _read_inputs(bbox, boxes, cascade, features, checkpoint, face_model, mirror,
                        matmul_dtype)
  if processes == 1:
    runner.load_aligner(inputs[2])  # cached: the stream below reuses it
  out_dir = file_io.check_writable_folder(out_dir)
  if skipped:
    report(f"align: warning: {streaming.skipped_files_line(skipped)}")
  entries = [(n, str(p), s) for n, (p, s) in enumerate(zip(paths, streaming.output_stems(paths)))]
  settings = dict(bbox=bbox, boxes=boxes, cascade=cascade, features=features,
                  checkpoint=checkpoint, face_model=face_model, batch_size=batch_size,
                  overlay=overlay, workers=workers, writers=writers,
                  prefetch_batches=prefetch_batches, refine=refine, mirror=mirror,
                  box_convention=box_convention, matmul_dtype=matmul_dtype)
  processes = min(processes, max(len(entries), 1))
  if processes > 1:  # each worker reads the flags' files itself
    summary = _align_in_processes(entries, out_dir, settings, processes, progress, report)
  else:
    summary = _align_entries(entries, out_dir, progress=progress, report=report, inputs=inputs,
                             **settings)
  summary.pop("start_time")
  summary.pop("end_time")
  summary = dict(summary, written=[stem for _, stem in sorted(summary["written"])],
                 skipped_files=[str(p) for p in skipped], processes=processes)
  if run_summary:
    document = {k: v for k, v in summary.items() if k not in ("written", "failed")}
    document["failed"] = summary["failed"]
    try:
      file_io.write_json_atomic(out_dir / RUN_SUMMARY, document)
    except OSError as error:
      report(f"align: cannot write {out_dir / RUN_SUMMARY} ({file_io.error_line(error)})")
  return summary


def _align_entries(entries: List[Tuple[int, str, str]], out_dir: Path, *, bbox: Optional[str],
                   boxes: Optional[str], cascade: Optional[str], features: Optional[str],
                   checkpoint: Optional[str], face_model: Optional[str], batch_size: int,
                   overlay: bool, workers: int, writers: int, prefetch_batches: int,
                   refine: Optional[int], mirror: bool, box_convention: str, progress: bool,
                   report: Callable[[str], None],
                   on_image: Optional[Callable[[], None]] = None,
                   on_ready: Optional[Callable[[], None]] = None,
                   inputs: Optional[Tuple[Any, Optional[Dict[str, Any]], Any]] = None,
                   matmul_dtype: Optional[str] = None) -> Dict[str, Any]:
  """The stream of :func:`align_files` in this process over ``entries`` ``(input index, image
  path, output stem)`` (arguments checked there). ``on_ready()`` runs once the aligner is
  compiled, just before the first image is read; ``on_image()`` after each image's outputs are
  written or its failure reported. ``inputs``: :func:`_read_inputs` of the flags when the caller
  has read them already (else they are read here).

  Returns:
    :func:`align_files`' summary, except that ``written`` holds ``(input index, stem)`` pairs and
    ``skipped_files`` / ``processes`` are missing; plus ``start_time`` / ``end_time``
    (``time.time()`` of the first read and the last write).
  """
  from dff_jax import detection  # pylint: disable=g-import-not-at-top
  from dff_jax import image_io  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import draw  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import results  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import runner  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import streaming  # pylint: disable=g-import-not-at-top
  common_box, box_map, spec = inputs or _read_inputs(bbox, boxes, cascade, features, checkpoint,
                                                     face_model, mirror, matmul_dtype)
  aligner = runner.load_aligner(spec)
  outline = draw.mesh_outline_structure(aligner.face_model) if overlay else None

  passes = streaming.REFINE_DETECTED if refine is None else refine

  def job(index: int, path: Path, stem: str):
    def load():
      box = _given_box(path, common_box, box_map, boxes)
      # Decode grey when nothing needs colour: the descriptor reads only the luma, no overlay
      # is drawn and no detector runs (a JPEG's luma plane alone is about 3x cheaper to decode).
      detect = runner.asks_detection(box)
      image = image_io.read_image(path, grey=aligner.channels == 1 and not overlay and not detect)
      return streaming.Loaded(image=image, box=box,
                              truth=dict(index=index, stem=stem, path=str(path),
                                         size_wh=[image.shape[1], image.shape[0]],
                                         box_source=box_source_of(box)),
                              refine=streaming.given_box_passes(box, box_convention, passes))
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
        file_io.write_bytes_atomic(out_dir / f"{truth['stem']}_overlay.png", png_bytes(picture),
                                   durable=False)
      file_io.write_json_atomic(out_dir / f"{truth['stem']}.json", document, durable=False,
                                indent=None)
    except OSError as error:
      return f"{outcome.job.name}: cannot write outputs ({streaming.one_line(error)})"
    finally:
      with lock:
        write_seconds[0] += time.perf_counter() - start
    return None

  jobs = [job(n, Path(p), s) for n, p, s in entries]
  written: List[Any] = []  # (input index, stem)
  failed: List[str] = []
  face_counts = collections.Counter()  # faces written by box source; images without a face
  queue: collections.deque = collections.deque()  # (outcome, future) in input order
  max_queued = 2 * batch_size

  def low_agreement(face) -> bool:
    """The face's agreement is below the cascade's threshold (:mod:`dff_jax.alignment.agreement`)."""
    return (aligner.min_agreement is not None and face.agreement is not None
            and face.agreement < aligner.min_agreement)

  def failure(message: str) -> None:
    failed.append(message)
    report(f"align: skipped {message}")
    if on_image is not None:
      on_image()

  def drain(limit: int) -> None:
    while len(queue) > limit:
      outcome, future = queue.popleft()
      message = future.result() if writers else future
      if message is not None:
        failure(message)
        continue
      truth = outcome.loaded.truth
      for number, face in enumerate(outcome.faces):
        if low_agreement(face):
          report(f"align: warning: {outcome.job.name}: face {number}: agreement "
                 f"{face.agreement:.3f} is below the cascade's {aligner.min_agreement:.3f}: "
                 f"its box may hold no face")
      written.append((truth["index"], truth["stem"]))
      face_counts[truth["box_source"].split(":")[0]] += len(outcome.faces)
      face_counts["no face"] += not outcome.faces
      if on_image is not None:
        on_image()

  compile_s = aligner.compile(batch_size)
  given = list(box_map.values()) if box_map is not None else [common_box]
  if any(runner.asks_detection(box) for box in given):
    compile_s += warm_up_detector(detection)  # some images are given no box
  if on_ready is not None:
    on_ready()
  stats = streaming.RunStats()
  pool = (futures_lib.ThreadPoolExecutor(writers, thread_name_prefix="dff-align-write")
          if writers else None)
  start, start_time = time.perf_counter(), time.time()
  try:
    for outcome in streaming.run_jobs(aligner, jobs, batch_size, progress=progress,
                                      total=len(jobs), keep_loaded=overlay, workers=workers,
                                      prefetch_batches=prefetch_batches, stats=stats,
                                      refine=passes):
      if outcome.error is not None:
        failure(outcome.error)
        continue
      queue.append((outcome, pool.submit(write, outcome) if pool else write(outcome)))
      drain(max_queued)
    drain(0)
  finally:
    if pool is not None:
      pool.shutdown(wait=True, cancel_futures=True)
  wall_s = time.perf_counter() - start
  return {
      "out_dir": str(out_dir), "written": written,
      "failed": failed, "images": len(jobs), "failures": len(failed),
      "faces": sum(v for k, v in face_counts.items() if k != "no face"),
      "faces_detected": face_counts["detector"],
      "images_without_faces": face_counts["no face"], "wall_s": round(wall_s, 3),
      "images_per_second": round(len(jobs) / max(wall_s, 1e-9), 2),
      "compile_s": round(compile_s, 3), "decode_s": round(stats.prepare_s, 3),
      "align_s": round(stats.align_s, 3), "wait_decode_s": round(stats.wait_prepare_s, 3),
      "write_s": round(write_seconds[0], 3), "max_images_in_memory": stats.max_in_memory,
      "batch_size": batch_size, "workers": workers, "writers": writers, "overlays": overlay,
      "features": aligner.spec.features, "start_time": start_time, "end_time": time.time(),
  }


# Summed over processes when merging their summaries (the rest: see _align_in_processes).
_SUMMED = ("images", "failures", "faces", "faces_detected", "images_without_faces", "decode_s",
           "align_s", "wait_decode_s", "write_s", "max_images_in_memory")
_READY_TIMEOUT_S = 1800.0   # a worker process's loading and compiling


def _process_worker(rank: int, cores: Optional[List[int]], entries, out_dir: str,
                    settings: Dict[str, Any], events, ready) -> None:
  """One worker process of :func:`_align_in_processes` (the target of a "spawn" process).

  Pins itself to ``cores`` with XLA:CPU's thread pool sized to them
  (:func:`dff_jax.cpu_processes.pin`), streams ``entries`` into ``out_dir``,
  and puts ``("image",)`` per image, ``("report", message)``, then ``("done", rank, summary)``
  or ``("error", rank, one-line message)`` on ``events``; waits on the ``ready`` barrier once
  compiled so that every process starts reading images together.
  """
  cpu_processes.pin(cores)
  try:
    import jax  # pylint: disable=g-import-not-at-top
    if jax.default_backend() != "cpu":
      raise ValueError(f"--processes > 1 splits the images over CPU processes, but JAX runs on "
                       f"{jax.default_backend()} here: use --processes=1 (one process per "
                       "accelerator host)")

    def on_ready():
      try:
        ready.wait(timeout=_READY_TIMEOUT_S)
      except threading.BrokenBarrierError:
        raise ValueError("another worker process failed before aligning") from None

    summary = _align_entries(entries, Path(out_dir), progress=False,
                             report=lambda message: events.put(("report", message)),
                             on_image=lambda: events.put(("image",)), on_ready=on_ready,
                             **settings)
    events.put(("done", rank, summary))
  except BaseException as error:  # pylint: disable=broad-except
    ready.abort()
    events.put(("error", rank, file_io.error_line(error)))


def _align_in_processes(entries: List[Tuple[int, str, str]], out_dir: Path,
                        settings: Dict[str, Any], processes: int, progress: bool,
                        report: Callable[[str], None]) -> Dict[str, Any]:
  """:func:`align_files` over ``processes`` worker processes (entries dealt out in turn: worker
  ``k`` takes entries ``k, k + processes, ...``); their summaries merged (counts and thread
  times summed, ``wall_s`` from the first process's first read to the last one's last write,
  ``compile_s`` the slowest's)."""
  import queue as queue_lib  # pylint: disable=g-import-not-at-top
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  context = cpu_processes.context()
  events = context.Queue()
  ready = context.Barrier(processes)
  workers = [context.Process(target=_process_worker, name=f"dff-align-{rank}", daemon=True,
                             args=(rank, cores, entries[rank::processes], str(out_dir),
                                   settings, events, ready))
             for rank, cores in enumerate(cpu_processes.core_groups(processes))]
  bar = tqdm(total=len(entries), unit="image", desc=f"align ({processes} processes)",
             dynamic_ncols=True, disable=None if progress else True)
  summaries: Dict[int, Dict[str, Any]] = {}
  errors: Dict[int, str] = {}
  try:
    for worker in workers:
      worker.start()
    while len(summaries) + len(errors) < processes:
      try:
        event = events.get(timeout=1.0)
      except queue_lib.Empty:
        for rank, worker in enumerate(workers):
          if rank not in summaries and rank not in errors and not worker.is_alive():
            errors[rank] = f"exited with code {worker.exitcode} before reporting"
        continue
      if event[0] == "image":
        bar.update(1)
      elif event[0] == "report":
        report(event[1])
      elif event[0] == "done":
        summaries[event[1]] = event[2]
      else:
        errors[event[1]] = event[2]
  finally:
    bar.close()
    for worker in workers:
      worker.join(timeout=10.0)
      if worker.is_alive():
        worker.terminate()
  if errors:
    # The first process's own failure, rather than the others' "another process failed".
    rank = min(errors, key=lambda r: ("another worker process failed" in errors[r], r))
    raise ValueError(f"--processes={processes}: worker process {rank} failed: {errors[rank]}")
  parts = [summaries[rank] for rank in range(processes)]
  merged = dict(parts[0])
  for key in _SUMMED:
    merged[key] = sum(part[key] for part in parts)
  for key in ("decode_s", "align_s", "wait_decode_s", "write_s"):
    merged[key] = round(merged[key], 3)
  merged["written"] = [item for part in parts for item in part["written"]]
  merged["failed"] = [message for part in parts for message in part["failed"]]
  merged["compile_s"] = max(part["compile_s"] for part in parts)
  merged["start_time"] = min(part["start_time"] for part in parts)
  merged["end_time"] = max(part["end_time"] for part in parts)
  merged["wall_s"] = round(merged["end_time"] - merged["start_time"], 3)
  merged["images_per_second"] = round(merged["images"] / max(merged["wall_s"], 1e-9), 2)
  return merged


def warm_up_detector(detection) -> float:
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


def check_outputs_spare_inputs(paths: Sequence[Path], stems: Sequence[str], out_dir: str | Path,
                               overlay: bool, extra: Sequence[str] = (RUN_SUMMARY,)) -> None:
  """Refuses an ``out_dir`` where an output file would replace an input image (``--out_dir``
  the images' own folder, holding an earlier run's ``<stem>_overlay.png`` among the images).

  Args:
    paths: the input images; stems: their output stems (:func:`streaming.output_stems`).
    out_dir: the output folder; overlay: whether ``<stem>_overlay.png`` files are written.
    extra: other files written into ``out_dir``.

  Raises:
    ValueError: one line naming the image and the input it would replace.
  """
  inputs = {Path(p).resolve(): Path(p) for p in paths}
  out_dir = Path(out_dir)
  names = [(f"{stem}.json", path) for stem, path in zip(stems, paths)]
  if overlay:
    names += [(f"{stem}_overlay.png", path) for stem, path in zip(stems, paths)]
  names += [(name, None) for name in extra]
  for name, source in names:
    target = (out_dir / name).resolve()
    if target in inputs:
      made_by = f" for {source}" if source is not None else ""
      raise ValueError(f"--out_dir={out_dir}: the output {name}{made_by} would replace the "
                       f"input image {inputs[target]}; choose another --out_dir (or move the "
                       "earlier outputs out of the images' folder)")


def box_source_of(box: Any) -> str:
  """The ``box_source`` of an image's document for its given box (:func:`_given_box`):
  ``"detector: <name>"`` when its faces are found, ``"whole image"`` or ``"given"``."""
  from dff_jax import detection  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import runner  # pylint: disable=g-import-not-at-top
  if runner.asks_detection(box):
    return f"detector: {detection.DETECTOR_NAME}"
  return "whole image" if isinstance(box, str) and box == runner.WHOLE_IMAGE else "given"


def summary_line(summary: Dict[str, Any]) -> str:
  """The one-line human summary of :func:`align_files`' result."""
  found = (f" ({summary['faces_detected']} found by the detector, "
           f"{summary['images_without_faces']} images without a face)"
           if summary["faces_detected"] or summary["images_without_faces"] else "")
  count = len(summary.get("skipped_files") or ())
  skipped = f", {count} other file{'s' * (count != 1)} skipped" if count else ""
  return (f"align: {summary['images']} images, {len(summary['written'])} written, "
          f"{summary['failures']} failed{skipped}; {summary['faces']} faces{found} in "
          f"{summary['wall_s']:.2f} s = {summary['images_per_second']:.1f} images/s (compile "
          f"{summary['compile_s']:.1f} s; decode + detect {summary['decode_s']:.1f} s, align "
          f"{summary['align_s']:.1f} s, write {summary['write_s']:.1f} s summed over threads)")


def _jitted(aligner, num_views: int, share_expression: bool, prior_per_view: bool):
  """The jitted multi-view cascade for ``num_views`` working images (cached per aligner)."""
  import jax  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import multiview  # pylint: disable=g-import-not-at-top
  key = (id(aligner), num_views, bool(share_expression), bool(prior_per_view))
  if key not in _COMPILED:
    describer, config = aligner.describer, aligner.config

    def run(describer_params, alignment_model, params, images, boxes):
      return multiview.align_multiview_images(
          lambda crops: describer.apply(describer_params, crops), alignment_model, params, images,
          boxes, config, share_expression, prior_per_view=prior_per_view)
    while len(_COMPILED) >= 4:
      _COMPILED.pop(next(iter(_COMPILED)))
    _COMPILED[key] = jax.jit(run)
  return _COMPILED[key]


def align_multiview_files(images: str, out_dir: str | Path, bbox: Optional[str] = None,
                          boxes: Optional[str] = None, cascade: Optional[str] = None,
                          checkpoint: Optional[str] = None, features: Optional[str] = None,
                          face_model: Optional[str] = None, share_expression: bool = False,
                          overlay: bool = True, report=None,
                          prior_per_view: bool = True,
                          command: str = "align_multiview") -> Dict[str, Any]:
  """``experiments.align --multiview``: aligns the images of one person jointly and writes the
  results.

  Args:
    images, bbox, boxes, cascade, checkpoint, features, face_model: as for
      :func:`align_files` (``None`` = the defaults there).
    out_dir: output folder (created).
    share_expression: one expression vector for all images.
    prior_per_view: count the identity prior once per image (default) instead of once.
    overlay: write the overlay PNGs.
    report: ``callable(message)`` for per-image failures (default: print to stderr).
    command: the command named at the start of those messages (``align`` for ``align
      --multiview``).

  Returns:
    ``{"out_dir", "written": [stems], "failed": [one-line messages], "faces" (one per written
    image), "shape_coefficients": [Ki] list}``.

  Raises:
    FileNotFoundError / ValueError: bad arguments, no usable image, missing cascade / checkpoint
      (one-line messages; nothing written).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dff_jax import image_io  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import draw  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import results  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import runner  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import streaming  # pylint: disable=g-import-not-at-top
  if report is None:
    def report(message):
      print(message, file=sys.stderr, flush=True)
  if bbox and boxes:
    raise ValueError("pass either --bbox or --boxes, not both")
  paths, skipped = streaming.find_images(images)
  check_outputs_spare_inputs(paths, streaming.output_stems(paths), out_dir, overlay,
                             extra=("multiview.json",))
  if skipped:
    report(f"{command}: warning: {streaming.skipped_files_line(skipped)}")
  common_box, box_map, spec = _read_inputs(bbox, boxes, cascade, features, checkpoint, face_model)
  aligner = runner.load_aligner(spec)
  stems = streaming.output_stems(paths)

  failed: List[str] = []
  views = []  # (path, stem, image, box, crop_box, work_image, work_box)
  for path, stem in zip(paths, stems):
    try:
      box = _given_box(path, common_box, box_map, boxes)
      source = box_source_of(box)
      image = image_io.read_image(path)
      found, scores = runner.face_boxes(image, box, aligner.config.box_scale, str(path))
      if len(found) != 1 and box is not None and not isinstance(box, str):
        raise ValueError(f"{path}: give one face box per image with --multiview, got "
                         f"{len(found)}")
      if not len(found):
        raise ValueError(f"{path}: no face found (pass its box with --bbox / --boxes)")
      box, score = found[0], scores[0]  # the detector's best face when no box was given
      work_image, crop_box, work_box = runner.working_crop(image, box, aligner.config,
                                                           aligner.work_size, aligner.channels)
    except streaming.READ_ERRORS as error:
      message = streaming.one_line(error)
      if str(path) not in message:
        message = f"{path}: {message}"
      failed.append(message)
      report(f"{command}: skipped {message}")
      continue
    views.append((path, stem, image, box, crop_box, work_image, work_box, score, source))
  if not views:
    raise ValueError(f"--images={images}: none of the {len(paths)} images could be used "
                     "(see the messages above)")

  run = _jitted(aligner, len(views), share_expression, prior_per_view)
  result = run(aligner.describer.params, aligner.alignment_model, aligner.params,
               np.stack([v[5] for v in views]), np.stack([v[6] for v in views]).astype(np.float32))
  result = runner.CompiledCascade.fetch(result)
  faces = [runner.to_image_frame(result, n, v[4], v[3], aligner.work_size, v[7])
           for n, v in enumerate(views)]
  if not all(face.is_finite() for face in faces):
    raise ValueError(f"--images={images}: the joint alignment diverged (non-finite result)")

  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  outline = draw.mesh_outline_structure(aligner.face_model) if overlay else None
  common = dict(features=aligner.spec.features, cascade=str(aligner.spec.cascade_path),
                face_model=aligner.face_model.name)
  shape = np.asarray(faces[0].shape_coefficients, np.float32)
  written: List[str] = []
  entries = []
  for (path, stem, image, *_, source), face in zip(views, faces):
    face = dataclasses.replace(face, shape_coefficients=shape)  # the shared identity
    document = results.image_document(
        path, (image.shape[1], image.shape[0]), [face], multiview=True,
        share_expression=bool(share_expression), prior_per_view=bool(prior_per_view),
        box_source=source, **common)
    if overlay:
      picture = draw.render_faces_overlay(image, [face], aligner.face_model, outline)
      image_io.write_png_atomic(out_dir / f"{stem}_overlay.png", np.asarray(picture, np.uint8))
    file_io.write_json_atomic(out_dir / f"{stem}.json", document)
    written.append(stem)
    entries.append(dict(stem=stem, image=str(path), json=f"{stem}.json",
                        expression_coefficients=document["faces"][0]["expression_coefficients"],
                        pose=document["faces"][0]["pose"]))
  file_io.write_json_atomic(out_dir / "multiview.json", dict(
      shape_coefficients=shape.astype(np.float64).tolist(),
      share_expression=bool(share_expression), prior_per_view=bool(prior_per_view),
      num_views=len(views), views=entries, skipped=failed, **common))
  return {"out_dir": str(out_dir), "written": written, "failed": failed, "faces": len(written),
          "shape_coefficients": shape.astype(np.float64).tolist()}
