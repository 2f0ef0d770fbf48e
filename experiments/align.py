r"""Aligns faces in image files: 68 landmarks, visibility, pose and 3DMM coefficients.

  python -m experiments.align --images=PATH|GLOB|DIR[,...] --out_dir=DIR \
      [--bbox=x0,y0,x1,y1 | --boxes=FILE.json] [--cascade=FILE] [--features=dff|sift] \
      [--checkpoint=DIR] [--face_model=default|PATH] [--batch_size=8]

Inputs:
  * ``--images``: an image file, a directory (its image files, not recursive), a glob pattern,
    or a comma-separated list of those.
  * Face box ``(x0, y0, x1, y1)`` in image pixels (x right, y down, pixel (i, j) centred at
    (j + 0.5, i + 0.5)), like a face detector's box: ``--bbox`` for every image, or ``--boxes``, a
    JSON object mapping image file names (or paths as given, or stems) to boxes (``null`` = whole
    image; an image missing from the file is reported and skipped). Without either, the whole
    image is the face crop.
  * ``--cascade``: a cascade from ``experiments.train_alignment`` (default: the shipped
    ``dff_jax/assets/cascade_<features>.npz``); ``--features`` defaults to the cascade's.
    ``--checkpoint``: the DFF encoder (default: the shipped ``dff_jax/assets/dff_default``).

Outputs, per image, written atomically (temporary file + rename):
  * ``DIR/<stem>.json``: ``landmarks_px`` [68, 2] image pixels; ``visibility`` [68] bool;
    ``pose`` {``yaw_deg``, ``pitch_deg``, ``roll_deg`` (R = Rz(roll) Ry(yaw) Rx(pitch), positive
    yaw = nose to the image right), ``scale`` (px per mm, weak perspective), ``translation_px``
    (image position of the model origin)}; ``shape_coefficients``; ``expression_coefficients``;
    ``box`` (the face box used) and ``crop_box``; ``image``, ``features``, ``cascade``,
    ``face_model``.
  * ``DIR/<stem>_overlay.png``: the fitted mesh outline (cyan), pose axes from the nose tip
    (model x red, y green, z blue), visible landmarks as filled green discs and hidden ones as
    hollow red rings, the face box in grey.

Images go through the jitted cascade in fixed-size batches (each face's crop box is resampled on
the host to a fixed working size, see :mod:`dff_jax.alignment.runner`), with a progress bar on a
terminal. A bad image (unreadable, bad box) is reported on stderr in one line and skipped; the
exit status is 1 if any image failed, 2 (one-line message) for bad arguments or a missing
cascade / checkpoint.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from absl import app
from absl import flags
from dff_jax import file_io

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the command's flags (only when run as a program)."""
  flags.DEFINE_string("images", None, "Image file, directory, glob, or comma-separated list.")
  flags.DEFINE_string("bbox", None, "Face box x0,y0,x1,y1 (image pixels) for every image.")
  flags.DEFINE_string("boxes", None, "JSON file mapping image file names to [x0, y0, x1, y1].")
  flags.DEFINE_string("cascade", None, "Cascade .npz (default: the shipped one).")
  flags.DEFINE_enum("features", None, ["dff", "sift"], "Descriptor kind (default: the cascade's).")
  flags.DEFINE_string("checkpoint", None, "DFF inference bundle or training workdir.")
  flags.DEFINE_string("face_model", None, "'default', 'ict', 'sfm' or a face-model file "
                      "(default: the cascade's).")
  flags.DEFINE_integer("batch_size", 8, "Faces per jitted batch.")
  flags.DEFINE_boolean("overlay", True, "Write <stem>_overlay.png.")
  flags.DEFINE_string("out_dir", None, "Output folder.")


