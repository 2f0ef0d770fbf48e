r"""Fits pose, identity and expression of a face model to one file of 68 landmarks.

  python -m experiments.fit_landmarks --landmarks=face.pts [--image=face.jpg] \
      [--face_model=default|sfm|ict|PATH.npz] [--contour=nearest|silhouette|fixed] --out_dir=DIR

Writes ``DIR/<stem>.json``: ``landmarks_px`` (the 68 fitted landmarks reprojected, ``[68, 2]``
image (x, y) pixels, pixel (i, j) centred at (j + 0.5, i + 0.5)), ``pose`` (``yaw_deg``,
``pitch_deg``, ``roll_deg`` in our Euler convention ``R = Rz(roll) Ry(yaw) Rx(pitch)``, ``scale``
in pixels per mm, ``translation_px``), ``shape_coefficients``, ``expression_coefficients``,
``landmark_vertex_ids`` and the reprojection ``nme_inter_ocular``; with ``--image`` also
``DIR/<stem>_overlay.png`` (input landmarks green, fitted red). Files appear atomically (temp file
+ rename). Bad input: one line on stderr, exit status 1. Library:
:func:`dff_jax.alignment.fit_files.fit_landmarks_file`.
"""

from __future__ import annotations

import json
import sys

from absl import app
from absl import flags

from experiments import cli

from dff_jax.alignment import fit_files
from dff_jax.file_io import error_line

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the command's flags (only when run as a program, so tests can import mains)."""
  flags.DEFINE_string("landmarks", None, "68-landmark file (.pts, .ljson, .json, .npy, .mat).")
  flags.DEFINE_string("image", None, "Optional image; writes <stem>_overlay.png.")
  flags.DEFINE_string("face_model", "default", "'default', 'sfm', 'ict' or a face model path.")
  flags.DEFINE_enum("contour", None, ["nearest", "silhouette", "fixed"],
                    "Jaw correspondences (default: 'fixed' for AFLW2000-3D .mat files, whose "
                    "points are projected 3D landmarks, else 'nearest'); 'nearest' / "
                    "'silhouette' for annotations on the visible outline.")
  flags.DEFINE_float("regularisation", None, "Shape prior weight lambda (mm^2).")
  flags.DEFINE_integer("num_iterations", None, "Pose/shape alternations.")
  flags.DEFINE_string("out_dir", None, "Output folder.")


def main(argv):
  cli.refuse_arguments(argv)
  if not FLAGS.landmarks or not FLAGS.out_dir:
    sys.exit("fit_landmarks: error: --landmarks and --out_dir are required")
  try:
    document = fit_files.fit_landmarks_file(
        FLAGS.landmarks, FLAGS.out_dir, FLAGS.image, FLAGS.face_model, FLAGS.contour,
        FLAGS.regularisation, FLAGS.num_iterations)
  except (OSError, ValueError) as error:
    sys.exit(f"fit_landmarks: error: {error_line(error)}")
  pose = document["pose"]
  print(json.dumps({"out_dir": str(FLAGS.out_dir), "nme_inter_ocular": document["nme_inter_ocular"],
                    "yaw_deg": pose["yaw_deg"], "pitch_deg": pose["pitch_deg"],
                    "roll_deg": pose["roll_deg"], "scale": pose["scale"]}))


if __name__ == "__main__":
  define_flags()
  app.run(main)
