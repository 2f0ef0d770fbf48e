r"""Compares the embedded default face model with the Surrey Face Model (SFM), and draws it.

  python -m experiments.compare_face_models [--sfm=sfm|PATH.npz] [--num_faces=200] [--seed=0] \
      [--out_png=out/compare_face_models/default_model_grid.png] \
      [--aflw_dir=../shared/datasets/aflw2000_3d_dev --aflw_max_images=300] [--results=FILE.json]

Prints one JSON object (:func:`dff_jax.evaluation.face_models.compare_face_models`, whose
docstring defines each figure): ``landmark_distance_ratio`` (the two similarity-aligned mean
faces' 50 fixed landmarks, over the outer-eye distance), ``fit_nme`` (the default model fitted
to the 68 landmarks of ``--num_faces`` random SFM faces, yaw in [-60, 60] deg; outer-eye-corner
NME; ``fit_nme_by_contour``) and, with ``--aflw_dir``, ``aflw_nme`` (both models fitted with
``contour="fixed"`` to the first ``--aflw_max_images`` AFLW2000-3D annotations).

Writes a PNG grid of the default model: columns = mean, identity components 1-3 at +2 and -2
sigma, jaw open, smile, blink; top row from the front, bottom row at 60 degrees yaw.
"""

from __future__ import annotations

import json
import sys

from absl import app
from absl import flags

from experiments import cli

from dff_jax.evaluation import face_models

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the command's flags (only when run as a program, so tests can import mains)."""
  flags.DEFINE_string("sfm", "sfm", "Surrey Face Model: 'sfm' (../shared) or a path.")
  flags.DEFINE_string("face_model", "default", "The model compared and drawn.")
  flags.DEFINE_integer("num_faces", 200, "Random SFM faces for fit_nme.")
  flags.DEFINE_integer("seed", 0, "Seed of the random faces.")
  flags.DEFINE_string("out_png", "out/compare_face_models/default_model_grid.png", "Grid PNG.")
  flags.DEFINE_string("aflw_dir", None, "Optional AFLW2000-3D folder for aflw_nme.")
  flags.DEFINE_integer("aflw_max_images", 300, "AFLW2000-3D annotations used (sorted order).")
  flags.DEFINE_string("results", None, "Also write the report, with the sha256 of both models, "
                      "to this JSON file (e.g. experiments/results/compare_face_models.json).")


def main(argv):
  cli.refuse_arguments(argv)
  try:
    report = face_models.compare_face_models(FLAGS.face_model, FLAGS.sfm, FLAGS.num_faces,
                                             FLAGS.seed, FLAGS.out_png, FLAGS.aflw_dir,
                                             FLAGS.aflw_max_images)
  except (FileNotFoundError, ValueError) as error:
    sys.exit(f"compare_face_models: error: {' '.join(str(error).split())}")
  if FLAGS.results:
    from dff_jax import provenance  # pylint: disable=g-import-not-at-top
    provenance.write_results(FLAGS.results, report, {
        "face_model": provenance.face_model_path(FLAGS.face_model),
        "reference": provenance.face_model_path(FLAGS.sfm)})
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  define_flags()
  app.run(main)
