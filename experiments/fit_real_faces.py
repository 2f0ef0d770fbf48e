r"""Fits the face model to every face of a faces68-layout split: the real-face cache.

  python -m experiments.fit_real_faces --data_dir=../shared/datasets/faces68 --split=train \
      --out=/work/runs/real_fits_train.npz [--face_model=default] [--max_residual=0.08] \
      [--reference_sources=helen-train,afw]

Writes the cache (``dff_jax.real_fits.save_fits``; keep it outside the repository: it derives
from research-use photos) and prints its summary as JSON (faces kept / dropped by the
reprojection residual). ``data_pipeline.real_faces`` renders from it.

``--reference_sources`` (the faces68 ``source`` fields, comma-separated) first moves every other
source's annotations into those sources' landmark convention
(:func:`dff_jax.real_fits.fit_in_reference_convention`): the cache's ``landmarks_px`` are then
the moved points, ``annotated_px`` the original ones, and the summary reports each source's
shift (``convention``).
"""

from __future__ import annotations

import json
import sys
import time

from absl import app
from absl import flags
from experiments import cli
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "../shared/datasets/faces68", "faces68-layout folder.")
flags.DEFINE_string("split", "train", "train or val.")
flags.DEFINE_string("out", None, "output .npz (outside the repository).", required=True)
flags.DEFINE_string("face_model", "default", "face model spec.")
flags.DEFINE_float("max_residual", 0.08, "drop faces whose fit has a larger inter-ocular NME.")
flags.DEFINE_integer("num_iterations", 20, "pose / shape alternations of the fit.")
flags.DEFINE_list("reference_sources", [], "Move every other source's annotations into these "
                  "sources' landmark convention (e.g. helen-train,afw: 300-W's annotators).")


def main(argv):
  cli.refuse_arguments(argv)
  from data_pipeline import readers  # pylint: disable=g-import-not-at-top
  from dff_jax import real_fits  # pylint: disable=g-import-not-at-top
  from dff_jax.face_model import load_face_model  # pylint: disable=g-import-not-at-top
  try:
    entries = readers.read_faces68(FLAGS.data_dir, FLAGS.split)
    model = load_face_model(FLAGS.face_model)
  except (ValueError, OSError) as error:
    print(f"fit_real_faces: error: {error}", file=sys.stderr)
    return 1
  start = time.time()
  landmarks = np.stack([e.landmarks_px for e in entries])
  settings = dict(data_dir=str(FLAGS.data_dir), split=FLAGS.split,
                  num_iterations=FLAGS.num_iterations, contour="nearest")
  if FLAGS.reference_sources:
    try:
      moved, fits, report = real_fits.fit_in_reference_convention(
          model, landmarks, [e.source for e in entries], FLAGS.reference_sources,
          FLAGS.max_residual, FLAGS.num_iterations)
    except ValueError as error:
      print(f"fit_real_faces: error: {error}", file=sys.stderr)
      return 1
    fits = dict(fits, annotated_px=landmarks)
    landmarks = moved
    settings["convention"] = report
  else:
    fits = real_fits.fit_annotated_faces(model, landmarks, num_iterations=FLAGS.num_iterations)
  summary = real_fits.save_fits(
      FLAGS.out, [e.name for e in entries], [e.image_path for e in entries], landmarks, fits,
      FLAGS.face_model, FLAGS.max_residual, settings=settings)
  summary["seconds"] = round(time.time() - start, 1)
  print(json.dumps(summary, indent=1))
  return 0


if __name__ == "__main__":
  app.run(main)