def align_files(images: str, out_dir: str | Path, bbox: Optional[str] = None,
                boxes: Optional[str] = None, cascade: Optional[str] = None,
                features: Optional[str] = None, checkpoint: Optional[str] = None,
                face_model: Optional[str] = None, batch_size: int = 8, overlay: bool = True,
                progress: bool = True, report=None) -> Dict[str, Any]:
  """The command as a function.

  Args:
    images, bbox, boxes, cascade, features, checkpoint, face_model, batch_size: as the flags.
    out_dir: output folder (created).
    overlay: write the overlay PNGs.
    progress: show the tqdm bar (on a terminal).
    report: ``callable(message)`` for per-image failures (default: print to stderr).

  Returns:
    ``{"written": [stems], "failed": [one-line messages], "out_dir": ...}``.

  Raises:
    FileNotFoundError / ValueError: bad arguments, missing cascade / checkpoint (nothing written).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import runner  # pylint: disable=g-import-not-at-top
  if report is None:
    def report(message):
      print(message, file=sys.stderr, flush=True)
  if bbox and boxes:
    raise ValueError("pass either --bbox or --boxes, not both")
  if batch_size < 1:
    raise ValueError(f"--batch_size must be >= 1, got {batch_size}")
  paths = runner.list_images(images)
  common_box = runner.parse_bbox(bbox) if bbox else None
  box_map = runner.read_boxes_file(boxes) if boxes else None
  spec = runner.resolve_aligner(cascade, features, checkpoint, face_model)
  from dff_jax import image_io  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import draw  # pylint: disable=g-import-not-at-top
  aligner = runner.load_aligner(spec)
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  outline = draw.mesh_outline_structure(aligner.face_model) if overlay else None

  def job(path: Path, stem: str):
    def load():
      if box_map is not None:
        found, box = runner.box_for(box_map, path)
        if not found:
          raise ValueError(f"{path}: no entry for {path.name} in --boxes file {boxes}")
      else:
        box = common_box
      image = image_io.read_image(path)
      return runner.Loaded(image=image, box=None if box is None else box,
                           truth=dict(stem=stem, path=str(path)))
    return runner.Job(name=str(path), load=load)

  stems = runner.output_stems(paths)
  jobs = [job(p, s) for p, s in zip(paths, stems)]
  written: List[str] = []
  failed: List[str] = []
  for outcome in runner.run_jobs(aligner, jobs, batch_size, progress=progress, total=len(jobs)):
    if outcome.error is not None:
      failed.append(outcome.error)
      report(f"align: skipped {outcome.error}")
      continue
    stem, face = outcome.loaded.truth["stem"], outcome.face
    document = face.to_json()
    document.update(image=outcome.loaded.truth["path"], features=aligner.spec.features,
                    cascade=str(aligner.spec.cascade_path), face_model=aligner.face_model.name)
    try:
      if overlay:
        picture = draw.render_overlay(outcome.loaded.image, face.landmarks_px, face.visibility,
                                      face.pose(), face.shape_coefficients,
                                      face.expression_coefficients, aligner.face_model, outline,
                                      box_xyxy=face.box)
        image_io.write_png_atomic(out_dir / f"{stem}_overlay.png", np.asarray(picture, np.uint8))
      file_io.write_json_atomic(out_dir / f"{stem}.json", document)
    except OSError as error:
      message = f"{outcome.job.name}: cannot write outputs ({runner.one_line(error)})"
      failed.append(message)
      report(f"align: skipped {message}")
      continue
    written.append(stem)
  return {"out_dir": str(out_dir), "written": written, "failed": failed}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.images or not FLAGS.out_dir:
    print("align: error: --images and --out_dir are required", file=sys.stderr)
    sys.exit(2)
  try:
    summary = align_files(FLAGS.images, FLAGS.out_dir, FLAGS.bbox, FLAGS.boxes, FLAGS.cascade,
                          FLAGS.features, FLAGS.checkpoint, FLAGS.face_model, FLAGS.batch_size,
                          FLAGS.overlay)
  except (OSError, ValueError) as error:
    print(f"align: error: {file_io.error_line(error)}", file=sys.stderr)
    sys.exit(2)
  print(json.dumps({"out_dir": summary["out_dir"], "written": len(summary["written"]),
                    "failed": len(summary["failed"])}))
  if summary["failed"]:
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
