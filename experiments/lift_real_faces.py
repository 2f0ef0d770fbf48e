r"""Lifts every kept face of a real-face fit cache once: the lift cache the generators read.

  python -m experiments.lift_real_faces --fits=/work/runs/real_fits_train.npz \
      --out=/work/runs/real_lifts_train.npz [--face_model=default] [--render_max_triangles=10000]

Writes ``data_pipeline.real_faces.save_lifts`` (per face: the source of every vertex's colour,
the colours as float16, the annotated points' surface points; keep it outside the repository:
it holds colours of research-use photos) and prints its meta as JSON. Pass it to the pair and
view generators as ``RealFacesConfig.lifts`` (configs: ``real.lifts``; ``data_pipeline.validate
--real_lifts``): the same views, without the per-face lift (about 60 % of a pair's cost).
"""

from __future__ import annotations

import json
import sys
import time

from absl import app
from absl import flags
from absl import logging
from experiments import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("fits", None, "the fit cache (experiments.fit_real_faces).", required=True)
flags.DEFINE_string("out", None, "output .npz (outside the repository).", required=True)
flags.DEFINE_string("face_model", "default", "face model of the fits.")
flags.DEFINE_integer("render_max_triangles", None,
                     "rendered mesh size (default: the pipeline's default).")


def main(argv):
  cli.refuse_arguments(argv)
  from data_pipeline import real_faces  # pylint: disable=g-import-not-at-top
  from data_pipeline.config import PipelineConfig  # pylint: disable=g-import-not-at-top
  pipeline = PipelineConfig(face_model=FLAGS.face_model)
  if FLAGS.render_max_triangles is not None:
    pipeline = pipeline.replace(render_max_triangles=FLAGS.render_max_triangles)
  start = time.time()
  try:
    bank = real_faces.RealFaces(real_faces.RealFacesConfig(fits=FLAGS.fits, pipeline=pipeline))
    meta = real_faces.save_lifts(FLAGS.out, bank, log=logging.info)
  except (ValueError, OSError) as error:
    print(f"lift_real_faces: error: {error}", file=sys.stderr)
    return 1
  meta["seconds"] = round(time.time() - start, 1)
  meta["out"] = FLAGS.out
  print(json.dumps(meta, indent=1))
  return 0


if __name__ == "__main__":
  app.run(main)
