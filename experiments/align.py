r"""Aligns faces in image files: 68 landmarks, visibility, pose and 3DMM coefficients.

  python -m experiments.align --images=PATH|GLOB|DIR[,...] --out_dir=DIR \
      [--bbox=x0,y0,x1,y1 | --boxes=FILE.json] [--box_convention=detector|landmarks] \
      [--cascade=default|fast|synthetic|FILE] [--features=dff|sift] [--mirror] [--refine=2] \
      [--checkpoint=DIR] [--face_model=default|PATH] [--batch_size=8] [--overlays=true|false] \
      [--workers=2] [--writers=2] [--prefetch_batches=2] [--processes=1] [--run_summary] \
      [--matmul_dtype=float32|bfloat16]
  python -m experiments.align --images=IMG1,IMG2,...|DIR --multiview [--share_expression] \
      [--prior_per_view=true|false] ...

Inputs:
  * ``--images``: an image file, a directory (its image files, not recursive), a glob pattern,
    or a comma-separated list of those. Image files are recognised by extension (JPEG, PNG, BMP,
    GIF, TIFF, WebP, PPM / PGM / PNM / PBM, TGA, JPEG 2000, AVIF:
    ``dff_jax.alignment.streaming.IMAGE_EXTENSIONS``); the other files of a folder or glob are
    counted and named in one line ``align: warning: skipped N files ...`` on stderr.
  * Faces: **without a box every face of the image is found** by the face detector
    (:func:`dff_jax.detection.detect_faces`, MediaPipe BlazeFace; best first) and each is
    aligned. A face box ``(x0, y0, x1, y1)`` in image pixels (x right, y down, pixel (i, j)
    centred at (j + 0.5, i + 0.5)) is any face detector's box (``--box_convention=detector``,
    the default: each face is aligned, then up to ``--refine`` more times from the box of its
    own landmarks, until that crop stops moving) or the bounding box of the face's 68
    landmarks (``--box_convention=landmarks``: aligned once, the 300-W / AFLW2000-3D
    protocol): ``--bbox``
    for every image (``--bbox=whole``: the whole image is the face crop), or ``--boxes``, a JSON
    object mapping image file names (or paths as given, or stems) to ``[x0, y0, x1, y1]``,
    ``[[x0, y0, x1, y1], ...]`` (several faces; ``[]`` none), ``null`` / ``"detect"`` (find the
    faces) or ``"whole"``; an image missing from the file is reported and skipped.
    (Before issue 13, ``null`` and no box meant the whole image: use ``"whole"`` for that now.)
  * ``--cascade``: a shipped cascade by name (``default``; ``fast``, the same data on 96 px
    crops, about 1.5x as fast; ``synthetic``, trained on renders only) or a file from
    ``experiments.train_alignment`` (default: the shipped default); ``--features`` defaults to
    the cascade's. ``--checkpoint``: the DFF encoder (default: the one the cascade names).
  * ``--mirror``: test-time mirroring, every face also aligned mirrored left-right and each
    stage's two steps averaged (more accurate, about twice the alignment time).
  * ``--matmul_dtype=bfloat16``: the DFF encoder's matrix products (3x3 convolutions, the point
    head) on bfloat16 operands, accumulated in float32, the same weights: faster on CPUs with
    bfloat16 matrix units (Intel AMX) and on TPUs (README, "Aligning photos").

``--multiview``: the images show one person; they are aligned jointly (one identity shared by
all, each its own pose, landmarks and expression; see :mod:`experiments.align_multiview`), and
``DIR/multiview.json`` holds the shared identity. Each image's document has its one face (the
given box's, or the detector's best) and ``multiview: true``, ``share_expression`` and
``prior_per_view`` beside the keys below; ``--prior_per_view=false`` counts the identity prior
once for all images (the plain MAP fit) instead of once per image. ``--mirror`` and
``--processes`` and ``--matmul_dtype`` are refused with ``--multiview``.

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

``--processes=N`` (CPU hosts) deals the images out to N worker processes, each pinned to its
share of the cores and streaming as above into the same ``--out_dir`` under the same names: on
XLA:CPU one process leaves cores idle, so on a large folder one process per core aligns more
faces per second (each loads and compiles the aligner itself, a few seconds and its own memory).

At the end one summary line goes to stdout (images, written, failed, other files skipped,
faces, wall seconds,
images/s, compile seconds, the decode + detect / align / write time split), followed by the JSON
line ``{"out_dir", "written", "failed", "faces"}`` (with ``--multiview``, only that line); with ``--run_summary`` the figures are also written to
``DIR/run_summary.json``. A bad image (unreadable, bad box) is reported on stderr in one line and
skipped; the exit status is 1 if any image failed, 2 (one-line message) for bad arguments or a
missing cascade / checkpoint.
"""

from __future__ import annotations

import json
import sys

from absl import app
from absl import flags
from dff_jax import file_io
from experiments import cli
from experiments import align_flags

FLAGS = flags.FLAGS


def main(argv):
  cli.refuse_arguments(argv)
  if not FLAGS.images or not FLAGS.out_dir:
    print("align: error: --images and --out_dir are required", file=sys.stderr)
    sys.exit(2)
  cli.use_compilation_cache()
  if FLAGS.multiview:
    return align_flags.run_multiview(FLAGS, "align")
  from dff_jax.alignment import files  # pylint: disable=g-import-not-at-top
  try:
    summary = files.align_files(FLAGS.images, FLAGS.out_dir, FLAGS.bbox, FLAGS.boxes,
                                FLAGS.cascade, FLAGS.features, FLAGS.checkpoint,
                                FLAGS.face_model, FLAGS.batch_size, FLAGS.overlay,
                                workers=FLAGS.workers, writers=FLAGS.writers,
                                prefetch_batches=FLAGS.prefetch_batches,
                                run_summary=FLAGS.run_summary, refine=FLAGS.refine,
                                mirror=FLAGS.mirror, processes=FLAGS.processes,
                                box_convention=FLAGS.box_convention,
                                matmul_dtype=FLAGS.matmul_dtype)
  except (OSError, ValueError) as error:
    print(f"align: error: {file_io.error_line(error)}", file=sys.stderr)
    sys.exit(2)
  print(files.summary_line(summary), flush=True)
  print(json.dumps({"out_dir": summary["out_dir"], "written": len(summary["written"]),
                    "failed": len(summary["failed"]), "faces": summary["faces"]}))
  if summary["failed"]:
    sys.exit(1)


if __name__ == "__main__":
  align_flags.define_flags()
  app.run(main)
