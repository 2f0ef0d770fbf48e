"""The flags of ``experiments.align`` and ``experiments.align_multiview`` (one set: the second is
``align --multiview``), and the multi-view run from parsed flags. Not a command itself.
"""

from __future__ import annotations

import json
import sys

from absl import flags
from dff_jax import file_io

RUN_SUMMARY = "run_summary.json"  # dff_jax.alignment.files.RUN_SUMMARY (no JAX import here)


def define_flags() -> None:
  """Defines the flags of both commands (only when run as a program)."""
  flags.DEFINE_string("images", None, "Image file, directory, glob, or comma-separated list.")
  flags.DEFINE_string("bbox", None, "Face box x0,y0,x1,y1 (image pixels) for every image, or "
                      "'whole' (the whole image); default: find every face with the detector.")
  flags.DEFINE_string("boxes", None, "JSON file mapping image file names to [x0, y0, x1, y1], "
                      "a list of boxes, null (find the faces) or 'whole'.")
  flags.DEFINE_string("cascade", None, "Cascade .npz, or a shipped one by name: default (real + "
                      "synthetic faces), fast (the same data on 96 px crops, about 1.5x as "
                      "fast), synthetic (renders only).")
  flags.DEFINE_enum("features", None, ["dff", "sift"], "Descriptor kind (default: the cascade's).")
  flags.DEFINE_string("checkpoint", None, "DFF inference bundle or training workdir.")
  flags.DEFINE_string("face_model", None, "'default', 'ict', 'sfm' or a face-model file "
                      "(default: the cascade's).")
  flags.DEFINE_integer("batch_size", 8, "Faces per jitted batch.")
  flags.DEFINE_integer("refine", None, "The most extra passes for each face the detector found "
                       "(or given by a detector's box, --box_convention), each from the box of "
                       "the previous pass's landmarks until the crop stops moving (default 2; "
                       "0: align once).")
  flags.DEFINE_enum("box_convention", "detector", ["detector", "landmarks"], "What --bbox / "
                    "--boxes are: detector (any face detector's box, e.g. dlib's: aligned, then up "
                    "to --refine more times from its own landmarks) or landmarks (the bounding box "
                    "of the 68 landmarks, the 300-W / AFLW2000-3D protocol: aligned once).")
  flags.DEFINE_boolean("mirror", False, "Test-time mirroring: align each face and its left-right "
                       "mirror image, averaging every stage's two steps (more accurate, about "
                       "twice the alignment time).")
  flags.DEFINE_enum("matmul_dtype", None, ["float32", "bfloat16"], "Operand dtype of the DFF "
                    "encoder's matrix products, accumulated in float32 (bfloat16: faster on "
                    "CPUs with bfloat16 matrix units such as Intel AMX; README, 'Speed'); "
                    "default: the encoder's own (float32).")
  flags.DEFINE_boolean("overlay", True, "Write <stem>_overlay.png (also --overlays).")
  flags.DEFINE_alias("overlays", "overlay")
  flags.DEFINE_integer("workers", 2, "Threads decoding images and cutting crops (0: none).")
  flags.DEFINE_integer("writers", 2, "Threads writing JSON / overlay files (0: none).")
  flags.DEFINE_integer("prefetch_batches", 2, "Batches of images decoded ahead.")
  flags.DEFINE_integer("processes", 1, "Worker processes on a CPU host, each aligning its share "
                       "of the images on its share of the cores (faster on large folders: one "
                       "per core; each compiles the aligner itself).")
  flags.DEFINE_boolean("run_summary", False, f"Also write DIR/{RUN_SUMMARY} (counts, wall "
                       "seconds, images/s, time split).")
  flags.DEFINE_boolean("multiview", False, "The images show one person: align them jointly "
                       "(shared identity; see experiments/align_multiview.py).")
  flags.DEFINE_boolean("share_expression", False, "With --multiview: one expression for all.")
  flags.DEFINE_boolean("prior_per_view", True, "With --multiview: count the identity prior "
                       "once per image (else once: the plain MAP fit).")
  flags.DEFINE_string("out_dir", None, "Output folder.")


def run_multiview(flag_values, command: str) -> None:
  """Runs :func:`dff_jax.alignment.files.align_multiview_files` from parsed flags
  (``experiments.align_multiview`` or ``experiments.align --multiview``); prints the JSON line,
  exits 1 if an image failed and 2 (one line ``<command>: error: ...``) on bad arguments."""
  if flag_values.mirror:
    print(f"{command}: error: --mirror is not available for multi-view alignment: drop it, or "
          "align the views one by one without --multiview", file=sys.stderr)
    sys.exit(2)
  if flag_values.matmul_dtype is not None:
    print(f"{command}: error: --matmul_dtype is not available for multi-view alignment: drop "
          "it", file=sys.stderr)
    sys.exit(2)
  if flag_values.processes != 1:
    print(f"{command}: error: --processes is not available for multi-view alignment (the views "
          "are aligned jointly, in one process): drop it", file=sys.stderr)
    sys.exit(2)
  try:
    from dff_jax.alignment import files  # pylint: disable=g-import-not-at-top
    summary = files.align_multiview_files(
        flag_values.images, flag_values.out_dir, flag_values.bbox, flag_values.boxes,
        flag_values.cascade, flag_values.checkpoint, flag_values.features,
        flag_values.face_model, flag_values.share_expression, flag_values.overlay,
        prior_per_view=flag_values.prior_per_view, command=command)
  except (OSError, ValueError) as error:
    print(f"{command}: error: {file_io.error_line(error)}", file=sys.stderr)
    sys.exit(2)
  print(json.dumps({"out_dir": summary["out_dir"], "written": len(summary["written"]),
                    "failed": len(summary["failed"]), "faces": summary["faces"]}))
  if summary["failed"]:
    sys.exit(1)
